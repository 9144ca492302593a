/**
 * Turn a layer (a file or a stream; gzip, zstd or plain tar, told apart by magic bytes) into a stream of tar bytes.
 * zstd is decoded by fzstd (pure JS; Node 20 has no zstd in zlib). A hostile zstd frame can ask for a window of up
 * to 2 GiB, which fzstd would allocate, so every frame header is checked first against the zstd CLI's own default
 * limit (128 MiB, `--memory`).
 */
import { createReadStream } from "node:fs";
import { Readable, Transform, type TransformCallback } from "node:stream";
import { createGunzip } from "node:zlib";
import { Decompress } from "fzstd";

export const MAX_ZSTD_WINDOW = 128 << 20;

export type LayerFormat = "gzip" | "zstd" | "tar";

export function detectFormat(head: Uint8Array): LayerFormat {
  if (head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return "zstd";
  return "tar";
}

/** Open a layer and return its decompressed tar bytes and the format found. */
export async function openLayer(
  input: string | NodeJS.ReadableStream,
): Promise<{ format: LayerFormat; tar: Readable; source: Readable }> {
  const source =
    typeof input === "string"
      ? createReadStream(input, { highWaterMark: 1 << 20 })
      : input instanceof Readable
        ? input
        : new Readable().wrap(input);
  const it = source[Symbol.asyncIterator]();
  // Read until the 4 magic bytes are in (or the stream ends), then put those chunks back in front.
  const head: Buffer[] = [];
  let got = 0;
  while (got < 4) {
    const r = await it.next();
    if (r.done) break;
    const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
    head.push(chunk);
    got += chunk.length;
  }
  const format = detectFormat(Buffer.concat(head));
  const raw = Readable.from(
    (async function* () {
      yield* head;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield r.value as Buffer;
      }
    })(),
    { objectMode: false },
  );
  if (format === "tar") return { format, tar: raw, source };
  const dec = format === "gzip" ? createGunzip({ chunkSize: 256 << 10 }) : new ZstdDecoder();
  raw.on("error", (e) => dec.destroy(e));
  return { format, tar: raw.pipe(dec), source };
}

/** fzstd as a Transform, with the frame scanner below refusing oversized windows before fzstd allocates them. */
class ZstdDecoder extends Transform {
  private readonly scanner = new ZstdFrameScanner(MAX_ZSTD_WINDOW);
  private readonly dec = new Decompress((chunk) => {
    // In streaming mode fzstd allocates each block's output afresh (it keeps its window separately), so the
    // bytes can be handed on without a copy.
    if (chunk.length > 0) this.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
  });

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.scanner.scan(chunk);
      this.dec.push(chunk);
      cb();
    } catch (e) {
      cb(zstdError(e));
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.dec.push(new Uint8Array(0), true);
      cb();
    } catch (e) {
      cb(zstdError(e));
    }
  }
}

function zstdError(e: unknown): Error {
  return new Error(`zstd: ${e instanceof Error ? e.message : String(e)}`);
}

/**
 * Walks the zstd frame structure (frame headers, block headers, checksums) without decoding, to check each
 * frame's window size before the decoder sees it. Skippable frames are skipped.
 */
export class ZstdFrameScanner {
  private state: "magic" | "frame" | "skippable" | "block" | "skip" = "magic";
  private need = 4; // header bytes wanted in `hdr` for the current state
  private hdr = Buffer.alloc(18); // largest frame header: 4 magic + 1 + 1 + 4 dict id + 8 content size
  private have = 0;
  private skip = 0; // payload bytes to pass over before the next header
  private afterSkip: "magic" | "block" = "magic";
  private checksum = false;

  constructor(private readonly maxWindow: number) {}

  scan(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        if (this.skip === 0) this.enter(this.afterSkip);
        continue;
      }
      const n = Math.min(this.need - this.have, chunk.length - i);
      this.hdr.set(chunk.subarray(i, i + n), this.have);
      this.have += n;
      i += n;
      if (this.have === this.need) this.header();
    }
  }

  private enter(state: "magic" | "block"): void {
    this.state = state;
    this.need = state === "magic" ? 4 : 3;
    this.have = 0;
  }

  private skipThen(bytes: number, then: "magic" | "block"): void {
    this.afterSkip = then;
    this.skip = bytes;
    this.state = "skip";
    if (bytes === 0) this.enter(then);
  }

  /** `hdr` holds the `need` bytes the current state asked for. */
  private header(): void {
    const h = this.hdr;
    if (this.state === "magic") {
      const magic = h.readUInt32LE(0);
      if (magic === 0xfd2fb528) {
        this.state = "frame";
        this.need = 5;
      } else if ((magic & 0xfffffff0) === 0x184d2a50) {
        this.state = "skippable";
        this.need = 8; // magic + 4-byte length
      } else throw new Error("bad frame magic");
      return;
    }
    if (this.state === "skippable") {
      this.skipThen(h.readUInt32LE(4), "magic");
      return;
    }
    if (this.state === "frame") {
      const fhd = h[4] as number;
      const single = (fhd >> 5) & 1;
      const fcsFlag = fhd >> 6;
      const dictBytes = [0, 1, 2, 4][fhd & 3] as number;
      const fcsBytes = fcsFlag === 0 ? single : 1 << fcsFlag;
      const total = 5 + (single ? 0 : 1) + dictBytes + fcsBytes;
      if (this.need < total) {
        this.need = total;
        return;
      }
      let window: number;
      if (!single) {
        const wd = h[5] as number;
        const base = 2 ** (10 + (wd >> 3));
        window = base + (base / 8) * (wd & 7);
      } else {
        // Single segment: the window is the content size (little-endian, 1/2/4/8 bytes; 2-byte sizes are +256).
        let size = 0;
        const at = 5 + dictBytes;
        for (let k = fcsBytes - 1; k >= 0; k--) size = size * 256 + (h[at + k] as number);
        window = fcsBytes === 2 ? size + 256 : size;
      }
      if (window > this.maxWindow) {
        throw new Error(`frame window of ${window} bytes is over the ${this.maxWindow}-byte limit`);
      }
      this.checksum = ((fhd >> 2) & 1) === 1;
      this.enter("block");
      return;
    }
    // Block header: bit 0 last block, bits 1-2 type (raw, RLE, compressed, reserved), bits 3-23 size.
    const v = (h[0] as number) | ((h[1] as number) << 8) | ((h[2] as number) << 16);
    const last = v & 1;
    const type = (v >> 1) & 3;
    if (type === 3) throw new Error("reserved block type");
    const payload = type === 1 ? 1 : v >>> 3;
    if (last) {
      this.skipThen(payload + (this.checksum ? 4 : 0), "magic");
    } else {
      this.skipThen(payload, "block");
    }
  }
}
