/**
 * Moving a finished copy (a complete temporary folder) into an existing folder, on the host or in the guest: what
 * does not exist there is renamed into place (whole subtrees at once), files replace files, folders are merged
 * into folders. A folder meeting a non-folder (or the reverse) is a conflict, found before anything moves.
 * Symlinks already there are never followed: a folder meeting a symlink is a conflict, a file replaces the link.
 */
import { readdirSync, renameSync } from "node:fs";
import { posix } from "node:path";
import { CopyError } from "./copy-rules.js";

/** "dir" for a real folder (not a symlink to one), "other" for anything else. */
export type EntryKind = "dir" | "other";

export interface TreeOps {
  /** The entries of a folder, by name, not following symlinks. */
  entries(dir: string): Promise<Map<string, EntryKind>>;
  rename(from: string, to: string): Promise<void>;
  /** A path as users should read it in a message. */
  show(path: string): string;
}

/** Merge the contents of folder `from` into the existing folder `to`; `from` is left with what was merged. */
export async function mergeTree(ops: TreeOps, from: string, to: string): Promise<void> {
  const moves: Array<[string, string]> = [];
  const plan = async (src: string, dst: string): Promise<void> => {
    const have = await ops.entries(dst);
    for (const [name, kind] of await ops.entries(src)) {
      const there = have.get(name);
      const s = posix.join(src, name);
      const d = posix.join(dst, name);
      if (there === undefined || (kind === "other" && there === "other")) moves.push([s, d]);
      else if (kind === "dir" && there === "dir") await plan(s, d);
      else {
        const what = there === "dir" ? "a folder" : "not a folder";
        throw new CopyError(
          d,
          `${ops.show(d)} is ${what}: the copy's ${kind === "dir" ? "folder" : "file"} cannot replace it`,
        );
      }
    }
  };
  await plan(from, to);
  for (const [s, d] of moves) await ops.rename(s, d);
}

/** TreeOps on the host file system. */
export const hostTreeOps: TreeOps = {
  entries: async (dir) =>
    new Map(readdirSync(dir, { withFileTypes: true }).map((e) => [e.name, e.isDirectory() ? "dir" : "other"])),
  rename: async (from, to) => renameSync(from, to),
  show: (p) => p,
};
