/**
 * `cp` / `docker cp` path rules, the same for both directions: where a copy of SRC into DST lands, and what is
 * refused. No I/O of its own: the caller passes a `stat` for the side DST lives on (host or guest).
 *
 * - SRC a file: DST missing -> saved as DST (a DST ending in `/` must be an existing folder); DST a file ->
 *   overwritten; DST a folder -> saved as DST/basename(SRC).
 * - SRC a folder: DST missing -> created with SRC's contents; DST a file -> refused; DST a folder -> copied into it
 *   as DST/basename(SRC), or with SRC ending in `/.` SRC's contents are copied into DST itself.
 * - A DST that does not exist needs an existing parent folder.
 */
import { posix } from "node:path";
import { SmolVMError } from "../errors.js";

/** A `cp` whose paths break a rule (a missing source, a folder onto a file, ...). The message names the path. */
export class CopyError extends SmolVMError {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`cp: ${message}`);
  }
}

/** What a path is, symlinks followed (a dangling symlink counts as a file: it is replaced, not written through). */
export type PathKind = "missing" | "file" | "dir";

export interface CopyPlan {
  /** What SRC is. */
  type: "file" | "dir";
  /** The path SRC is read from (without a trailing `/` or `/.`). */
  source: string;
  /** The final path written. */
  destination: string;
  /** `create`: it does not exist; `replace`: a file overwritten; `merge`: an existing folder receiving SRC's contents. */
  action: "create" | "replace" | "merge";
}

/** A path without trailing `/` (and, when `dot`, trailing `/.`): `/a/b/./` -> `/a/b`; `/` stays `/`. */
export function stripTrailing(p: string, dot = true): string {
  let s = p;
  for (;;) {
    if (s.length > 1 && s.endsWith("/")) s = s.slice(0, -1);
    else if (dot && s.length > 1 && s.endsWith("/.")) s = s.slice(0, -2) || "/";
    else return s;
  }
}

/** `.`, `x/.`, `x/./` copy a folder's contents rather than the folder. */
export const endsWithDot = (p: string): boolean => /(^|\/)\.\/*$/.test(p);

/**
 * Decide where SRC goes. `srcKind` is SRC's kind; `stat` answers for paths on DST's side; `show` formats a path
 * for messages (a guest path as `ID:/path`).
 */
export async function planCopy(
  src: string,
  srcKind: PathKind,
  dst: string,
  stat: (path: string) => Promise<PathKind>,
  show: { src: (p: string) => string; dst: (p: string) => string },
): Promise<CopyPlan> {
  const source = stripTrailing(src);
  if (srcKind === "missing") throw new CopyError(src, `${show.src(src)} does not exist`);
  const contents = endsWithDot(src);
  if (srcKind === "file" && (contents || src.endsWith("/"))) {
    throw new CopyError(src, `${show.src(src)} is not a folder: a source ending in / or /. must be a folder`);
  }
  const dstSlash = /\/\.?$/.test(dst);
  const target = stripTrailing(dst);
  const dstKind = await stat(target);
  const base = posix.basename(source);
  const needParent = async () => {
    const parent = posix.dirname(target);
    const k = await stat(parent);
    if (k === "missing") {
      throw new CopyError(parent, `${show.dst(parent)} does not exist: the folder a copy is saved into must exist`);
    }
    if (k !== "dir") throw new CopyError(parent, `${show.dst(parent)} is not a folder`);
  };
  const into = async (type: "file" | "dir"): Promise<CopyPlan> => {
    const destination = posix.join(target, base);
    const k = await stat(destination);
    if (type === "file" && k === "dir") {
      throw new CopyError(destination, `${show.dst(destination)} is a folder: a file cannot replace it`);
    }
    if (type === "dir" && k === "file") {
      throw new CopyError(destination, `${show.dst(destination)} is a file: a folder cannot be copied onto a file`);
    }
    const action = k === "missing" ? "create" : type === "dir" ? "merge" : "replace";
    return { type, source, destination, action };
  };

  if (srcKind === "file") {
    if (dstKind === "missing") {
      if (dstSlash) {
        throw new CopyError(
          dst,
          `${show.dst(dst)} does not exist: a destination ending in / must be an existing folder`,
        );
      }
      await needParent();
      return { type: "file", source, destination: target, action: "create" };
    }
    if (dstKind === "file") {
      if (dstSlash) {
        throw new CopyError(
          dst,
          `${show.dst(dst)} is not a folder: a destination ending in / must be an existing folder`,
        );
      }
      return { type: "file", source, destination: target, action: "replace" };
    }
    return into("file");
  }
  if (dstKind === "missing") {
    await needParent();
    return { type: "dir", source, destination: target, action: "create" };
  }
  if (dstKind === "file") {
    throw new CopyError(dst, `${show.dst(dst)} is a file: a folder cannot be copied onto a file`);
  }
  // a folder into an existing folder: its contents (`SRC/.`, or `/` which has no name), else a folder of its name
  if (contents || base === "" || base === "/") return { type: "dir", source, destination: target, action: "merge" };
  return into("dir");
}

/** The rule for `-` as SRC: the tar stream on stdin is extracted into DST, which must be an existing folder. */
export function checkStdinDestination(dst: string, kind: PathKind, show: string): void {
  if (kind === "missing") {
    throw new CopyError(
      dst,
      `${show} does not exist: with - (a tar stream on stdin) the destination must be an existing folder`,
    );
  }
  if (kind !== "dir") {
    throw new CopyError(
      dst,
      `${show} is not a folder: with - (a tar stream on stdin) the destination must be a folder`,
    );
  }
}
