/**
 * A directory tree into a sparse ext4 image without root or loop devices: `mkfs.ext4 -d` copies the tree, then one
 * `debugfs -w` run applies what the host tree could not hold (owners, device nodes, xattrs; see unpack.ts).
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import type { Stats } from "node:fs";
import {
  closeSync,
  ftruncateSync,
  linkSync,
  mkdtempSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ImageError } from "../errors.js";
import { mustRun, type Progress, silent, which, withPrivateUmask } from "../util/run.js";
import type { Fixup } from "./unpack.js";
import { lstatSafe } from "./unpack-paths.js";

export interface Ext4Options {
  /** File system size. Default: content * 1.25 + freeBytes, rounded up to a MiB. */
  sizeBytes?: number;
  /** Free space on top of the content when sizeBytes is not given. Default 1 GiB. */
  freeBytes?: number;
  label?: string;
  fixups?: Fixup[];
  progress?: Progress;
}

const BLOCK = 4096;
const MIB = 1 << 20;
const INODE_SIZE = 256;
/** Inodes to spare beyond the files copied in, for what the VM creates. */
const SPARE_INODES = 32_768;
/** mke2fs.conf's default bytes-per-inode, the inode count mkfs would pick by itself. */
const INODE_RATIO = 16_384;
const LONG_TIMEOUT_MS = 60 * 60_000;

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** Allocated size estimate of a tree as ext4 would store it (4 KiB blocks, holes kept, hard links once). */
export async function dirUsage(dir: string): Promise<{ bytes: number; files: number }> {
  let bytes = 0;
  let files = 1; // the root
  const seen = new Set<string>(); // hard-linked inodes already counted
  const todo = [dir];
  while (todo.length > 0) {
    const d = todo.pop() as string;
    const names = await readdir(d);
    const stats = await Promise.all(names.map((n) => lstat(join(d, n))));
    bytes += BLOCK; // the directory's own block (large directories: counted below through st.size)
    for (let i = 0; i < names.length; i++) {
      const st = stats[i] as Stats;
      if (st.nlink > 1 && !st.isDirectory()) {
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
      }
      files++;
      if (st.isDirectory()) {
        todo.push(join(d, names[i] as string));
        bytes += Math.max(0, roundUp(st.size, BLOCK) - BLOCK);
      } else if (st.isSymbolicLink()) {
        if (st.size >= 60) bytes += BLOCK; // shorter targets live in the inode
      } else if (st.isFile()) {
        const allocated = st.blocks * 512;
        bytes += roundUp(Math.min(allocated, st.size), BLOCK); // sparse files stay sparse
      }
    }
  }
  return { bytes, files };
}

/** ext2fs_default_journal_size (e2fsprogs 1.47) for 4 KiB blocks, in bytes. */
function journalBytes(sizeBytes: number): number {
  const blocks = sizeBytes / BLOCK;
  const steps: [number, number][] = [
    [32_768, 1024],
    [256 << 10, 4096],
    [512 << 10, 8192],
    [4096 << 10, 16_384],
    [8192 << 10, 32_768],
    [16_384 << 10, 65_536],
    [32_768 << 10, 131_072],
  ];
  for (const [limit, journal] of steps) if (blocks < limit) return journal * BLOCK;
  return 262_144 * BLOCK;
}

function inodeCount(sizeBytes: number, files: number): number {
  return Math.max(Math.ceil(sizeBytes / INODE_RATIO), files + SPARE_INODES);
}

/**
 * Bytes a file system of `sizeBytes` needs for `content` and `files`: the content plus a margin, inode tables,
 * journal, and group metadata (bitmaps, descriptors, blocks reserved for online growth) at about 1.5%.
 */
function neededBytes(sizeBytes: number, content: number, files: number): number {
  return (
    content * 1.03 + inodeCount(sizeBytes, files) * INODE_SIZE + journalBytes(sizeBytes) + sizeBytes * 0.015 + 4 * MIB
  );
}

/** The smallest size (whole MiB) whose own overhead still leaves room for the content. */
function minimumBytes(content: number, files: number): number {
  let size = roundUp(neededBytes(16 * MIB, content, files), MIB);
  for (let i = 0; i < 20; i++) {
    const need = roundUp(neededBytes(size, content, files), MIB);
    if (need <= size) break;
    size = need;
  }
  return size;
}

/**
 * Make `out`, a sparse ext4 image holding the tree at `dir` (root-owned root directory), with `fixups` applied.
 * Built beside `out` and published with a hard link: if `out` appears meanwhile (a concurrent build of the same
 * thing), that one is kept. Throws ImageError if `sizeBytes` is too small, saying how big it must be at least.
 */
export async function makeExt4(
  dir: string,
  out: string,
  opts: Ext4Options = {},
): Promise<{ sizeBytes: number; contentBytes: number; files: number }> {
  const mkfs = which("mkfs.ext4");
  if (!mkfs) throw new ImageError("mkfs.ext4 is needed to build images; install e2fsprogs");
  const progress = opts.progress ?? silent;
  const fixups = opts.fixups ?? [];
  if (opts.label !== undefined && (Buffer.byteLength(opts.label) > 16 || hasControl(opts.label))) {
    throw new ImageError(`ext4 label ${JSON.stringify(opts.label)}: at most 16 bytes, no control characters`);
  }
  for (const [k, v] of [
    ["sizeBytes", opts.sizeBytes],
    ["freeBytes", opts.freeBytes],
  ] as const) {
    if (v !== undefined && !(Number.isFinite(v) && v >= 0))
      throw new ImageError(`${k} must be a size in bytes, not ${v}`);
  }
  const usage = await dirUsage(dir);
  const files = usage.files + fixups.filter((f) => f.kind === "node").length;
  const min = minimumBytes(usage.bytes, files);
  let size: number;
  if (opts.sizeBytes !== undefined) {
    size = roundUp(opts.sizeBytes, BLOCK);
    if (size < min) throw tooSmall(size, min);
  } else {
    size = Math.max(roundUp(usage.bytes * 1.25 + (opts.freeBytes ?? 2 ** 30), MIB), min);
  }
  const tmp = tmpName(out);
  const scratch = mkdtempSync(join(tmpdir(), "smolvm-ext4-"));
  try {
    const fd = openSync(tmp, "wx", 0o644);
    try {
      ftruncateSync(fd, size); // sparse: only what mkfs writes takes disk space
    } finally {
      closeSync(fd);
    }
    progress(`making a ${(size / MIB).toFixed(0)} MiB ext4 file system (${usage.files} files)`);
    const args = ["-q", "-F", "-t", "ext4", "-b", String(BLOCK), "-I", String(INODE_SIZE)];
    if (opts.label !== undefined) args.push("-L", opts.label);
    args.push("-E", "root_owner=0:0", "-N", String(inodeCount(size, files)), "-d", dir, tmp, `${size / 1024}k`);
    try {
      await mustRun(mkfs, args, { timeoutMs: LONG_TIMEOUT_MS });
    } catch (e) {
      const msg = (e as Error).message;
      if (/allocate|space left|too small|not enough/i.test(msg)) {
        throw tooSmall(size, Math.max(roundUp(size * 1.25, MIB), min), msg);
      }
      throw new ImageError(`mkfs.ext4 failed for ${dir}: ${msg}`, { cause: e });
    }
    if (fixups.length > 0) {
      progress(`applying ${fixups.length} owner, device and xattr fixups`);
      await applyFixups(tmp, dir, fixups, scratch);
    }
    publish(tmp, out);
    return { sizeBytes: size, contentBytes: usage.bytes, files: usage.files };
  } finally {
    rmSync(tmp, { force: true });
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** Beside out (same file system, for the link or rename), unique even for concurrent calls in one process. */
function tmpName(out: string): string {
  return `${out}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
}

function tooSmall(size: number, need: number, detail?: string): ImageError {
  return new ImageError(
    `an ext4 file system of ${size} bytes is too small for the files: it must be at least ${need} bytes ` +
      `(${Math.ceil(need / MIB)} MiB)${detail ? ` (${detail.slice(-300)})` : ""}`,
  );
}

/** Put tmp at out. A hard link refuses to replace: if someone else made out meanwhile, theirs is kept. */
function publish(tmp: string, out: string): void {
  try {
    linkSync(tmp, out);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return; // tmp is removed by the caller
    if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EOPNOTSUPP") throw e;
    renameSync(tmp, out); // a file system without hard links
  }
}

/** A path or name for a debugfs script, in double quotes (debugfs has no escapes, so a quote or a control character cannot go). */
function quote(s: string, what: string): string {
  if (s.includes('"') || hasControl(s)) {
    throw new ImageError(
      `cannot apply a fixup to ${what} ${JSON.stringify(s)}: double quotes and control characters cannot be passed to debugfs`,
    );
  }
  return `"${s}"`;
}

function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

const TYPE_BITS = { c: 0o020000, b: 0o060000, p: 0o010000 } as const;
const octal = (mode: number) => `0${mode.toString(8)}`;

/** Write the debugfs script for the fixups (xattr values go to files in `scratch`) and run it once. */
async function applyFixups(image: string, dir: string, fixups: Fixup[], scratch: string): Promise<void> {
  const debugfs = which("debugfs");
  if (!debugfs)
    throw new ImageError("debugfs is needed to set owners, devices and xattrs in images; install e2fsprogs");
  const lines: string[] = [];
  let values = 0;
  for (const f of fixups) {
    const path = f.path.startsWith("/") ? f.path : `/${f.path}`;
    const p = quote(path, "path");
    if (f.kind === "node") {
      if (lstatSafe(join(dir, path))) throw new ImageError(`device or fifo ${path} collides with a file in ${dir}`);
      // debugfs mknod takes a name in the current directory (a slash would end up in the name).
      const name = quote(path.slice(path.lastIndexOf("/") + 1), "path");
      const dev = f.type === "p" ? "p" : `${f.type} ${f.major} ${f.minor}`;
      lines.push(`cd ${quote(dirname(path), "path")}`, `mknod ${name} ${dev}`, "cd /");
      lines.push(`sif ${p} mode ${octal(TYPE_BITS[f.type] | (f.mode & 0o7777))}`);
      lines.push(`sif ${p} uid ${f.uid}`, `sif ${p} gid ${f.gid}`);
    } else if (f.kind === "owner") {
      let mode = f.mode;
      if ((mode & 0o170000) === 0) {
        const st = lstatSafe(join(dir, path));
        if (!st) throw new ImageError(`owner fixup for ${path}, which is not in ${dir}`);
        mode |= st.mode & 0o170000;
      }
      lines.push(`sif ${p} uid ${f.uid}`, `sif ${p} gid ${f.gid}`, `sif ${p} mode ${octal(mode)}`);
    } else {
      const file = join(scratch, `xattr-${values++}`);
      writeFileSync(file, f.value);
      lines.push(`ea_set -f ${quote(file, "file")} ${p} ${quote(f.name, "xattr name")}`);
    }
  }
  const script = join(scratch, "fixups.debugfs");
  writeFileSync(script, `${lines.join("\n")}\n`);
  const errors = await runDebugfs(debugfs, ["-w", "-f", script, image]);
  if (errors.length > 0) {
    throw new ImageError(
      `debugfs could not apply ${errors.length} fixup(s) to ${image}: ${errors.slice(0, 10).join("; ")}`,
    );
  }
}

/**
 * Run debugfs and return its error lines. debugfs exits 0 even when commands fail; it echoes commands on stdout
 * (ignored: 20 MB for a big script) and reports failures on stderr, after a version banner.
 */
function runDebugfs(debugfs: string, args: string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const child = withPrivateUmask(() => spawn(debugfs, args, { stdio: ["ignore", "ignore", "pipe"] }));
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => {
      if (stderr.length < 1 << 20) stderr += d.toString("utf8");
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), LONG_TIMEOUT_MS);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new ImageError(`debugfs: ${e.message}`));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const errors = stderr.split("\n").filter((l) => l.trim() !== "" && !/^debugfs \d+\.\d+/.test(l));
      if (code !== 0) errors.unshift(`debugfs exited with ${code ?? signal}`);
      resolve(errors);
    });
  });
}

/**
 * Copy the image `src` to `out` (sparse), grown to `sizeBytes` (rounded up to 4 KiB) with `resize2fs`. Shrinking
 * is refused. `out` appears only once the grown copy is complete, and an existing `out` is kept.
 */
export async function growExt4(src: string, out: string, sizeBytes: number): Promise<void> {
  const resize2fs = which("resize2fs");
  if (!resize2fs) throw new ImageError("resize2fs is needed to grow images; install e2fsprogs");
  const have = statSync(src).size;
  const size = roundUp(sizeBytes, BLOCK);
  if (size < have) throw new ImageError(`refusing to shrink ${src} from ${have} to ${size} bytes`);
  const tmp = tmpName(out);
  try {
    const cp = which("cp");
    if (!cp) throw new ImageError("cp is needed to copy images");
    await mustRun(cp, ["--sparse=always", src, tmp], { timeoutMs: LONG_TIMEOUT_MS });
    truncateSync(tmp, size);
    await mustRun(resize2fs, ["-f", tmp], { timeoutMs: LONG_TIMEOUT_MS });
    publish(tmp, out); // never replaces an `out` another process made meanwhile (VMs may already sit on it)
    rmSync(tmp, { force: true });
  } catch (e) {
    rmSync(tmp, { force: true });
    if (e instanceof ImageError) throw e;
    throw new ImageError(`growing ${src} to ${size} bytes failed: ${(e as Error).message}`, { cause: e });
  }
}
