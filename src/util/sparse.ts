/**
 * Writing a byte stream to a file without materialising runs of zeros: every aligned 4 KiB block that is entirely
 * zero is skipped (left as a hole), and the file is given its full length at the end. A 2 GiB file of zeros sent by a
 * guest then takes (almost) no space on the host, while reading back exactly the same bytes.
 */
import { ftruncateSync, writeSync } from "node:fs";

/** The unit of hole detection: a block is skipped only if all of it is zero and it starts at a multiple of this. */
export const SPARSE_BLOCK = 4096;
const ZERO = Buffer.alloc(SPARSE_BLOCK);

function isZero(buf: Buffer, start: number, end: number): boolean {
  return ZERO.compare(buf, start, end, 0, end - start) === 0;
}

/**
 * Sequential writer that turns aligned all-zero 4 KiB blocks into holes. Chunks may have any size and alignment:
 * a partial block is held back (at most 4 KiB) until it is complete or `finish()` is called.
 *
 * The file is truncated to 0 when the writer is created (a skipped block must read back as zeros), and writes go to
 * explicit positions, so the fd's own offset is neither used nor moved. The caller keeps ownership of the fd.
 */
export class SparseWriter {
  /** Bytes accepted so far (written, skipped or held back). */
  private pos = 0;
  /** The block starting at `pos - tailLen` (always a multiple of SPARSE_BLOCK), not yet complete. */
  private readonly tail = Buffer.alloc(SPARSE_BLOCK);
  private tailLen = 0;
  private done = false;

  constructor(private readonly fd: number) {
    ftruncateSync(fd, 0);
  }

  /** The length of the file once `finish()` is called: every byte passed to `write` so far. */
  get position(): number {
    return this.pos;
  }

  write(chunk: Buffer): void {
    if (this.done) throw new Error("SparseWriter: write after finish");
    let off = 0;
    if (this.tailLen > 0) {
      const take = Math.min(SPARSE_BLOCK - this.tailLen, chunk.length);
      chunk.copy(this.tail, this.tailLen, 0, take);
      this.tailLen += take;
      this.pos += take;
      off = take;
      if (this.tailLen < SPARSE_BLOCK) return;
      this.flush(this.tail, 0, SPARSE_BLOCK, this.pos - SPARSE_BLOCK);
      this.tailLen = 0;
    }
    // `pos` is block-aligned here: whole blocks go straight from the chunk, the rest waits in `tail`
    const whole = off + Math.floor((chunk.length - off) / SPARSE_BLOCK) * SPARSE_BLOCK;
    if (whole > off) {
      this.flush(chunk, off, whole, this.pos);
      this.pos += whole - off;
    }
    if (whole < chunk.length) {
      this.tailLen = chunk.copy(this.tail, 0, whole);
      this.pos += this.tailLen;
    }
  }

  /** Write the held-back partial block (unless it is all zeros) and set the file's length to `position`. */
  finish(): void {
    if (this.done) return;
    this.done = true;
    if (this.tailLen > 0) this.flush(this.tail, 0, this.tailLen, this.pos - this.tailLen);
    this.tailLen = 0;
    ftruncateSync(this.fd, this.pos);
  }

  /** Write buf[start, end) at file offset `at`, skipping all-zero blocks and coalescing the others into runs. */
  private flush(buf: Buffer, start: number, end: number, at: number): void {
    let run = -1; // start of the current run of non-zero blocks in buf, or -1
    for (let s = start; s < end; s += SPARSE_BLOCK) {
      const e = Math.min(s + SPARSE_BLOCK, end);
      if (isZero(buf, s, e)) {
        if (run >= 0) this.writeAll(buf, run, s, at + (run - start));
        run = -1;
      } else if (run < 0) run = s;
    }
    if (run >= 0) this.writeAll(buf, run, end, at + (run - start));
  }

  private writeAll(buf: Buffer, start: number, end: number, at: number): void {
    while (start < end) {
      const n = writeSync(this.fd, buf, start, end - start, at);
      if (n <= 0) throw new Error("SparseWriter: write made no progress");
      start += n;
      at += n;
    }
  }
}
