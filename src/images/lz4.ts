/**
 * LZ4 "legacy" frames (what `lz4 -l` writes, and how the Linux kernel compresses a bzImage payload with
 * CONFIG_KERNEL_LZ4), decoded in-process: no host `lz4` needed. Block by block (at most 8 MiB out each), every
 * length and offset checked against its buffer.
 */
import { open } from "node:fs/promises";

const LEGACY_MAGIC = 0x184c2102;
const BLOCK_MAX = 8 << 20;
/** LZ4_compressBound(8 MiB): the largest compressed block a valid stream holds. */
const COMPRESSED_MAX = BLOCK_MAX + BLOCK_MAX / 255 + 16;

export class Lz4Error extends Error {}

/** Decode one LZ4 block into `dst`; returns the number of bytes written. */
export function decodeLz4Block(src: Buffer, dst: Buffer): number {
  let ip = 0;
  let op = 0;
  const end = src.length;
  const more = (n: number) => {
    if (ip + n > end) throw new Lz4Error("block ends inside a sequence");
  };
  const extra = (n: number) => {
    let b = 255;
    while (b === 255) {
      more(1);
      b = src[ip++] as number;
      n += b;
    }
    return n;
  };
  while (ip < end) {
    const token = src[ip++] as number;
    let lit = token >> 4;
    if (lit === 15) lit = extra(lit);
    more(lit);
    if (op + lit > dst.length) throw new Lz4Error("block decodes to more than 8 MiB");
    src.copy(dst, op, ip, ip + lit);
    ip += lit;
    op += lit;
    if (ip === end) break; // the last sequence has literals only
    more(2);
    const offset = (src[ip] as number) | ((src[ip + 1] as number) << 8);
    ip += 2;
    if (offset === 0 || offset > op) throw new Lz4Error(`match offset ${offset} outside the output`);
    let len = token & 15;
    if (len === 15) len = extra(len);
    len += 4;
    if (op + len > dst.length) throw new Lz4Error("block decodes to more than 8 MiB");
    if (offset >= len) {
      dst.copy(dst, op, op - offset, op - offset + len);
      op += len;
    } else {
      for (let i = 0; i < len; i++, op++) dst[op] = dst[op - offset] as number;
    }
  }
  return op;
}

/**
 * Decode `length` bytes of a legacy LZ4 stream starting at `offset` in `input`, calling `write` with each decoded
 * block (the buffer is reused: copy or write it before returning). Returns the decoded size.
 */
export async function decodeLz4Legacy(
  input: string,
  offset: number,
  length: number,
  write: (chunk: Buffer) => Promise<void>,
): Promise<number> {
  const fh = await open(input, "r");
  try {
    const word = Buffer.alloc(4);
    const read = async (buf: Buffer, n: number, at: number) => {
      const { bytesRead } = await fh.read(buf, 0, n, at);
      if (bytesRead !== n) throw new Lz4Error("stream ends early");
    };
    let pos = offset;
    const end = offset + length;
    await read(word, 4, pos);
    if (word.readUInt32LE(0) !== LEGACY_MAGIC) throw new Lz4Error("not an LZ4 legacy frame");
    pos += 4;
    const src = Buffer.alloc(COMPRESSED_MAX);
    const dst = Buffer.alloc(BLOCK_MAX);
    let total = 0;
    while (pos < end) {
      if (end - pos < 4) throw new Lz4Error(`${end - pos} stray bytes after the last block`);
      await read(word, 4, pos);
      pos += 4;
      const size = word.readUInt32LE(0);
      if (size === LEGACY_MAGIC) continue; // a concatenated frame
      if (size === 0 || size > COMPRESSED_MAX || pos + size > end) {
        throw new Lz4Error(`block of ${size} bytes at offset ${pos - 4 - offset} does not fit the stream`);
      }
      const block = src.subarray(0, size);
      await read(block, size, pos);
      pos += size;
      const n = decodeLz4Block(block, dst);
      total += n;
      await write(dst.subarray(0, n));
    }
    return total;
  } finally {
    await fh.close();
  }
}
