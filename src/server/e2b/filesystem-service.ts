/**
 * envd's `filesystem.Filesystem` service on SmolVM's file operations (done by the guest agent, as root): Stat,
 * ListDir, MakeDir, Move, Remove. Watching (WatchDir, CreateWatcher...) is not supported: Unimplemented.
 * Relative paths are under the home directory of the user the request names (Basic auth), as envd does.
 */
import { posix } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { EntryInfo } from "../../sandbox/files.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { basicUser } from "./access.js";
import { type EntryInfoSchema, type Filesystem, FileType } from "./gen/filesystem/filesystem_pb.js";
import { effectiveUser, guestPath, homeOf } from "./paths.js";
import { sandboxOf } from "./process-service.js";
import { unary } from "./rpc-errors.js";

const TYPES: Partial<Record<EntryInfo["type"], FileType>> = {
  file: FileType.FILE,
  dir: FileType.DIRECTORY,
  symlink: FileType.SYMLINK,
};
const TYPE_CHAR: Partial<Record<EntryInfo["type"], string>> = {
  dir: "d",
  symlink: "l",
  char: "c",
  block: "b",
  fifo: "p",
  socket: "s",
};
/** Entries one ListDir answers at most. */
const MAX_ENTRIES = 100_000;

/** `-rwxr-xr-x`, as Go's `fs.FileMode.String()` shows permission bits. */
export function permissionString(type: EntryInfo["type"], mode: number): string {
  const rwx = "rwxrwxrwx";
  let s = TYPE_CHAR[type] ?? "-";
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : "-";
  return s;
}

export function entryInfo(e: EntryInfo, path: string): MessageInitShape<typeof EntryInfoSchema> {
  const ms = e.mtime.getTime();
  return {
    name: posix.basename(path) || "/",
    type: TYPES[e.type] ?? FileType.UNSPECIFIED,
    path,
    size: BigInt(e.size),
    mode: e.mode & 0o7777,
    permissions: permissionString(e.type, e.mode),
    owner: "",
    group: "",
    modifiedTime: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 },
    ...(e.symlinkTarget !== undefined ? { symlinkTarget: e.symlinkTarget } : {}),
  };
}

async function target(ctx: ServerContext, h: HandlerContext): Promise<{ vm: SmolVM; path: (p: string) => string }> {
  const vm = await sandboxOf(ctx, h);
  const home = homeOf(effectiveUser(vm, basicUser(h.requestHeader.get("authorization"))));
  return { vm, path: (p) => guestPath(p, home) };
}

const unsupported = async (): Promise<never> => {
  throw new ConnectError("watching directories is not supported by SmolVM's E2B API", Code.Unimplemented);
};

export function filesystemService(ctx: ServerContext): ServiceImpl<typeof Filesystem> {
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
      const entries = await vm.files.list(dir, { depth: Math.min(Math.max(req.depth || 1, 1), 64) });
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

    watchDir: async function* () {
      yield* [];
      await unsupported();
    },
    createWatcher: unsupported,
    getWatcherEvents: unsupported,
    removeWatcher: unsupported,
  };
}
