/**
 * Temporary snapshots: the snapshot a fork or a pack takes exists for that command alone. Its memory and device
 * state are deleted as soon as the command ends (a clone maps the RAM file privately: its pages stay readable to the
 * clone, and the blocks are freed when the last clone mapping it ends); its disk layer cannot be, since the source VM
 * now runs on a layer above it and the clones too, so the record stays (hidden from `snapshot list`, memBytes -1) and
 * is deleted with the last VM or snapshot built on it (`collectTemporary`). While the command runs its memory files
 * are journaled temporary paths: a command killed half way leaves them to the next `reconcile`.
 */
import { readdirSync, rmSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import type { Backend } from "../backends/types.js";
import { VMStateError } from "../errors.js";
import { allocatedBytes } from "../images/image-store.js";
import { collectTemporary } from "../sandbox/snapshots.js";
import { tempPath } from "../state/journal.js";
import type { SnapshotRecord, StateStore, VMRecord, VMStatus } from "../state/store.js";
import { takeSnapshot } from "./snapshot.js";

/** Delete a snapshot's memory and device state, keeping its disk layer: it is then a disk-only snapshot. */
export function dropMemory(store: StateStore, snap: SnapshotRecord): number {
  let freed = 0;
  let entries: string[] = [];
  try {
    entries = readdirSync(snap.dir);
  } catch {
    // gone
  }
  for (const f of entries) {
    if (f === basename(snap.diskFile)) continue; // disk.qcow2 (QEMU) or disk.raw (Firecracker)
    const p = join(snap.dir, f);
    freed += allocatedBytes(p);
    rmSync(p, { recursive: true, force: true });
  }
  let disk = 0;
  try {
    disk = statSync(snap.diskFile).size;
  } catch {
    // gone
  }
  store.updateSnapshot(snap.id, { memBytes: -1, sizeBytes: disk });
  return freed;
}

/**
 * Take a snapshot of `rec` for one command (`using t = await tempSnapshot(...)`): when `t` is disposed its memory
 * is dropped (and the snapshot itself if nothing is layered on it by then). With a `name` the caller asked for a
 * snapshot to keep: it is an ordinary one, left as it is.
 */
export async function tempSnapshot(
  store: StateStore,
  backend: Backend,
  rec: VMRecord | null,
  status: VMStatus,
  what: string,
  opts: { name?: string } = {},
): Promise<{ snap: SnapshotRecord } & Disposable> {
  if (!rec?.handle || (status !== "running" && status !== "paused") || !rec.diskPath) {
    throw new VMStateError(`VM ${rec?.id ?? "?"} is ${status}; only a running or paused VM can be ${what}`);
  }
  const temporary = opts.name === undefined;
  const info = await takeSnapshot(store, backend, rec, { name: opts.name, temporary });
  const snap = store.getSnapshot(info.id) as SnapshotRecord;
  if (!temporary) return { snap, [Symbol.dispose]: () => {} };
  // journaled at once: a process killed from here on leaves them to `reconcile`
  const held = [tempPath(store, join(snap.dir, "fast")), tempPath(store, join(snap.dir, "mem.bin"))];
  return {
    snap,
    [Symbol.dispose]: () => {
      dropMemory(store, store.getSnapshot(snap.id) ?? snap);
      for (const h of held) h.done();
      collectTemporary(store, snap.id);
    },
  };
}
