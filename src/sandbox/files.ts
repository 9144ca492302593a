/** `vm.files`: file operations done by the guest agent itself (any guest image, no shell needed). */
import { createReadStream, existsSync, statSync } from "node:fs";
import type { Readable } from "node:stream";
import type { AgentClient, OpHandle } from "../agent/client.js";
import { decodeFields, E, FF, type Field, FL, fieldString, fieldU32, fieldU64, T, u32 } from "../agent/codec.js";
import { AgentError, ConfigError, FileNotFoundError, FileSystemError } from "../errors.js";
import { type ExtractStats, packDir } from "./tar.js";
import { ChunkQueue, downloadFile, downloadFolder, readBounded, type TransferOptions } from "./transfers.js";

export type EntryType = "file" | "dir" | "symlink" | "char" | "block" | "fifo" | "socket" | "unknown";

export interface EntryInfo {
  /** Path relative to the listed directory (for `stat`, the path asked for). */
  name: string;
  /** Full guest path. */
  path: string;
  type: EntryType;
  size: number;
  /** Permission bits, e.g. 0o644. */
  mode: number;
  mtime: Date;
  symlinkTarget?: string;
}

const TYPES: Record<string, EntryType> = {
  f: "file",
  d: "dir",
  l: "symlink",
  c: "char",
  b: "block",
  p: "fifo",
  s: "socket",
};
const ERRNO: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  6: "ENXIO",
  13: "EACCES",
  17: "EEXIST",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  28: "ENOSPC",
  30: "EROFS",
  36: "ENAMETOOLONG",
  39: "ENOTEMPTY",
};
const MAX_LIST_BYTES = 64 << 20;
const MAX_NAME = 4096;

function checkPath(field: string, path: unknown): string {
  if (typeof path !== "string" || path === "" || path.includes("\0") || Buffer.byteLength(path) >= MAX_NAME) {
    throw new ConfigError(field, "must be a non-empty guest path without NUL bytes");
  }
  return path;
}

/** Turn an agent error into FileNotFoundError / FileSystemError naming the path. */
function fsError(e: unknown, path: string): Error {
  if (!(e instanceof AgentError) || e.code === undefined) return e as Error;
  if (e.code === 2) return new FileNotFoundError(path);
  return new FileSystemError(path, ERRNO[e.code] ?? `errno ${e.code}`, `guest file operation failed: ${e.message}`);
}

const join = (dir: string, name: string) => (dir.endsWith("/") ? dir + name : `${dir}/${name}`);

/** Split a field list into entries (each starts with E.PATH), validating what the guest sent. */
function parseEntries(fields: Field[], base: string | null): EntryInfo[] {
  const groups: Field[][] = [];
  for (const f of fields) {
    if (f[0] === E.PATH) groups.push([f]);
    else groups.at(-1)?.push(f);
  }
  return groups.map((g) => {
    const name = fieldString(g, E.PATH) ?? "";
    if (!name || name.length > MAX_NAME || name.includes("\0"))
      throw new AgentError("invalid entry name from the guest");
    const link = fieldString(g, E.LINK);
    return {
      name,
      path: base === null ? name : join(base, name),
      type: TYPES[fieldString(g, E.TYPE) ?? "?"] ?? "unknown",
      size: fieldU64(g, E.SIZE) ?? 0,
      mode: fieldU32(g, E.MODE) ?? 0,
      mtime: new Date(fieldU64(g, E.MTIME) ?? 0),
      ...(link !== undefined ? { symlinkTarget: link.slice(0, MAX_NAME) } : {}),
    };
  });
}

export interface WriteResult {
  path: string;
  bytesWritten: number;
}

export class Files {
  constructor(private readonly agent: () => Promise<AgentClient>) {}

  private async op(
    type: number,
    path: string,
    fields: Field[],
    onData?: (b: Buffer) => void | Promise<void>,
  ): Promise<Field[]> {
    const h = (await this.agent()).op(type, [[FF.PATH, path], ...fields], onData);
    try {
      return await h.done;
    } catch (e) {
      throw fsError(e, path);
    }
  }

  /**
   * Read a whole file: a string (`encoding`, default utf8) or, with `encoding: null`, a Buffer. At most `maxBytes`
   * (default 256 MiB): past it the read is stopped in the guest and `FileSystemError` (EFBIG) is thrown. Only
   * regular files unless `allowSpecial` (a device may never end).
   */
  async read(
    path: string,
    opts?: { encoding?: BufferEncoding; maxBytes?: number; allowSpecial?: boolean },
  ): Promise<string>;
  async read(path: string, opts: { encoding: null; maxBytes?: number; allowSpecial?: boolean }): Promise<Buffer>;
  async read(
    path: string,
    opts: { encoding?: BufferEncoding | null; maxBytes?: number; allowSpecial?: boolean } = {},
  ): Promise<string | Buffer> {
    checkPath("path", path);
    const max = opts.maxBytes ?? 256 << 20;
    if (!Number.isSafeInteger(max) || max < 0) throw new ConfigError("maxBytes", "must be a whole number >= 0");
    const chunks: Buffer[] = [];
    try {
      await readBounded(await this.agent(), path, max, {
        allowSpecial: opts.allowSpecial,
        onData: (b) => chunks.push(b),
        onOver: () =>
          new FileSystemError(path, "EFBIG", `${path} is larger than maxBytes (${max}); use downloadFile to stream it`),
      });
    } catch (e) {
      throw fsError(e, path);
    }
    const buf = Buffer.concat(chunks);
    return opts.encoding === null ? buf : buf.toString(opts.encoding ?? "utf8");
  }

  /**
   * Stream a file through `onData`, chunk by chunk; a promise returned by `onData` holds the guest back until it
   * settles (backpressure: a slow consumer never makes output queue in memory). At most `maxBytes` (default no
   * limit): past it the read stops with `FileSystemError` (EFBIG). Only regular files unless `allowSpecial`.
   */
  async readStream(
    path: string,
    onData: (chunk: Buffer) => unknown,
    opts: { maxBytes?: number; allowSpecial?: boolean } = {},
  ): Promise<void> {
    checkPath("path", path);
    const max = opts.maxBytes ?? Number.MAX_SAFE_INTEGER;
    if (!Number.isSafeInteger(max) || max < 0) throw new ConfigError("maxBytes", "must be a whole number >= 0");
    try {
      await readBounded(await this.agent(), path, max, {
        allowSpecial: opts.allowSpecial,
        onData,
        onOver: () => new FileSystemError(path, "EFBIG", `${path} is larger than maxBytes (${max})`),
      });
    } catch (e) {
      throw fsError(e, path);
    }
  }

  /**
   * A file's content as an async iterable of chunks, with backpressure (the guest waits while 1 MiB is unread); if
   * the consumer stops early the rest is read and dropped, never buffered. Past `maxBytes` it fails with EFBIG.
   */
  async *readChunks(path: string, opts: { maxBytes?: number } = {}): AsyncGenerator<Buffer> {
    const queue = new ChunkQueue(1 << 20);
    this.readStream(path, (b) => queue.push(b), opts).then(
      () => queue.end(),
      (e: unknown) => queue.fail(e as Error),
    );
    try {
      yield* queue;
    } finally {
      queue.fail(new Error("read abandoned"));
    }
  }

  /**
   * The first `maxBytes` of a regular file, and whether the file goes on past them (the read then stops in the
   * guest, so a huge file costs no more than `maxBytes`).
   */
  async readHead(path: string, maxBytes: number): Promise<{ data: Buffer; truncated: boolean }> {
    const chunks: Buffer[] = [];
    try {
      await this.readStream(path, (b) => void chunks.push(b), { maxBytes });
    } catch (e) {
      if (!(e instanceof FileSystemError && e.code === "EFBIG")) throw e;
      return { data: Buffer.concat(chunks), truncated: true };
    }
    return { data: Buffer.concat(chunks), truncated: false };
  }

  /**
   * Write a file, creating parent directories. The content goes to a temporary file renamed over the target at the
   * end, so a failed or interrupted write never leaves half a file. A Readable is streamed (bounded memory).
   */
  async write(path: string, data: string | Buffer | Readable, opts: { mode?: number } = {}): Promise<WriteResult> {
    checkPath("path", path);
    if (opts.mode !== undefined && (!Number.isInteger(opts.mode) || opts.mode < 0 || opts.mode > 0o7777)) {
      throw new ConfigError("mode", "must be permission bits from 0 to 0o7777");
    }
    const fields: Field[] = [[FF.FLAGS, u32(FL.PARENTS)]];
    if (opts.mode !== undefined) fields.push([FF.MODE, u32(opts.mode)]);
    const h: OpHandle = (await this.agent()).op(T.FWRITE, [[FF.PATH, path], ...fields]);
    try {
      await h.started;
      await h.writeAllAndClose(data);
      const done = await h.done;
      return { path, bytesWritten: fieldU64(done, E.SIZE) ?? 0 };
    } catch (e) {
      throw fsError(e, path);
    }
  }

  /**
   * Entries below a directory, `depth` levels deep (default 1). Symlinks are listed, not followed. A listing larger
   * than `maxBytes` on the wire (default 64 MiB, about a million entries) fails with E2BIG.
   */
  async list(path: string, opts: { depth?: number; maxBytes?: number } = {}): Promise<EntryInfo[]> {
    checkPath("path", path);
    const depth = opts.depth ?? 1;
    if (!Number.isInteger(depth) || depth < 1 || depth > 64) throw new ConfigError("depth", "must be 1 to 64");
    const max = Math.min(opts.maxBytes ?? MAX_LIST_BYTES, MAX_LIST_BYTES);
    const fields: Field[] = [];
    let total = 0;
    await this.op(T.FLIST, path, [[FF.DEPTH, u32(depth)]], (b) => {
      total += b.length;
      if (total > max) {
        throw new FileSystemError(
          path,
          "E2BIG",
          `the listing of ${path} exceeds ${max} bytes; list a smaller folder or depth`,
        );
      }
      fields.push(...decodeFields(b));
    });
    return parseEntries(fields, path);
  }

  /** Information about a path (a symlink itself, not its target). */
  async stat(path: string): Promise<EntryInfo> {
    checkPath("path", path);
    const [entry] = parseEntries(await this.op(T.FSTAT, path, []), null);
    if (!entry) throw new AgentError("empty stat reply");
    return { ...entry, name: path, path };
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.stat(path);
      return true;
    } catch (e) {
      if (e instanceof FileNotFoundError) return false;
      throw e;
    }
  }

  /** Create a directory (with its parents unless `parents: false`). */
  async mkdir(path: string, opts: { parents?: boolean; mode?: number } = {}): Promise<void> {
    checkPath("path", path);
    const fields: Field[] = [[FF.FLAGS, u32(opts.parents === false ? 0 : FL.PARENTS)]];
    if (opts.mode !== undefined) fields.push([FF.MODE, u32(opts.mode)]);
    await this.op(T.FMKDIR, path, fields);
  }

  /** Remove a file, a symlink, an empty directory, or with `recursive` a whole tree (not crossing mounts). */
  async remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    checkPath("path", path);
    await this.op(T.FREMOVE, path, [[FF.FLAGS, u32(opts.recursive ? FL.RECURSIVE : 0)]]);
  }

  async rename(from: string, to: string): Promise<void> {
    checkPath("from", from);
    checkPath("to", to);
    await this.op(T.FRENAME, from, [
      [FF.PATH2, to],
      [FF.FLAGS, u32(FL.PARENTS)],
    ]);
  }

  /** Copy a host file into the guest, streaming (a 1 GiB file is never held in memory). Keeps its permission bits. */
  async upload(localPath: string, guestPath: string): Promise<WriteResult> {
    const st = statSync(localPath);
    if (!st.isFile()) throw new ConfigError("localPath", `not a regular file: ${localPath}`);
    return this.write(guestPath, createReadStream(localPath, { highWaterMark: 1 << 16 }), { mode: st.mode & 0o7777 });
  }

  /**
   * Copy a guest file to the host, streaming: written as it arrives (runs of zeros stay holes), into a temporary
   * file renamed to `localPath` only when complete. Bounded by `maxBytes` (default: what the destination can take
   * while keeping a margin free); regular files only unless `allowSpecial`.
   */
  async download(
    guestPath: string,
    localPath: string,
    opts: TransferOptions = {},
  ): Promise<{ path: string; bytes: number }> {
    checkPath("guestPath", guestPath);
    try {
      return await downloadFile(await this.agent(), guestPath, localPath, opts);
    } catch (e) {
      throw fsError(e, guestPath);
    }
  }

  /** Copy a host folder into the guest (created if missing), streamed as tar into the guest's `tar`. */
  async uploadDir(localDir: string, guestDir: string): Promise<{ path: string }> {
    if (!statSync(localDir).isDirectory()) throw new ConfigError("localDir", `not a directory: ${localDir}`);
    checkPath("guestDir", guestDir);
    await this.mkdir(guestDir);
    await this.untar(guestDir, packDir(localDir));
    return { path: guestDir };
  }

  /**
   * Extract a tar stream into the existing guest folder `guestDir` with the guest's `tar` (streamed, at the pace the
   * guest takes it). `signal` stops it: the guest's tar is killed and the promise rejects with the signal's reason.
   */
  async untar(guestDir: string, source: AsyncIterable<Buffer>, opts: { signal?: AbortSignal } = {}): Promise<void> {
    checkPath("guestDir", guestDir);
    opts.signal?.throwIfAborted();
    const client = await this.agent();
    let stderr = "";
    const h = client.exec(
      { argv: ["tar", "-x", "-f", "-", "-C", guestDir], stdin: true },
      {
        onStderr: (b) => {
          stderr = (stderr + b.toString()).slice(-2000);
        },
      },
    );
    const aborted = new Promise<never>((_, reject) => {
      const stop = () => {
        h.kill(9).catch(() => {});
        // rejected once the guest's tar is gone, so the caller's cleanup never races with it
        h.exited.catch(() => {}).finally(() => reject(opts.signal?.reason ?? new Error("aborted")));
      };
      opts.signal?.addEventListener("abort", stop, { once: true });
      h.exited.finally(() => opts.signal?.removeEventListener("abort", stop)).catch(() => {});
    });
    aborted.catch(() => {});
    const work = (async () => {
      await h.started;
      try {
        await h.writeAllAndClose(source);
      } catch (e) {
        h.kill(9).catch(() => {}); // the source failed: never let the guest's tar take half an archive as whole
        await h.exited.catch(() => {});
        throw e;
      }
      return h.exited;
    })();
    const exit = await Promise.race([work, aborted]);
    if (exit.exitCode !== 0) throw new FileSystemError(guestDir, "ETAR", `guest tar failed: ${stderr.trim()}`);
    if (opts.signal?.aborted) throw opts.signal.reason; // killed by the abort, whichever settled first
  }

  /**
   * Copy a guest folder to the host. The guest's tar output is treated as hostile: entries with absolute paths,
   * `..`, links pointing outside, hard links or device files are refused (`UnsafeArchiveError`) and nothing is
   * written outside `localDir`; past `maxBytes` of file data (default: what the destination can take while keeping
   * a margin free) it stops with `TransferLimitError`. Extraction goes to a temporary folder renamed to `localDir`
   * only on success.
   */
  async downloadDir(
    guestDir: string,
    localDir: string,
    opts: Omit<TransferOptions, "allowSpecial"> = {},
  ): Promise<{ path: string } & ExtractStats> {
    checkPath("guestDir", guestDir);
    if (existsSync(localDir)) throw new ConfigError("localDir", `already exists: ${localDir}`);
    const st = await this.stat(guestDir);
    if (st.type !== "dir") throw new FileSystemError(guestDir, "ENOTDIR", `not a directory in the guest: ${guestDir}`);
    return downloadFolder(await this.agent(), guestDir, localDir, opts);
  }
}
