/**
 * Minimal tar (ustar + pax path records) for directory transfers. The writer packs a host folder for the guest; the
 * reader extracts what a (possibly hostile) guest sent, refusing anything that could write outside the destination:
 * absolute names, `..` components, links pointing outside, writes through symlinks, hard links and device files.
 * File data is written sparsely (all-zero 4 KiB blocks become holes) and can be capped with `maxBytes`.
 */
import {
  closeSync,
  createReadStream,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  symlinkSync,
} from "node:fs";
import { dirname, isAbsolute, join, normalize, relative, resolve, sep } from "node:path";
import { ConfigError, SmolVMError } from "../errors.js";
import { SparseWriter } from "../util/sparse.js";

/** A tar entry from the guest was refused; nothing was written outside the destination. */
export class UnsafeArchiveError extends SmolVMError {
  constructor(
    readonly entry: string,
    reason: string,
  ) {
    super(`refused archive entry ${JSON.stringify(entry.slice(0, 200))}: ${reason}`);
  }
}

/**
 * A transfer from the guest went past its byte limit (`maxBytes`) and was stopped before anything beyond the limit
 * was written; the caller discards what was received. `path` is the entry being received.
 */
export class TransferLimitError extends SmolVMError {
  constructor(
    readonly limit: number,
    readonly path: string,
  ) {
    super(
      `transfer stopped at the limit of ${limit} bytes (maxBytes) while receiving ${JSON.stringify(path.slice(0, 200))}; nothing was kept`,
    );
  }
}

const BLOCK = 512;
const MAX_PAX = 1 << 20;
const MAX_NAME = 4096;

// ---------- writer ----------

function octal(n: number, len: number): string {
  return `${n.toString(8).padStart(len - 1, "0")}\0`;
}

function header(name: string, type: string, size: number, mode: number, mtime: number, link = ""): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(name.slice(0, 100), 0, "utf8");
  h.write(octal(mode & 0o7777, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  h.write(octal(size, 12), 124);
  h.write(octal(Math.floor(mtime), 12), 136);
  h.write("        ", 148);
  h.write(type, 156);
  h.write(link.slice(0, 100), 157, "utf8");
  h.write("ustar\0", 257);
  h.write("00", 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return h;
}

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body);
  len += String(len).length;
  if (String(len).length !== String(len - String(len).length).length) len += 1;
  return `${len}${body}`;
}

function entryHeaders(name: string, type: string, size: number, mode: number, mtime: number, link = ""): Buffer[] {
  const long = Buffer.byteLength(name) > 100 || Buffer.byteLength(link) > 100;
  if (!long) return [header(name, type, size, mode, mtime, link)];
  let pax = paxRecord("path", name);
  if (link) pax += paxRecord("linkpath", link);
  const body = Buffer.from(pax);
  return [
    header("PaxHeader", "x", body.length, 0o644, mtime),
    body,
    Buffer.alloc((BLOCK - (body.length % BLOCK)) % BLOCK),
    header(name.slice(0, 100), type, size, mode, mtime, link.slice(0, 100)),
  ];
}

/**
 * Stream a host folder as a tar archive (regular files, folders, symlinks; other types are skipped). `stats`, when
 * given, counts the files and the bytes of file data sent.
 */
export async function* packDir(root: string, stats?: { files: number; bytes: number }): AsyncGenerator<Buffer> {
  const walk = async function* (rel: string): AsyncGenerator<Buffer> {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const full = join(root, r);
      const st = lstatSync(full);
      const mtime = st.mtimeMs / 1000;
      if (st.isDirectory()) {
        yield* entryHeaders(`${r}/`, "5", 0, st.mode, mtime);
        yield* walk(r);
      } else if (st.isSymbolicLink()) {
        yield* entryHeaders(r, "2", 0, 0o777, mtime, readlinkSync(full));
      } else if (st.isFile()) {
        yield* entryHeaders(r, "0", st.size, st.mode, mtime);
        let sent = 0;
        for await (const chunk of createReadStream(full, { highWaterMark: 1 << 16 })) {
          const b = chunk as Buffer;
          const take = b.subarray(0, Math.max(0, st.size - sent)); // the file may grow while read
          sent += take.length;
          yield take;
        }
        if (sent < st.size) yield Buffer.alloc(st.size - sent); // or shrink
        if (stats) {
          stats.files++;
          stats.bytes += st.size;
        }
        yield Buffer.alloc((BLOCK - (st.size % BLOCK)) % BLOCK);
      }
    }
  };
  yield* walk("");
  yield Buffer.alloc(BLOCK * 2);
}

// ---------- reader ----------

function str(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const z = s.indexOf(0);
  return s.subarray(0, z < 0 ? len : z).toString("utf8");
}

/** A numeric header field: octal digits, or GNU base-256 (positive only); anything else is refused. */
function num(b: Buffer, off: number, len: number): number {
  let n = 0;
  if (b[off] === 0x80) {
    for (let i = off + 1; i < off + len; i++) n = n * 256 + (b[i] as number);
  } else {
    const s = str(b, off, len).trim();
    if (s && !/^[0-7]+$/.test(s)) throw new UnsafeArchiveError(str(b, 0, 100), "malformed number in header");
    n = s ? Number.parseInt(s, 8) : 0;
  }
  if (!Number.isSafeInteger(n) || n < 0) throw new UnsafeArchiveError(str(b, 0, 100), "number out of range in header");
  return n;
}

const inside = (root: string, p: string) => p === root || p.startsWith(root + sep);

/** Symlinks followed while resolving one path before giving up, as the kernel does (ELOOP). */
const MAX_HOPS = 40;

/**
 * Where a symlink really leads once every link on the way is followed. Lexical checks cannot see chains like
 * `y -> .`, `x -> y/..`. For a dangling or looping one the walk is done here the way the kernel would: components
 * left to right, following links (never collapsing `y/..` before `y` is known); once a component does not exist, the
 * rest is applied to the real path reached so far (that is where it would be created later). A chain too long to
 * resolve yields `null`.
 */
function resolvedTarget(link: string): string | null {
  try {
    return realpathSync.native(link);
  } catch {
    // dangling, looping or through a file: walk it by hand
  }
  let hops = 0;
  const walk = (start: string, path: string): string | null => {
    let cur = isAbsolute(path) ? "/" : start;
    const parts = path.split("/");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i] as string;
      if (p === "" || p === ".") continue;
      if (p === "..") {
        cur = dirname(cur);
        continue;
      }
      const next = join(cur, p);
      let st: ReturnType<typeof lstatSync>;
      try {
        st = lstatSync(next);
      } catch {
        return resolve(cur, ...parts.slice(i)); // does not exist (yet): the rest is plain directories
      }
      if (!st.isSymbolicLink()) {
        cur = next;
        continue;
      }
      if (++hops > MAX_HOPS) return null;
      const via = walk(cur, readlinkSync(next));
      if (via === null) return null;
      cur = via;
    }
    return cur;
  };
  return walk(realpathSync.native(dirname(link)), readlinkSync(link));
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : (h[i] as number);
  return sum === num(h, 148, 8);
}

function parsePax(body: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let off = 0;
  while (off < body.length) {
    const sp = body.indexOf(0x20, off);
    if (sp < 0) break;
    const len = Number.parseInt(body.toString("utf8", off, sp), 10);
    if (!Number.isFinite(len) || len <= 0 || off + len > body.length) break;
    const rec = body.toString("utf8", sp + 1, off + len - 1);
    const eq = rec.indexOf("=");
    if (eq > 0) out[rec.slice(0, eq)] = rec.slice(eq + 1);
    off += len;
  }
  return out;
}

/**
 * The safe absolute path of `name` inside `dest`, or a thrown UnsafeArchiveError. `dest` itself (a name with no
 * components, like `./.`) is only returned for a directory entry.
 */
function safePath(dest: string, name: string, dir: boolean): string {
  if (!name || name.length > MAX_NAME || name.includes("\0")) throw new UnsafeArchiveError(name, "invalid name");
  if (isAbsolute(name)) throw new UnsafeArchiveError(name, "absolute path");
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw new UnsafeArchiveError(name, "'..' in path");
  if (parts.length === 0 && !dir) throw new UnsafeArchiveError(name, "names the destination itself");
  const full = join(dest, ...parts);
  // never write through a symlink: every existing parent must be a real directory
  let cur = dest;
  for (const p of parts.slice(0, -1)) {
    cur = join(cur, p);
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = lstatSync(cur);
    } catch {
      break; // does not exist yet: created as a directory below
    }
    if (!st.isDirectory()) throw new UnsafeArchiveError(name, `parent ${relative(dest, cur)} is not a directory`);
  }
  return full;
}

/** A host file system failure (duplicate entry, name too long, disk full, ...) as a SmolVMError naming the entry. */
function fsFailure(e: unknown, entry: string): unknown {
  if (e instanceof SmolVMError || !(e instanceof Error) || typeof (e as NodeJS.ErrnoException).code !== "string") {
    return e;
  }
  return new SmolVMError(`cannot extract archive entry ${JSON.stringify(entry.slice(0, 200))}: ${e.message}`, {
    cause: e,
  });
}

export interface ExtractStats {
  files: number;
  dirs: number;
  symlinks: number;
  /** Bytes of file data received (holes included). */
  bytes: number;
}

export interface ExtractOptions {
  /**
   * Cap on the total bytes of file data accepted (holes count: it is the sum of the files' sizes). An entry that
   * would take the total past it stops the extraction with `TransferLimitError` before any of it is written.
   * Default: unlimited.
   */
  maxBytes?: number;
}

/**
 * Extract a tar stream into `dest` (which must exist and be empty), writing file data as it arrives (all-zero 4 KiB
 * blocks become holes). Throws `UnsafeArchiveError` at the first refused entry, `TransferLimitError` past
 * `maxBytes`, and `SmolVMError` for a corrupt archive or a host file system failure. On any error `dest` may hold a
 * partial tree (nothing outside it is touched): the caller removes it.
 */
export async function extractTar(
  source: AsyncIterable<Buffer> | Iterable<Buffer>,
  dest: string,
  opts: ExtractOptions = {},
): Promise<ExtractStats> {
  const maxBytes = opts.maxBytes ?? Number.POSITIVE_INFINITY;
  if (typeof maxBytes !== "number" || !(maxBytes >= 0)) {
    throw new ConfigError("maxBytes", `must be a number >= 0, got ${String(opts.maxBytes)}`);
  }
  const root = resolve(dest);
  const stats: ExtractStats = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  const links: string[] = [];
  let buf: Buffer = Buffer.alloc(0);
  // parser state lives in one object: startEntry (a closure) changes it
  const cur: { state: "header" | "data" | "pad" | "pax" | "end"; paxNext: "x" | "L"; entry: string } = {
    state: "header",
    paxNext: "x",
    entry: "",
  };
  let remaining = 0;
  let pad = 0;
  let fd: number | null = null;
  let out: SparseWriter | null = null;
  let pax: Record<string, string> = {};
  let paxBody: Buffer[] = [];
  let zeroBlocks = 0;

  const startEntry = (h: Buffer) => {
    const type = String.fromCharCode(h[156] as number);
    const size = num(h, 124, 12);
    const prefix = str(h, 345, 155);
    let name = pax.path ?? (prefix ? `${prefix}/${str(h, 0, 100)}` : str(h, 0, 100));
    const link = pax.linkpath ?? str(h, 157, 100);
    pax = {};
    cur.entry = name;
    const mode = num(h, 100, 8) & 0o777;
    if (type === "x" || type === "L" || type === "g") {
      if (size > MAX_PAX) throw new UnsafeArchiveError(name, "oversized extended header");
      cur.paxNext = type === "L" ? "L" : "x";
      paxBody = [];
      remaining = size;
      pad = (BLOCK - (size % BLOCK)) % BLOCK;
      cur.state = type === "g" ? "data" : "pax"; // global headers are read and ignored
      return;
    }
    name = name.replace(/\/+$/, "");
    if (name === "" || name === ".") {
      if (type !== "5") throw new UnsafeArchiveError(name, "unnamed entry");
      cur.state = "header";
      return;
    }
    const full = safePath(root, name, type === "5");
    if (type === "5") {
      mkdirSync(full, { recursive: true, mode: mode | 0o700 });
      stats.dirs++;
    } else if (type === "0" || type === "\0" || type === "7") {
      // the size is known up front: refuse the whole entry rather than write part of it
      if (stats.bytes + size > maxBytes) throw new TransferLimitError(maxBytes, name);
      mkdirSync(join(full, ".."), { recursive: true });
      fd = openSync(full, "wx", mode | 0o600);
      out = new SparseWriter(fd);
      stats.files++;
      remaining = size;
      pad = (BLOCK - (size % BLOCK)) % BLOCK;
      cur.state = "data";
      return;
    } else if (type === "2") {
      if (!link || isAbsolute(link)) throw new UnsafeArchiveError(name, `symlink to absolute path ${link}`);
      if (link.length > MAX_NAME || link.includes("\0")) throw new UnsafeArchiveError(name, "invalid symlink target");
      const target = normalize(join(full, "..", link));
      if (!inside(root, target)) {
        throw new UnsafeArchiveError(name, `symlink points outside the destination (${link})`);
      }
      mkdirSync(join(full, ".."), { recursive: true });
      symlinkSync(link, full);
      links.push(full);
      stats.symlinks++;
    } else if (type === "1") {
      throw new UnsafeArchiveError(name, "hard links are not accepted");
    } else {
      throw new UnsafeArchiveError(name, `entry type '${type}' (device, fifo or unknown) is not accepted`);
    }
    if (size > 0) {
      remaining = size; // a body on a non-file entry: skip it
      pad = (BLOCK - (size % BLOCK)) % BLOCK;
      cur.state = "data";
    } else cur.state = "header";
  };

  // one chunk through the state machine; returns the offset up to which `buf` was consumed
  const consume = (): number => {
    let off = 0;
    for (;;) {
      if (cur.state === "end") return buf.length; // whatever follows the end marker is ignored
      if (cur.state === "header") {
        if (buf.length - off < BLOCK) break;
        const h = buf.subarray(off, off + BLOCK);
        off += BLOCK;
        if (h.every((b) => b === 0)) {
          if (++zeroBlocks === 2) cur.state = "end";
          continue;
        }
        zeroBlocks = 0;
        cur.entry = str(h, 0, 100);
        if (!checksumOk(h)) throw new UnsafeArchiveError(cur.entry, "bad header checksum (corrupt archive)");
        startEntry(h);
      } else if (cur.state === "data" || cur.state === "pax") {
        const take = Math.min(remaining, buf.length - off);
        if (take === 0 && remaining > 0) break;
        const part = buf.subarray(off, off + take);
        if (cur.state === "pax") paxBody.push(Buffer.from(part));
        else if (out !== null) {
          if (stats.bytes + take > maxBytes) throw new TransferLimitError(maxBytes, cur.entry);
          out.write(part);
          stats.bytes += take;
        }
        off += take;
        remaining -= take;
        if (remaining === 0) {
          if (out !== null && fd !== null) {
            out.finish();
            out = null;
            closeSync(fd);
            fd = null;
          }
          if (cur.state === "pax") {
            const body = Buffer.concat(paxBody);
            paxBody = [];
            pax = cur.paxNext === "L" ? { path: str(body, 0, body.length) } : parsePax(body);
          }
          cur.state = "pad";
        }
      } else if (cur.state === "pad") {
        const take = Math.min(pad, buf.length - off);
        off += take;
        pad -= take;
        if (pad > 0) break;
        cur.state = "header";
      }
    }
    return off;
  };

  try {
    for await (const chunk of source) {
      if (cur.state === "end") continue; // drained, never buffered
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let off: number;
      try {
        off = consume();
      } catch (e) {
        throw fsFailure(e, cur.entry);
      }
      buf = off >= buf.length ? Buffer.alloc(0) : Buffer.from(buf.subarray(off));
      if (buf.length >= BLOCK && cur.state === "header") throw new SmolVMError("tar parser stalled");
    }
  } finally {
    if (fd !== null) closeSync(fd);
  }
  if (cur.state === "header" && buf.length > 0) throw new SmolVMError("archive ended in the middle of a header");
  if (cur.state !== "end" && cur.state !== "header") throw new SmolVMError("archive ended in the middle of an entry");
  // only now is the tree final: every link must still lead inside it, whatever other links it passes through
  const realRoot = realpathSync.native(root);
  for (const l of links) {
    const target = resolvedTarget(l);
    if (target === null) throw new UnsafeArchiveError(relative(root, l), "symlink chain too long or looping");
    if (!inside(realRoot, target)) {
      throw new UnsafeArchiveError(relative(root, l), "symlink resolves outside the destination (through other links)");
    }
  }
  return stats;
}
