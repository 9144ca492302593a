/**
 * Directory watching for envd's WatchDir stream and its CreateWatcher / GetWatcherEvents / RemoveWatcher polling
 * API, done by comparing listings (the guest agent has no inotify): a new entry is CREATE, a changed size or
 * modification time WRITE, changed permission bits CHMOD, a vanished entry REMOVE (a rename shows as REMOVE +
 * CREATE). Changes between two looks that cancel out are not seen. Bounded: at most MAX_WATCH_ENTRIES entries per
 * watched tree, MAX_WATCHERS watchers per sandbox, idle watchers dropped after WATCHER_IDLE_MS.
 */

import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { EntryInfo } from "../../sandbox/files.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import { SERVER_LIST_BYTES } from "../hub.js";
import { entryInfo } from "./entry.js";
import { EventType, type FilesystemEventSchema } from "./gen/filesystem/filesystem_pb.js";

export type WatchEvent = MessageInitShape<typeof FilesystemEventSchema>;
type Listing = Map<string, EntryInfo>;

export const MAX_WATCH_ENTRIES = 10_000;
const MAX_WATCHERS = 64;
const WATCHER_IDLE_MS = 10 * 60_000;
/** How often a WatchDir stream looks. */
export const WATCH_INTERVAL_MS = 500;

export interface WatchSpec {
  path: string;
  recursive: boolean;
  includeEntry: boolean;
}

export async function listing(vm: SmolVM, spec: WatchSpec): Promise<Listing> {
  const entries = await vm.files.list(spec.path, { depth: spec.recursive ? 64 : 1, maxBytes: SERVER_LIST_BYTES });
  if (entries.length > MAX_WATCH_ENTRIES) {
    throw new ConnectError(
      `more than ${MAX_WATCH_ENTRIES} entries under ${spec.path}: watch a smaller tree`,
      Code.ResourceExhausted,
    );
  }
  return new Map(entries.map((e) => [e.name, e]));
}

/** The events that turn listing `before` into `after`. */
export function diff(before: Listing, after: Listing, includeEntry: boolean): WatchEvent[] {
  const out: WatchEvent[] = [];
  const ev = (name: string, type: EventType, e?: EntryInfo): WatchEvent => ({
    name,
    type,
    ...(includeEntry && e ? { entry: entryInfo(e, e.path) } : {}),
  });
  for (const [name, e] of after) {
    const old = before.get(name);
    if (!old || old.type !== e.type) {
      if (old) out.push(ev(name, EventType.REMOVE));
      out.push(ev(name, EventType.CREATE, e));
    } else if (old.size !== e.size || old.mtime.getTime() !== e.mtime.getTime()) {
      out.push(ev(name, EventType.WRITE, e));
    } else if (old.mode !== e.mode) out.push(ev(name, EventType.CHMOD, e));
  }
  for (const name of before.keys()) if (!after.has(name)) out.push(ev(name, EventType.REMOVE));
  return out;
}

interface Watcher {
  vmId: string;
  spec: WatchSpec;
  last: Listing;
  usedAt: number;
}

/** The polling watchers (CreateWatcher...), by id. */
export class Watchers {
  private readonly all = new Map<string, Watcher>();

  async create(vm: SmolVM, spec: WatchSpec): Promise<string> {
    this.sweep();
    if ([...this.all.values()].filter((w) => w.vmId === vm.vmId).length >= MAX_WATCHERS) {
      throw new ConnectError(`at most ${MAX_WATCHERS} watchers per sandbox`, Code.ResourceExhausted);
    }
    const id = randomUUID();
    this.all.set(id, { vmId: vm.vmId, spec, last: await listing(vm, spec), usedAt: Date.now() });
    return id;
  }

  /** What changed since the watcher's last look. */
  async events(vm: SmolVM, id: string): Promise<WatchEvent[]> {
    const w = this.get(vm, id);
    const now = await listing(vm, w.spec);
    const events = diff(w.last, now, w.spec.includeEntry);
    w.last = now;
    w.usedAt = Date.now();
    return events;
  }

  remove(vm: SmolVM, id: string): void {
    this.get(vm, id);
    this.all.delete(id);
  }

  private get(vm: SmolVM, id: string): Watcher {
    const w = this.all.get(id);
    if (!w || w.vmId !== vm.vmId) throw new ConnectError(`watcher ${id} not found`, Code.NotFound);
    return w;
  }

  private sweep(): void {
    const old = Date.now() - WATCHER_IDLE_MS;
    for (const [id, w] of this.all) if (w.usedAt < old) this.all.delete(id);
  }
}
