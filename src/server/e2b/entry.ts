/** SmolVM's file entries as envd's `EntryInfo`. */
import { posix } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { EntryInfo } from "../../sandbox/files.js";
import { type EntryInfoSchema, FileType } from "./gen/filesystem/filesystem_pb.js";

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
