/**
 * Path handling for unpacking untrusted tar layers: entry names are cleaned lexically and every parent component
 * is resolved inside the root the way a chroot would (symlinks followed, absolute targets restart at the root,
 * ".." never climbs above it), so nothing can be reached outside the target directory.
 */
import { lstatSync, mkdirSync, readlinkSync, type Stats } from "node:fs";
import { join } from "node:path";
import { ImageError } from "../errors.js";

/** Linux limits: a path (PATH_MAX) and one name (NAME_MAX, also ext4's). */
export const MAX_PATH_BYTES = 4096;
export const MAX_NAME_BYTES = 255;
/** Symlinks followed while resolving one path before giving up (Linux uses 40 too). */
const MAX_SYMLINK_HOPS = 40;

/**
 * Split a tar entry name (or link target) into clean components: "", "." dropped, ".." removes the previous
 * component and is ignored at the top, so "/a/../../b" and "../b" both become ["b"]. Throws on names that no file
 * system could hold (NUL byte, too long).
 */
export function cleanComponents(name: string): string[] {
  if (name.includes("\0")) throw new ImageError("name contains a NUL byte");
  if (Buffer.byteLength(name) > MAX_PATH_BYTES) throw new ImageError(`name longer than ${MAX_PATH_BYTES} bytes`);
  const out: string[] = [];
  for (const c of name.split("/")) {
    if (c === "" || c === ".") continue;
    if (c === "..") out.pop();
    else {
      if (Buffer.byteLength(c) > MAX_NAME_BYTES)
        throw new ImageError(`name component longer than ${MAX_NAME_BYTES} bytes`);
      out.push(c);
    }
  }
  return out;
}

export interface WalkOptions {
  /** Follow a symlink in the last component too (as open() would). */
  followLast: boolean;
  /** Create missing components as directories (mode 0700, the caller sets the final mode); else return null. */
  create?: (rel: string) => void;
  /** The last component must be a directory too (after following it). */
  wantDir?: boolean;
}

/**
 * Resolve `parts` inside `root`, following symlinks clamped to the root. Returns the real components (relative to
 * root) or null when a component is missing (and `create` is not given) or a middle component (or with `wantDir`
 * the last) is not a directory. With `create`, a component that is not a directory throws instead, and so does a
 * symlink loop.
 */
export function walkInRoot(root: string, parts: readonly string[], opts: WalkOptions): string[] | null {
  const real: string[] = [];
  const todo = [...parts].reverse(); // a stack: symlink targets are pushed in front of what is left
  let hops = 0;
  while (todo.length > 0) {
    const c = todo.pop() as string;
    if (c === "" || c === ".") continue;
    if (c === "..") {
      real.pop(); // at the root, ".." stays at the root
      continue;
    }
    const last = todo.length === 0;
    const abs = join(root, ...real, c);
    const st = lstatSync(abs, { throwIfNoEntry: false });
    if (!st) {
      if (!opts.create) return null;
      mkdirSync(abs, { mode: 0o700 });
      real.push(c);
      opts.create(real.join("/"));
      continue;
    }
    if (st.isSymbolicLink() && (!last || opts.followLast)) {
      if (++hops > MAX_SYMLINK_HOPS)
        throw new ImageError(`too many levels of symbolic links at /${[...real, c].join("/")}`);
      const target = readlinkSync(abs);
      if (target.startsWith("/")) real.length = 0; // absolute targets restart at the root, never the host's /
      const more = target.split("/");
      for (let i = more.length - 1; i >= 0; i--) todo.push(more[i] as string);
      continue;
    }
    if ((!last || opts.wantDir) && !st.isDirectory()) {
      if (opts.create) throw new ImageError(`/${[...real, c].join("/")} is not a directory`);
      return null;
    }
    real.push(c);
  }
  return real;
}

/**
 * The host path that `path` names inside `root`, following symlinks (also the last component) but never leaving
 * root: an absolute symlink target is taken relative to root and ".." stops at it. Null if something is missing
 * (or a symlink loops).
 */
export function resolveInRoot(root: string, path: string): string | null {
  try {
    const real = walkInRoot(root, cleanComponents(path), { followLast: true });
    return real === null ? null : join(root, ...real);
  } catch (e) {
    if (e instanceof ImageError) return null; // a symlink loop or an impossible name resolves to nothing
    throw e;
  }
}

/** lstat, or null when nothing is there (without throwing: an exception per missing path is slow). */
export function lstatSafe(path: string): Stats | null {
  try {
    return lstatSync(path, { throwIfNoEntry: false }) ?? null;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOTDIR") return null;
    throw e;
  }
}

/** The parent of a relative path ("" is the root). */
export function parentOf(rel: string): string {
  const i = rel.lastIndexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}

export function childOf(dir: string, name: string): string {
  return dir === "" ? name : `${dir}/${name}`;
}

/**
 * Values keyed by relative path that can be dropped for a whole subtree at once (when a layer deletes or replaces
 * a directory) without scanning every key: each path's parent keeps the names of its children that hold values.
 */
export class PathTree<T> {
  private readonly values = new Map<string, T>();
  private readonly kids = new Map<string, Set<string>>();

  get size(): number {
    return this.values.size;
  }

  get(rel: string): T | undefined {
    return this.values.get(rel);
  }

  set(rel: string, value: T): void {
    this.values.set(rel, value);
    // Register rel with its ancestors, stopping at the first one that already knows the child.
    let child = rel;
    while (child !== "") {
      const parent = parentOf(child);
      const name = child.slice(parent === "" ? 0 : parent.length + 1);
      let set = this.kids.get(parent);
      if (!set) {
        set = new Set();
        this.kids.set(parent, set);
      }
      if (set.has(name)) break;
      set.add(name);
      child = parent;
    }
  }

  /** Drop the value at rel only (its children keep theirs). */
  deleteOne(rel: string): void {
    this.values.delete(rel);
  }

  /** Drop rel and everything below it. */
  deleteTree(rel: string): void {
    this.values.delete(rel);
    const set = this.kids.get(rel);
    if (set) {
      this.kids.delete(rel);
      for (const name of set) this.deleteTree(childOf(rel, name));
    }
    if (rel !== "") this.kids.get(parentOf(rel))?.delete(rel.slice(rel.lastIndexOf("/") + 1));
  }

  /** Names directly below dir that hold values or have descendants that do. */
  childNames(dir: string): string[] {
    return [...(this.kids.get(dir) ?? [])];
  }

  entries(): IterableIterator<[string, T]> {
    return this.values.entries();
  }
}
