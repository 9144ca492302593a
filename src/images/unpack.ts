/**
 * Apply OCI image layers (or any rootfs tar) to a directory, following the OCI "applying changesets" rules
 * (whiteouts, opaque directories, replacement), with hostile input in mind: every path is resolved inside the root
 * (see unpack-paths.ts), file data is streamed, and bytes, entries and name lengths are capped. What a non-root
 * process cannot do on the host (device nodes, other owners, xattrs) comes back as fixups that makeExt4 applies
 * inside the image.
 *
 * File system calls are synchronous: an unpack is a long chain of tiny metadata calls where the promise versions
 * cost several times more, and the data writes are to a local disk.
 */

import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { Header } from "tar-stream";
import { ImageError } from "../errors.js";
import { type Progress, silent } from "../util/run.js";
import { childOf, cleanComponents, lstatSafe, MAX_PATH_BYTES, PathTree, parentOf, walkInRoot } from "./unpack-paths.js";
import { openLayer } from "./unpack-stream.js";
import { entryXattrs, errText, headerMeta, type Meta, readTar } from "./unpack-tar.js";

export type Fixup =
  /** Owner and full mode (file type bits included) to set in the image, where the host files could not get them. */
  | { kind: "owner"; path: string; uid: number; gid: number; mode: number }
  /** A device or fifo to create in the image (nothing is written to the directory); mode has the type bits. */
  | {
      kind: "node";
      path: string;
      type: "c" | "b" | "p";
      major: number;
      minor: number;
      mode: number;
      uid: number;
      gid: number;
    }
  | { kind: "xattr"; path: string; name: string; value: Buffer };

export interface UnpackOptions {
  /** Cap on file content written (all layers). Default 32 GiB. */
  maxBytes?: number;
  /** Cap on tar entries read (all layers). Default 2,000,000. */
  maxEntries?: number;
  /** "apply": chown on the host (needs root); "fixup": record owners as fixups. Default: "apply" when root. */
  owners?: "apply" | "fixup";
  progress?: Progress;
}

type OwnerFix = Extract<Fixup, { kind: "owner" }>;
type NodeFix = Extract<Fixup, { kind: "node" }>;
interface FixRecord {
  owner?: OwnerFix;
  node?: NodeFix;
  xattrs?: Map<string, Buffer>;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const NODE_TYPE = {
  "character-device": ["c", 0o020000],
  "block-device": ["b", 0o060000],
  fifo: ["p", 0o010000],
} as const;
/** Xattr values kept in memory for fixups, all layers together. */
const MAX_XATTR_TOTAL = 64 << 20;
/** Parent-directory resolutions remembered (cleared when a directory or symlink goes away, or when this full). */
const MAX_CACHED_DIRS = 65_536;

export class RootfsBuilder {
  private readonly maxBytes: number;
  private readonly maxEntries: number;
  private readonly owners: "apply" | "fixup";
  private readonly progress: Progress;
  /** Owner the files we create get on the host (what mkfs.ext4 -d copies when no fixup says otherwise). */
  private readonly baseUid: number;
  private readonly baseGid: number;
  /**
   * Whether new files surely get baseUid/baseGid: true when the directory starts empty. Directories from earlier
   * layers only get their final (maybe setgid) modes in finish(); a directory finished by an earlier builder may
   * be setgid and hand its group to new files, so then every file is chowned (or gets an owner fixup).
   */
  private readonly exactBase: boolean;
  private bytes = 0;
  private entries = 0;
  private files = 0;
  private xattrBytes = 0;
  private readonly fixups = new PathTree<FixRecord>();
  /**
   * Final mode and mtime of directories, set by finish() (until then they stay writable for us). Dropped with the
   * directory: a stale path could lead through a symlink that replaced a parent, out of the root.
   */
  private readonly dirMeta = new PathTree<{ mode: number; mtime?: number }>();
  /** Cleaned parent path -> real relative path, for paths known to be directories. */
  private readonly dirCache = new Map<string, string>();
  /** Paths the current layer created, and directories with something the current layer created below them. */
  private readonly created = new Set<string>();
  private readonly createdBelow = new Set<string>();
  private busy = false;
  private failed: ImageError | null = null;
  private finished = false;

  constructor(
    private readonly dir: string,
    opts: UnpackOptions = {},
  ) {
    this.maxBytes = opts.maxBytes ?? 32 * 2 ** 30;
    this.maxEntries = opts.maxEntries ?? 2_000_000;
    const root = process.getuid?.() === 0;
    this.owners = opts.owners ?? (root ? "apply" : "fixup");
    this.progress = opts.progress ?? silent;
    const st = lstatSafe(dir);
    if (!st?.isDirectory()) throw new ImageError(`${dir} is not a directory`);
    this.baseUid = process.geteuid?.() ?? 0;
    // In a setgid directory, new files take the directory's group.
    this.baseGid = st.mode & 0o2000 ? st.gid : (process.getegid?.() ?? 0);
    this.exactBase = readdirSync(dir).length === 0;
  }

  /**
   * Apply one layer: a file path or a stream holding a tar, gzip'd tar or zstd'd tar. `label` names it in errors.
   * `diffId`: the sha256 digest its uncompressed tar must have (an OCI config's `rootfs.diff_ids`); checked once the
   * whole layer has been read, so a mismatch fails the layer (and the builder) before anything is published.
   */
  async applyLayer(input: string | NodeJS.ReadableStream, label: string, diffId?: string): Promise<void> {
    this.usable();
    this.busy = true;
    this.created.clear();
    this.createdBelow.clear();
    const before = { entries: this.entries, bytes: this.bytes };
    let source: Readable | undefined;
    let tar: Readable | undefined;
    try {
      const opened = await openLayer(input);
      source = opened.source;
      tar = opened.tar;
      this.progress(`applying layer ${label} (${opened.format})`);
      const hash = diffId ? createHash("sha256") : null;
      // every chunk reaches this listener and readTar's (which is attached in the same tick, below)
      if (hash) tar.on("data", (c: Buffer) => hash.update(c));
      await readTar(tar, label, (h, stream, xattrs) => this.entry(h, stream, xattrs));
      const got = hash ? `sha256:${hash.digest("hex")}` : null;
      if (got && got !== diffId) {
        throw new ImageError(
          `layer ${label}: its uncompressed content has digest ${got}, but the image config says ${diffId} ` +
            "(the registry served layers that do not belong to this image)",
        );
      }
      const mib = ((this.bytes - before.bytes) / 2 ** 20).toFixed(1);
      this.progress(`layer ${label}: ${this.entries - before.entries} entries, ${mib} MiB`);
    } catch (e) {
      this.failed =
        e instanceof ImageError && e.message.startsWith(`layer ${label}`)
          ? e
          : new ImageError(`layer ${label}: ${errText(e)}`, { cause: e });
      throw this.failed;
    } finally {
      this.busy = false;
      tar?.destroy();
      source?.destroy();
    }
  }

  /** Set directory modes and mtimes (last, since adding entries changes them) and return counts and fixups. */
  finish(): { files: number; bytes: number; fixups: Fixup[] } {
    this.usable();
    this.finished = true;
    for (const [rel, m] of this.dirMeta.entries()) {
      const abs = this.abs(rel);
      // Belt and braces: the path must still be real (no symlink on the way), and a directory.
      const real = rel === "" ? [] : walkInRoot(this.dir, rel.split("/"), { followLast: false, wantDir: true });
      if (real?.join("/") !== rel || !lstatSafe(abs)?.isDirectory()) continue;
      chmodSync(abs, m.mode);
      if (m.mtime !== undefined) utimesSync(abs, m.mtime, m.mtime);
    }
    const fixups: Fixup[] = [];
    for (const [rel, rec] of this.fixups.entries()) {
      if (rec.node) fixups.push({ ...rec.node, path: `/${rel}` });
      if (rec.owner) fixups.push({ ...rec.owner, path: `/${rel}` });
      for (const [name, value] of rec.xattrs ?? []) fixups.push({ kind: "xattr", path: `/${rel}`, name, value });
    }
    return { files: this.files, bytes: this.bytes, fixups };
  }

  private usable(): void {
    if (this.failed) throw new ImageError(`the rootfs builder stopped after an earlier error: ${this.failed.message}`);
    if (this.finished) throw new ImageError("the rootfs builder is finished");
    if (this.busy) throw new ImageError("a layer is already being applied");
  }

  private async entry(h: Header, stream: AsyncIterable<unknown>, paxXattrs: Map<string, Buffer> | null): Promise<void> {
    if (++this.entries > this.maxEntries) throw new ImageError(`more than ${this.maxEntries} entries`);
    let type = h.type as string | null; // null for types tar-stream does not know (GNU sparse, volume labels ...)
    if (type === "file" && h.name.endsWith("/")) type = "directory"; // old tars mark directories with a slash
    const parts = cleanComponents(h.name);
    const base = parts[parts.length - 1];
    if (type !== "file" && type !== "contiguous-file") await this.drain(stream);
    if (base?.startsWith(".wh.")) return this.whiteout(parts.slice(0, -1), base);
    const meta = headerMeta(h);
    const xattrs = entryXattrs(h, paxXattrs);
    this.files++;
    if (base === undefined) {
      // The root itself: only a directory entry makes sense; its owner always goes to a fixup since mkfs sets 0:0.
      if (type !== "directory") throw new ImageError(`a ${type} entry cannot replace the root`);
      this.dirMeta.set("", { mode: this.owners === "fixup" ? meta.mode | 0o700 : meta.mode, mtime: meta.mtime });
      this.rec("").owner = { kind: "owner", path: "/", uid: meta.uid, gid: meta.gid, mode: S_IFDIR | meta.mode };
      this.setXattrs("", xattrs);
      return;
    }
    const rel = childOf(this.resolveDir(parts.slice(0, -1), true) as string, base);
    switch (type) {
      case "file":
      case "contiguous-file":
        await this.writeFile(rel, stream, h.size ?? 0, meta);
        break;
      case "directory":
        this.makeDir(rel, meta);
        break;
      case "symlink":
        this.makeSymlink(rel, h.linkname ?? "", meta);
        break;
      case "link":
        this.makeHardLink(rel, h.linkname ?? "");
        break;
      case "character-device":
      case "block-device":
      case "fifo": {
        this.removeTree(rel);
        const [t, bits] = NODE_TYPE[type as keyof typeof NODE_TYPE];
        const { uid, gid, mode } = meta;
        const [major, minor] = t === "p" ? [0, 0] : [h.devmajor ?? 0, h.devminor ?? 0];
        this.rec(rel).node = { kind: "node", path: "", type: t, major, minor, mode: bits | mode, uid, gid };
        break;
      }
      default:
        throw new ImageError(`unsupported entry type ${type ?? "(unknown)"}`);
    }
    this.setXattrs(rel, xattrs);
    this.markCreated(rel);
  }

  private async writeFile(rel: string, stream: AsyncIterable<unknown>, size: number, meta: Meta): Promise<void> {
    this.charge(size); // before writing anything: the header says how much is coming
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const fd = this.place(rel, () => openSync(this.abs(rel), flags, 0o600));
    try {
      for await (const chunk of stream) writeAll(fd, chunk as Buffer);
      let mode = meta.mode;
      if (this.owners === "apply") {
        if (this.needsChown(meta)) fchownSync(fd, meta.uid, meta.gid); // clears setuid/setgid, so chmod after
      } else mode = this.ownerFixup(rel, S_IFREG, meta, mode | 0o400); // mkfs must be able to read it
      fchmodSync(fd, mode);
      futimesSync(fd, meta.mtime, meta.mtime);
    } finally {
      closeSync(fd);
    }
  }

  private makeDir(rel: string, meta: Meta): void {
    const abs = this.abs(rel);
    this.fixups.deleteOne(rel); // its own fixups; children keep theirs if the directory stays
    try {
      mkdirSync(abs, { mode: 0o700 });
      this.fixups.deleteTree(rel); // a device or fifo that was at this path
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      if (!lstatSafe(abs)?.isDirectory()) {
        this.removeTree(rel); // a directory over a directory only updates it; anything else goes
        mkdirSync(abs, { mode: 0o700 });
      }
    }
    let mode = meta.mode;
    if (this.owners === "apply") {
      if (this.needsChown(meta)) lchownSync(abs, meta.uid, meta.gid);
    } else mode = this.ownerFixup(rel, S_IFDIR, meta, mode | 0o700); // we (and mkfs) must be able to use it
    this.dirMeta.set(rel, { mode, mtime: meta.mtime });
  }

  private makeSymlink(rel: string, target: string, meta: Meta): void {
    if (target.includes("\0") || Buffer.byteLength(target) >= MAX_PATH_BYTES)
      throw new ImageError("bad symlink target");
    const abs = this.abs(rel);
    this.place(rel, () => symlinkSync(target, abs)); // stored as is: resolution always clamps it to the root
    if (this.owners === "apply") {
      if (this.needsChown(meta)) lchownSync(abs, meta.uid, meta.gid);
    } else this.ownerFixup(rel, S_IFLNK, { ...meta, mode: 0o777 }, 0o777);
    lutimesSync(abs, meta.mtime, meta.mtime);
  }

  private makeHardLink(rel: string, linkname: string): void {
    const parts = cleanComponents(linkname);
    const name = parts[parts.length - 1];
    if (name === undefined) throw new ImageError("hard link to the root directory");
    const dir = this.resolveDir(parts.slice(0, -1), false);
    const target = dir === null ? null : childOf(dir, name);
    const st = target === null ? null : lstatSafe(this.abs(target));
    const node = target === null ? undefined : this.fixups.get(target)?.node;
    if (target === null || (!st && !node))
      throw new ImageError(`hard link target ${JSON.stringify(linkname)} does not exist`);
    if (st?.isDirectory()) throw new ImageError(`hard link target ${JSON.stringify(linkname)} is a directory`);
    if (target === rel) return;
    const from = this.fixups.get(target);
    if (st) this.place(rel, () => linkSync(this.abs(target), this.abs(rel)));
    else this.removeTree(rel);
    // The link shares the inode, so it shares the fixups too; copied so they survive the target's removal.
    if (from?.node) this.rec(rel).node = { ...from.node };
    if (from?.owner) this.rec(rel).owner = { ...from.owner };
    if (from?.xattrs) this.rec(rel).xattrs = new Map(from.xattrs);
  }

  /** In fixup mode, record the real owner and mode when the host file differs; returns the mode for the host. */
  private ownerFixup(rel: string, typeBits: number, meta: Meta, hostMode: number): number {
    if (this.needsChown(meta) || hostMode !== meta.mode) {
      this.rec(rel).owner = { kind: "owner", path: "", uid: meta.uid, gid: meta.gid, mode: typeBits | meta.mode };
    }
    return hostMode;
  }

  private setXattrs(rel: string, xattrs: Map<string, Buffer> | null): void {
    if (!xattrs || xattrs.size === 0) return;
    for (const v of xattrs.values()) this.xattrBytes += v.length;
    if (this.xattrBytes > MAX_XATTR_TOTAL) throw new ImageError(`more than ${MAX_XATTR_TOTAL} bytes of xattrs`);
    this.rec(rel).xattrs = xattrs;
  }

  /**
   * Create a new entry at rel with `create` (which fails with EEXIST if something is there; trying first saves a
   * syscall per entry). If something is in the way, it goes (a directory with all it holds), and create runs again.
   * Fixups at rel and below go in any case.
   */
  private place<T>(rel: string, create: () => T): T {
    this.fixups.deleteTree(rel);
    try {
      return create();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    this.removeTree(rel);
    return create();
  }

  /** Whether a new file needs a chown to get the entry's owner (see exactBase). */
  private needsChown(meta: Meta): boolean {
    return !this.exactBase || meta.uid !== this.baseUid || meta.gid !== this.baseGid;
  }

  private removeTree(rel: string): void {
    const abs = this.abs(rel);
    const st = lstatSafe(abs);
    if (st?.isDirectory()) rmSync(abs, { recursive: true, force: true });
    else if (st) unlinkSync(abs);
    if (st?.isDirectory() || st?.isSymbolicLink()) this.dirCache.clear(); // resolutions through it are stale
    this.fixups.deleteTree(rel);
    this.dirMeta.deleteTree(rel);
  }

  /** `.wh.NAME` removes NAME from lower layers; `.wh..wh..opq` empties the directory of lower-layer children. */
  private whiteout(dirParts: string[], base: string): void {
    const dir = this.resolveDir(dirParts, false);
    if (dir === null) return; // nothing there to hide
    if (base === ".wh..wh..opq") {
      for (const name of this.namesIn(dir)) this.removeLower(childOf(dir, name));
      return;
    }
    if (base.startsWith(".wh..wh.")) return; // other aufs bookkeeping (.wh..wh.plnk ...): nothing to apply
    const name = base.slice(4);
    if (name === "." || name === "..") throw new ImageError("whiteout of . or ..");
    this.removeLower(childOf(dir, name));
  }

  /** Remove rel and what is below it, except what the current layer created (a whiteout only hides lower layers). */
  private removeLower(rel: string): void {
    if (this.created.has(rel)) return;
    if (this.createdBelow.has(rel)) {
      for (const name of this.namesIn(rel)) this.removeLower(childOf(rel, name));
    } else this.removeTree(rel);
  }

  /** Names in a directory: on disk, plus device/fifo fixups that have no file. */
  private namesIn(rel: string): Set<string> {
    const names = new Set(this.fixups.childNames(rel));
    const abs = this.abs(rel);
    if (lstatSafe(abs)?.isDirectory()) for (const n of readdirSync(abs)) names.add(n);
    return names;
  }

  private markCreated(rel: string): void {
    this.created.add(rel);
    for (let p = rel; p !== ""; ) {
      p = parentOf(p);
      if (this.createdBelow.has(p)) break;
      this.createdBelow.add(p);
    }
  }

  /** Resolve a directory path inside the root (creating missing directories when `create`); its real rel path. */
  private resolveDir(parts: string[], create: boolean): string | null {
    const key = parts.join("/");
    const hit = this.dirCache.get(key);
    if (hit !== undefined) return hit;
    const real = walkInRoot(this.dir, parts, {
      followLast: true,
      wantDir: true,
      create: create ? (rel) => this.implicitDir(rel) : undefined,
    });
    if (real === null) return null;
    if (this.dirCache.size >= MAX_CACHED_DIRS) this.dirCache.clear();
    const rel = real.join("/");
    this.dirCache.set(key, rel);
    return rel;
  }

  /** A parent directory the layer did not list: root-owned 0755, like other unpackers make them. */
  private implicitDir(rel: string): void {
    this.fixups.deleteTree(rel); // a device or fifo fixup that was at this path
    this.dirMeta.set(rel, { mode: 0o755 });
    if (this.owners === "fixup") this.ownerFixup(rel, S_IFDIR, { uid: 0, gid: 0, mode: 0o755, mtime: 0 }, 0o755);
    this.markCreated(rel);
  }

  private rec(rel: string): FixRecord {
    let r = this.fixups.get(rel);
    if (!r) {
      r = {};
      this.fixups.set(rel, r);
    }
    return r;
  }

  private charge(n: number): void {
    this.bytes += n;
    if (this.bytes > this.maxBytes) throw new ImageError(`content over the ${this.maxBytes}-byte limit`);
  }

  /** Read and discard an entry's data (non-file entries normally have none), counting it against the cap. */
  private async drain(stream: AsyncIterable<unknown>): Promise<void> {
    for await (const chunk of stream) this.charge((chunk as Buffer).length);
  }

  private abs(rel: string): string {
    return rel === "" ? this.dir : join(this.dir, rel);
  }
}

function writeAll(fd: number, buf: Buffer): void {
  for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off, buf.length - off);
}

export { resolveInRoot } from "./unpack-paths.js";
