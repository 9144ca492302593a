/**
 * Moving `.smolmachine` section bytes: compressing with the `zstd` binary, reading a byte range of a pack, and
 * decompressing a section from a hostile file with bounded resources: the stored bytes must be exactly one zstd
 * frame (the zstd binary also decodes gzip, xz and lz4, which a pack never holds), the output stops at the section's
 * declared size (zstd is killed the moment it goes past), zstd's stderr is captured, and nothing is held in memory.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { SmolVMError } from "../errors.js";
import { which } from "../util/run.js";

const CHUNK = 256 << 10;
const STDERR_MAX = 2000;
/** The largest block a zstd frame may hold (Block_Maximum_Size). */
const ZSTD_MAX_BLOCK = 128 << 10;

export function zstdBin(): string {
  const z = which("zstd");
  if (!z) throw new SmolVMError("zstd is needed for .smolmachine files; run 'npx smolvm setup' (package zstd)");
  return z;
}

function captureStderr(stream: NodeJS.ReadableStream): () => string {
  let err = "";
  stream.on("data", (d: Buffer) => {
    if (err.length < STDERR_MAX) err += d.toString("utf8").slice(0, STDERR_MAX - err.length);
  });
  return () => err.trim().replace(/\s+/g, " ");
}

/** Compress `src` into a new file `out` (created with O_EXCL, mode 0600). */
export async function zstdCompress(src: string, out: string): Promise<void> {
  const child = spawn(zstdBin(), ["-q", "-T0", "-3", "-c", "--", src], { stdio: ["ignore", "pipe", "pipe"] });
  const stderr = captureStderr(child.stderr);
  const exited = new Promise<number | null>((resolve) => {
    child.on("error", () => resolve(-1));
    child.on("close", resolve);
  });
  try {
    await pipeline(child.stdout, createWriteStream(out, { flags: "wx", mode: 0o600 }));
  } catch (e) {
    child.kill("SIGKILL");
    await exited;
    throw e;
  }
  const code = await exited;
  if (code !== 0) throw new SmolVMError(`zstd failed on ${src}: ${stderr()}`);
}

/** The bytes [start, start+length) of an open file, in chunks; `short()` is thrown if the file ends first. */
export async function* readRange(
  h: FileHandle,
  start: number,
  length: number,
  short: () => Error,
): AsyncGenerator<Buffer> {
  let pos = start;
  const end = start + length;
  while (pos < end) {
    const n = Math.min(CHUNK, end - pos);
    const buf = Buffer.allocUnsafe(n);
    const { bytesRead } = await h.read(buf, 0, n, pos);
    if (bytesRead === 0) throw short();
    pos += bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}

export async function sha256Range(h: FileHandle, start: number, length: number, short: () => Error): Promise<string> {
  const hash = createHash("sha256");
  for await (const b of readRange(h, start, length, short)) hash.update(b);
  return hash.digest("hex");
}

type Fail = (why: string) => Error;
type FrameState = "head" | "headRest" | "blockHeader" | "body" | "checksum" | "done";

/**
 * Passes bytes through while checking they are exactly one zstd frame (RFC 8878) and nothing after it; a declared
 * content size in the frame header must equal the section's size.
 */
export class ZstdFrameCheck extends Transform {
  private state: FrameState = "head";
  private readonly acc = Buffer.alloc(16);
  private got = 0;
  private need = 5; // magic + frame header descriptor
  private skip = 0;
  private last = false;
  private checksum = false;
  private fcsBytes = 0;
  private singleSegment = false;

  constructor(
    private readonly size: number,
    private readonly fail: Fail,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.scan(chunk);
      cb(null, chunk);
    } catch (e) {
      cb(e as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    cb(this.state === "done" ? null : this.fail("bad compression (the zstd frame is truncated)"));
  }

  private scan(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.state === "done") throw this.fail("bad compression (data after the zstd frame)");
      if (this.state === "body") {
        const n = Math.min(this.skip, chunk.length - i);
        i += n;
        this.skip -= n;
        if (this.skip === 0) this.endBlock();
        continue;
      }
      const n = Math.min(this.need - this.got, chunk.length - i);
      chunk.copy(this.acc, this.got, i, i + n);
      this.got += n;
      i += n;
      if (this.got === this.need) this.field();
    }
  }

  private expect(state: FrameState, need: number): void {
    this.state = state;
    this.need = need;
    this.got = 0;
  }

  private endBlock(): void {
    if (!this.last) this.expect("blockHeader", 3);
    else if (this.checksum) this.expect("checksum", 4);
    else this.expect("done", 0);
  }

  private field(): void {
    const a = this.acc;
    switch (this.state) {
      case "head": {
        if (a.readUInt32LE(0) !== 0xfd2fb528) throw this.fail("bad compression (not a zstd frame)");
        const fhd = a[4] as number;
        if (fhd & 0x08) throw this.fail("bad compression (reserved bit set in the zstd frame header)");
        const fcsFlag = fhd >> 6;
        this.singleSegment = (fhd & 0x20) !== 0;
        this.checksum = (fhd & 0x04) !== 0;
        this.fcsBytes = [this.singleSegment ? 1 : 0, 2, 4, 8][fcsFlag] as number;
        const dictBytes = [0, 1, 2, 4][fhd & 3] as number;
        const rest = (this.singleSegment ? 0 : 1) + dictBytes + this.fcsBytes;
        if (rest === 0) this.expect("blockHeader", 3);
        else this.expect("headRest", rest);
        return;
      }
      case "headRest": {
        if (this.fcsBytes > 0) {
          const at = this.need - this.fcsBytes;
          const fcs =
            this.fcsBytes === 1
              ? a.readUInt8(at)
              : this.fcsBytes === 2
                ? a.readUInt16LE(at) + 256
                : this.fcsBytes === 4
                  ? a.readUInt32LE(at)
                  : Number(a.readBigUInt64LE(at));
          if (fcs > this.size) throw this.fail(`decompresses to ${fcs} bytes, larger than declared (${this.size})`);
          if (fcs < this.size) throw this.fail(`did not decompress to its size (${fcs} bytes, not ${this.size})`);
        }
        this.expect("blockHeader", 3);
        return;
      }
      case "blockHeader": {
        const v = a.readUIntLE(0, 3);
        this.last = (v & 1) === 1;
        const type = (v >> 1) & 3;
        const blockSize = v >>> 3;
        if (type === 3) throw this.fail("bad compression (reserved zstd block type)");
        if (blockSize > ZSTD_MAX_BLOCK) throw this.fail("bad compression (zstd block too large)");
        this.skip = type === 1 ? 1 : blockSize;
        if (this.skip === 0) this.endBlock();
        else this.expect("body", 0);
        return;
      }
      case "checksum":
        this.expect("done", 0);
        return;
      default:
        return;
    }
  }
}

/**
 * Decompress one zstd frame from `source` into a new file `dest` (O_EXCL, 0600) that must come out at exactly
 * `size` bytes. Never writes more than `size` bytes; every problem with the bytes is thrown as `fail(reason)`.
 */
export async function unzstdToFile(
  source: AsyncIterable<Buffer> | Iterable<Buffer>,
  dest: string,
  size: number,
  fail: Fail,
): Promise<void> {
  const child = spawn(zstdBin(), ["-d", "-q", "-c", "--memory=128MB"], { stdio: ["pipe", "pipe", "pipe"] });
  const exited = new Promise<number | null>((resolve) => {
    child.on("error", () => resolve(-1));
    child.on("close", (code) => resolve(code));
  });
  const stderr = captureStderr(child.stderr);
  child.stdin.on("error", () => {}); // EPIPE when zstd stops early; the exit code tells
  let failure: Error | null = null;
  const failing: Fail = (why) => {
    failure ??= fail(why);
    child.kill("SIGKILL");
    return failure;
  };
  let written = 0;
  const limit = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (written + chunk.length > size) {
        cb(failing(`larger than declared: it decompresses to more than ${size} bytes`));
        return;
      }
      written += chunk.length;
      cb(null, chunk);
    },
  });
  const input = pipeline(source, new ZstdFrameCheck(size, failing), child.stdin).catch((e: unknown) => {
    child.kill("SIGKILL");
    throw e;
  });
  const output = pipeline(child.stdout, limit, createWriteStream(dest, { flags: "wx", mode: 0o600 })).catch(
    (e: unknown) => {
      child.kill("SIGKILL");
      throw e;
    },
  );
  const [inp, out] = await Promise.allSettled([input, output]);
  const code = await exited;
  if (failure) throw failure;
  if (inp.status === "rejected" && inp.reason instanceof SmolVMError) throw inp.reason;
  if (code !== 0) throw fail(`bad compression${stderr() ? ` (zstd: ${stderr()})` : ""}`);
  if (out.status === "rejected") {
    const c = (out.reason as NodeJS.ErrnoException).code;
    if (c === "EEXIST" || c === "ELOOP") throw fail(`its output ${dest} already exists`);
    throw out.reason;
  }
  if (inp.status === "rejected") throw fail(`bad compression (${(inp.reason as Error).message})`);
  if (written !== size) throw fail(`did not decompress to its size (${written} bytes, not ${size})`);
}
