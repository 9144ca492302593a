/**
 * envd's `filesystem.Filesystem` service on SmolVM's file operations (done by the guest agent, as root): Stat,
 * ListDir, MakeDir, Move, Remove, and watching by comparing listings (WatchDir, CreateWatcher...: see watch.ts).
 * Relative paths are under the home directory of the user the request names (Basic auth), as envd does.
 */

import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { SERVER_LIST_BYTES } from "../hub.js";
import { basicUser } from "./access.js";
import { entryInfo } from "./entry.js";
import type { Filesystem } from "./gen/filesystem/filesystem_pb.js";
import { effectiveUser, guestPath, homeOf } from "./paths.js";
import { keepaliveMs, sandboxOf } from "./process-service.js";
import { streaming, unary } from "./rpc-errors.js";
import { diff, listing, WATCH_INTERVAL_MS, Watchers, type WatchSpec } from "./watch.js";

async function target(ctx: ServerContext, h: HandlerContext): Promise<{ vm: SmolVM; path: (p: string) => string }> {
  const vm = await sandboxOf(ctx, h);
  const home = homeOf(effectiveUser(vm, basicUser(h.requestHeader.get("authorization"))));
  return { vm, path: (p) => guestPath(p, home) };
}

/** Entries one ListDir answers at most. */
const MAX_ENTRIES = 100_000;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", stop);
      resolve();
    }, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    if (signal.aborted) stop();
    else signal.addEventListener("abort", stop, { once: true });
  });
}

/** The directory a watch request names (it must be one), and how to watch it. */
async function watchSpec(
  ctx: ServerContext,
  h: HandlerContext,
  req: { path: string; recursive: boolean; includeEntry: boolean },
): Promise<{ vm: SmolVM; spec: WatchSpec }> {
  const { vm, path } = await target(ctx, h);
  const dir = path(req.path);
  if ((await vm.files.stat(dir)).type !== "dir") {
    throw new ConnectError(`path '${dir}' is not a directory`, Code.InvalidArgument);
  }
  return { vm, spec: { path: dir, recursive: req.recursive, includeEntry: req.includeEntry } };
}

export function filesystemService(ctx: ServerContext): ServiceImpl<typeof Filesystem> {
  const watchers = new Watchers();
  return {
    stat: unary(async (req, h) => {
      const { vm, path } = await target(ctx, h);
      const p = path(req.path);
      return { entry: entryInfo(await vm.files.stat(p), p) };
    }),

    listDir: unary(async (req, h) => {
      const { vm, path } = await target(ctx, h);
      const dir = path(req.path);
      const st = await vm.files.stat(dir);
      if (st.type !== "dir") throw new ConnectError(`path '${dir}' is not a directory`, Code.InvalidArgument);
      const entries = await vm.files.list(dir, {
        depth: Math.min(Math.max(req.depth || 1, 1), 64),
        maxBytes: SERVER_LIST_BYTES,
      });
      if (entries.length > MAX_ENTRIES) {
        throw new ConnectError(`more than ${MAX_ENTRIES} entries: list a smaller depth`, Code.ResourceExhausted);
      }
      return { entries: entries.map((e) => entryInfo(e, e.path)) };
    }),

    makeDir: unary(async (req, h) => {
      const { vm, path } = await target(ctx, h);
      const p = path(req.path);
      if (await vm.files.exists(p)) throw new ConnectError(`path '${p}' already exists`, Code.AlreadyExists);
      await vm.files.mkdir(p, { parents: true });
      return { entry: entryInfo(await vm.files.stat(p), p) };
    }),

    move: unary(async (req, h) => {
      const { vm, path } = await target(ctx, h);
      const from = path(req.source);
      const to = path(req.destination);
      await vm.files.rename(from, to);
      return { entry: entryInfo(await vm.files.stat(to), to) };
    }),

    remove: unary(async (req, h) => {
      const { vm, path } = await target(ctx, h);
      await vm.files.remove(path(req.path), { recursive: true });
      return {};
    }),

    watchDir: streaming(async function* (req, h) {
      const { vm, spec } = await watchSpec(ctx, h, req);
      let last = await listing(vm, spec);
      yield { event: { case: "start" as const, value: {} } };
      const keepaliveEvery = Math.max(1, Math.round(keepaliveMs(h) / WATCH_INTERVAL_MS));
      for (let quiet = 0; ; ) {
        await sleep(WATCH_INTERVAL_MS, h.signal);
        const now = await listing(vm, spec);
        const events = diff(last, now, spec.includeEntry);
        last = now;
        for (const ev of events) yield { event: { case: "filesystem" as const, value: ev } };
        quiet = events.length ? 0 : quiet + 1;
        if (quiet >= keepaliveEvery) {
          quiet = 0;
          yield { event: { case: "keepalive" as const, value: {} } };
        }
      }
    }),

    createWatcher: unary(async (req, h) => {
      const { vm, spec } = await watchSpec(ctx, h, req);
      return { watcherId: await watchers.create(vm, spec) };
    }),

    getWatcherEvents: unary(async (req, h) => {
      const vm = await sandboxOf(ctx, h);
      return { events: await watchers.events(vm, req.watcherId) };
    }),

    removeWatcher: unary(async (req, h) => {
      watchers.remove(await sandboxOf(ctx, h), req.watcherId);
      return {};
    }),
  };
}
