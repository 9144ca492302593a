/**
 * Split guest RAM out of a QEMU migration stream, without QEMU.
 *
 * Loading a full stream into file-backed RAM is slow: QEMU touches every page of the file (it reads each page the
 * stream says is zero, to see whether it must clear it), which on a disk file costs about 1.5 s per 512 MiB here.
 * Instead this reads the stream once, writes the non-zero pages of one RAM block (`ram0`) straight into a sparse
 * file with pwrite, and writes the same stream without that block's pages. QEMU then loads the short stream into a
 * VM whose RAM is that file (share=on) and saves the device state alone (x-ignore-shared).
 *
 * Only the parts of the format this needs are parsed (QEMU's migration/savevm.c and migration/ram.c, stream version
 * 3): the header, the configuration section, and the RAM sections up to RAM's END section; what follows (device
 * state, EOF, the JSON description) is copied unchanged. Anything unexpected (another iterative section, compressed
 * or XBZRLE pages, capabilities recorded in the stream) throws `UnsupportedStreamError`; callers then let QEMU load
 * the stream as a whole. The stream comes from our own QEMU, but every length and offset is still checked against
 * the file and the block's size.
 */
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from "node:fs";
import { Worker } from "node:worker_threads";
import type { RamJob } from "./ram-split-worker.js";

export class UnsupportedStreamError extends Error {}

const MAGIC = 0x5145564d; // "QEVM"
const VERSION = 3;
const SEC_START = 0x01;
const SEC_PART = 0x02;
const SEC_END = 0x03;
const SEC_FULL = 0x04;
const SUBSECTION = 0x05;
const CONFIGURATION = 0x07;
const FOOTER = 0x7e;

const PAGE = 4096;
const F_ZERO = 0x02;
const F_MEM_SIZE = 0x04;
const F_PAGE = 0x08;
const F_EOS = 0x10;
const F_CONTINUE = 0x20;
const KNOWN_FLAGS = F_ZERO | F_MEM_SIZE | F_PAGE | F_EOS | F_CONTINUE;

/** Sequential reader over a file with a bounded buffer. */
class Reader {
  private buf = Buffer.allocUnsafe(4 << 20);
  private start = 0;
  private end = 0;
  private eof = false;
  consumed = 0;
  constructor(private fd: number) {}

  private fill(n: number): void {
    if (n > this.buf.length) throw new UnsupportedStreamError(`record of ${n} bytes is too large`);
    if (this.end - this.start >= n) return;
    this.buf.copy(this.buf, 0, this.start, this.end);
    this.end -= this.start;
    this.start = 0;
    while (this.end < n && !this.eof) {
      const got = readSync(this.fd, this.buf, this.end, this.buf.length - this.end, null);
      if (got === 0) this.eof = true;
      this.end += got;
    }
    if (this.end < n) throw new UnsupportedStreamError("the stream ends in the middle of a record");
  }
  take(n: number): Buffer {
    this.fill(n);
    const b = this.buf.subarray(this.start, this.start + n);
    this.start += n;
    this.consumed += n;
    return b;
  }
  peek(): number {
    this.fill(1);
    return this.buf[this.start] as number;
  }
  u8(): number {
    return this.take(1)[0] as number;
  }
  u32(): number {
    return this.take(4).readUInt32BE(0);
  }
  u64(): bigint {
    return this.take(8).readBigUInt64BE(0);
  }
  /** Everything left, in chunks. */
  *rest(): Generator<Buffer> {
    if (this.end > this.start) yield this.buf.subarray(this.start, this.end);
    this.start = this.end;
    for (;;) {
      const got = readSync(this.fd, this.buf, 0, this.buf.length, null);
      if (got === 0) return;
      yield this.buf.subarray(0, got);
    }
  }
}

/** Buffered sequential writer. */
class Writer {
  private buf = Buffer.allocUnsafe(1 << 20);
  private n = 0;
  written = 0;
  constructor(private fd: number) {}
  put(b: Buffer): void {
    if (this.n + b.length > this.buf.length) this.flush();
    if (b.length > this.buf.length) {
      writeSync(this.fd, b);
    } else {
      b.copy(this.buf, this.n);
      this.n += b.length;
    }
    this.written += b.length;
  }
  u8(v: number): void {
    this.put(Buffer.from([v]));
  }
  u64(v: bigint): void {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(v);
    this.put(b);
  }
  flush(): void {
    if (this.n) writeSync(this.fd, this.buf, 0, this.n);
    this.n = 0;
  }
}

export interface RamSplitResult {
  /** Pages of the block that hold data (written to the RAM file). */
  dataPages: number;
  /** Pages of the block the stream says are zero (left as holes). */
  zeroPages: number;
  /** Size of the stream without the block's pages. */
  strippedBytes: number;
  /** Where `joinRam` puts the pages back: just after RAM's START section (and its footer), in the stripped stream. */
  join: RamJoinPoint;
}

export interface RamJoinPoint {
  offset: number;
  sectionId: number;
  /** Whether the stream ends each section with a footer. */
  footers: boolean;
}

/**
 * Read `streamPath`; write block `block`'s pages into `ramPath` (created sparse, `ramBytes` long) and the rest of the
 * stream to `strippedPath`.
 */
export function splitRam(
  streamPath: string,
  out: { block: string; ramPath: string; ramBytes: number; strippedPath: string },
): RamSplitResult {
  const inFd = openSync(streamPath, "r");
  const ramFd = openSync(out.ramPath, "w", 0o600);
  const outFd = openSync(out.strippedPath, "w", 0o600);
  try {
    ftruncateSync(ramFd, out.ramBytes);
    return split(new Reader(inFd), new Writer(outFd), ramFd, out);
  } finally {
    closeSync(inFd);
    closeSync(ramFd);
    closeSync(outFd);
  }
}

/**
 * Pages written into the RAM file, a run of consecutive ones per `pwrite` (QEMU sends a block's pages in address
 * order, so most runs are long): one system call per MiB instead of one per page.
 */
class RunWriter {
  private buf = Buffer.allocUnsafe(1 << 20);
  private start = 0;
  private n = 0;

  constructor(private readonly fd: number) {}

  /** Write one page at `off` (copied now: `page` may be reused by the reader). */
  put(off: number, page: Buffer): void {
    if (this.n > 0 && (off !== this.start + this.n || this.n + PAGE > this.buf.length)) this.flush();
    if (this.n === 0) this.start = off;
    page.copy(this.buf, this.n, 0, PAGE);
    this.n += PAGE;
  }

  flush(): void {
    for (let done = 0; done < this.n; ) {
      done += writeSync(this.fd, this.buf, done, this.n - done, this.start + done);
    }
    this.n = 0;
  }
}

function split(r: Reader, w: Writer, ramFd: number, out: { block: string; ramBytes: number }): RamSplitResult {
  const fail = (why: string): never => {
    throw new UnsupportedStreamError(`${why} (at byte ${r.consumed})`);
  };
  const header = r.take(8);
  if (header.readUInt32BE(0) !== MAGIC || header.readUInt32BE(4) !== VERSION) fail("not a version 3 QEMU stream");
  w.put(header);

  const res: RamSplitResult = {
    dataPages: 0,
    zeroPages: 0,
    strippedBytes: 0,
    join: { offset: -1, sectionId: -1, footers: false },
  };
  const written = new Uint8Array(Math.ceil(out.ramBytes / PAGE)); // pages holding data, in case one is sent again
  const ram = new RunWriter(ramFd);
  const zeroPage = Buffer.alloc(PAGE);
  let ramSection = -1;
  let blockSeen = false;
  let current = ""; // block of the last record read (a record may continue it, even in a later section)

  if (r.peek() === CONFIGURATION) {
    w.put(r.take(1));
    const len = r.u32();
    if (len > 256) fail("machine name too long");
    const name = r.take(len);
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(len);
    w.put(b);
    w.put(name);
    if (r.peek() === SUBSECTION) fail("the configuration carries capabilities or other subsections");
  }

  const copyFooter = (id: number) => {
    if (r.peek() !== FOOTER) return;
    res.join.footers = true;
    const f = r.take(5);
    if (f.readUInt32BE(1) !== id) fail("section footer names another section");
    w.put(f);
  };

  /** RAM records of one section, up to its EOS. */
  const ramRecords = () => {
    let lastOut = ""; // block named last in the output (reset per section: each section names its first block)
    for (;;) {
      const hdr = r.u64();
      const flags = Number(hdr & 0xfffn);
      const addr = hdr & ~0xfffn;
      if (flags & ~KNOWN_FLAGS) fail(`unsupported RAM record flags 0x${flags.toString(16)}`);
      if (flags & F_EOS) {
        w.u64(hdr);
        return;
      }
      if (flags & F_MEM_SIZE) {
        // the block list: names and sizes, summing to `addr`
        w.u64(hdr);
        let total = addr;
        while (total > 0n) {
          const len = r.u8();
          const id = r.take(len).toString("latin1");
          const size = r.u64();
          if (size > total) fail("block list sizes do not add up");
          if (id === out.block) {
            if (size !== BigInt(out.ramBytes)) fail(`block ${id} has ${size} bytes, expected ${out.ramBytes}`);
            blockSeen = true;
          }
          w.put(Buffer.from([len]));
          w.put(Buffer.from(id, "latin1"));
          w.u64(size);
          total -= size;
        }
        continue;
      }
      if (!(flags & F_CONTINUE)) current = r.take(r.u8()).toString("latin1");
      else if (!current) fail("a RAM record continues no block");
      const kind = flags & (F_ZERO | F_PAGE);
      if (kind !== F_ZERO && kind !== F_PAGE) fail(`RAM record with flags 0x${flags.toString(16)}`);
      const payload = r.take(kind === F_ZERO ? 1 : PAGE);
      if (current === out.block) {
        if (!blockSeen) fail(`pages of ${current} before its size`);
        if (addr + BigInt(PAGE) > BigInt(out.ramBytes)) fail(`page at ${addr} is outside ${current}`);
        const off = Number(addr);
        const page = off / PAGE;
        if (kind === F_PAGE && !payload.equals(zeroPage)) {
          ram.put(off, payload);
          written[page] = 1;
          res.dataPages++;
        } else if (kind === F_ZERO && payload[0] !== 0) {
          ram.put(off, Buffer.alloc(PAGE, payload[0]));
          written[page] = 1;
          res.dataPages++;
        } else {
          if (written[page]) {
            ram.flush(); // (the page may be in the run not yet written)
            writeSync(ramFd, zeroPage, 0, PAGE, off);
          }
          written[page] = 0;
          res.zeroPages++;
        }
        continue;
      }
      // another block's record: kept, naming its block whenever the output has not just named it
      if (current === lastOut) {
        w.u64(hdr | BigInt(F_CONTINUE));
      } else {
        w.u64(hdr & ~BigInt(F_CONTINUE));
        w.put(Buffer.from([current.length]));
        w.put(Buffer.from(current, "latin1"));
        lastOut = current;
      }
      w.put(payload);
    }
  };

  for (;;) {
    const type = r.u8();
    if (type === SEC_START || type === SEC_FULL) {
      const id = r.u32();
      const len = r.u8();
      const name = r.take(len).toString("latin1");
      const instVer = r.take(8);
      if (type === SEC_FULL || name !== "ram") fail(`section ${name} before RAM's end`);
      if (ramSection !== -1) fail("a second RAM section start");
      ramSection = id;
      const h = Buffer.allocUnsafe(6);
      h[0] = type;
      h.writeUInt32BE(id, 1);
      h[5] = len;
      w.put(h);
      w.put(Buffer.from(name, "latin1"));
      w.put(instVer);
      ramRecords();
      copyFooter(id);
      res.join = { ...res.join, offset: w.written, sectionId: id };
    } else if (type === SEC_PART || type === SEC_END) {
      const id = r.u32();
      if (id !== ramSection) fail(`section ${id} is not RAM`);
      const h = Buffer.allocUnsafe(5);
      h[0] = type;
      h.writeUInt32BE(id, 1);
      w.put(h);
      ramRecords();
      copyFooter(id);
      if (type === SEC_END) break;
    } else {
      fail(`section type 0x${type.toString(16)} before RAM's end`);
    }
  }
  if (!blockSeen || res.join.offset < 0) fail(`the stream has no block ${out.block}`);
  ram.flush();
  // device state, EOF and the description: unchanged
  w.flush();
  for (const chunk of r.rest()) w.put(chunk);
  w.flush();
  res.strippedBytes = w.written;
  return res;
}

/**
 * The inverse of `splitRam`: a full stream again, with the RAM file's non-zero pages in one RAM section inserted at
 * the join point (for a VMM that loads RAM from the stream, e.g. a `.smolmachine` with memory).
 */
export function joinRam(
  strippedPath: string,
  ram: { block: string; path: string; bytes: number },
  at: RamJoinPoint,
  outPath: string,
): void {
  const inFd = openSync(strippedPath, "r");
  const ramFd = openSync(ram.path, "r");
  const outFd = openSync(outPath, "w", 0o600);
  try {
    const r = new Reader(inFd);
    const w = new Writer(outFd);
    w.put(r.take(at.offset));
    const h = Buffer.allocUnsafe(5);
    h[0] = SEC_PART;
    h.writeUInt32BE(at.sectionId, 1);
    w.put(h);
    const chunk = Buffer.allocUnsafe(1 << 20);
    const zero = Buffer.alloc(PAGE);
    let named = false;
    for (let off = 0; off < ram.bytes; off += chunk.length) {
      const got = readSync(ramFd, chunk, 0, Math.min(chunk.length, ram.bytes - off), off);
      if (got % PAGE !== 0) throw new UnsupportedStreamError(`${ram.path} is not a whole number of pages`);
      for (let p = 0; p < got; p += PAGE) {
        const page = chunk.subarray(p, p + PAGE);
        if (page.equals(zero)) continue;
        if (named) {
          w.u64(BigInt(off + p) | BigInt(F_PAGE | F_CONTINUE));
        } else {
          w.u64(BigInt(off + p) | BigInt(F_PAGE));
          w.put(Buffer.from([ram.block.length]));
          w.put(Buffer.from(ram.block, "latin1"));
          named = true;
        }
        w.put(page);
      }
      if (got === 0) break;
    }
    w.u64(BigInt(F_EOS));
    if (at.footers) {
      const f = Buffer.allocUnsafe(5);
      f[0] = FOOTER;
      f.writeUInt32BE(at.sectionId, 1);
      w.put(f);
    }
    w.flush();
    for (const c of r.rest()) w.put(c);
    w.flush();
  } finally {
    closeSync(inFd);
    closeSync(ramFd);
    closeSync(outFd);
  }
}

/** `splitRam` or `joinRam` on a worker thread, so a caller's event loop keeps running meanwhile. */
export function inWorker(job: Extract<RamJob, { op: "split" }>): Promise<RamSplitResult>;
export function inWorker(job: Extract<RamJob, { op: "join" }>): Promise<void>;
export function inWorker(job: RamJob): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL("./ram-split-worker.js", import.meta.url), {
      workerData: job,
      // a worker inherits the process's Node flags; `--input-type` (a caller started with `node -e`) breaks a file
      execArgv: process.execArgv.filter((a) => !a.startsWith("--input-type")),
    });
    let settled = false;
    w.once(
      "message",
      (m: { ok: boolean; result?: unknown; unsupported?: boolean; message?: string; code?: string }) => {
        settled = true;
        if (m.ok) return resolve(m.result);
        const e = m.unsupported
          ? new UnsupportedStreamError(m.message)
          : Object.assign(new Error(m.message), { code: m.code });
        reject(e);
      },
    );
    w.once("error", (e) => {
      settled = true;
      reject(e);
    });
    w.once("exit", (code) => {
      if (!settled) reject(new Error(`the RAM ${job.op} worker exited with code ${code}`));
    });
  });
}
