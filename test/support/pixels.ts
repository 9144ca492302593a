/**
 * Pixels for browser tests: a PNG decoder (8-bit RGB/RGBA, non-interlaced: what Chromium writes) and a minimal RFB
 * (VNC) client that reads one full framebuffer in raw encoding. Both check what the browser and the VNC server
 * really produced, so a screenshot test cannot pass on a blank or wrongly sized image.
 */
import net from "node:net";
import { inflateSync } from "node:zlib";

export interface Image {
  width: number;
  height: number;
  /** RGBA, row-major. */
  rgba: Buffer;
}

export function decodePng(png: Buffer): Image {
  if (png.readUInt32BE(0) !== 0x89504e47) throw new Error("not a PNG");
  let off = 8;
  let width = 0;
  let height = 0;
  let colorType = 0;
  const idat: Buffer[] = [];
  while (off < png.length) {
    const len = png.readUInt32BE(off);
    const type = png.toString("latin1", off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      if (data[8] !== 8 || data[12] !== 0) throw new Error("only 8-bit non-interlaced PNGs");
      colorType = data[9] as number;
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    off += 12 + len;
  }
  const channels = colorType === 6 ? 4 : colorType === 2 ? 3 : 0;
  if (!channels) throw new Error(`PNG color type ${colorType} not handled`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(width * height * 4);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)] as number;
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? (line[x - channels] as number) : 0;
      const b = prev[x] as number;
      const c = x >= channels ? (prev[x - channels] as number) : 0;
      let v = line[x] as number;
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      line[x] = v & 0xff;
    }
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 4;
      out[o] = line[x * channels] as number;
      out[o + 1] = line[x * channels + 1] as number;
      out[o + 2] = line[x * channels + 2] as number;
      out[o + 3] = channels === 4 ? (line[x * channels + 3] as number) : 255;
    }
    prev = line;
  }
  return { width, height, rgba: out };
}

/** How many distinct colours the image has (capped): 1 means blank. */
export function distinctColours(img: Image, cap = 64): number {
  const seen = new Set<number>();
  for (let i = 0; i < img.rgba.length && seen.size < cap; i += 4) seen.add(img.rgba.readUInt32BE(i));
  return seen.size;
}

/** The share of pixels whose RGB is exactly (r, g, b). */
export function shareOf(img: Image, r: number, g: number, b: number): number {
  let n = 0;
  for (let i = 0; i < img.rgba.length; i += 4) {
    if (img.rgba[i] === r && img.rgba[i + 1] === g && img.rgba[i + 2] === b) n++;
  }
  return n / (img.width * img.height);
}

/**
 * Connect to an RFB server with no authentication (security type 1), ask for 32-bit true colour, read one full
 * framebuffer in raw encoding. Returns the server's version line and the image.
 */
export async function vncFramebuffer(
  host: string,
  port: number,
  timeoutMs = 60_000,
): Promise<Image & { version: string }> {
  const s = net.connect(port, host);
  let buf = Buffer.alloc(0);
  let want: ((b: Buffer) => void) | null = null;
  let need = 0;
  const failed = new Promise<never>((_, reject) => {
    s.on("error", reject);
    s.on("close", () => reject(new Error("RFB server closed the connection")));
    setTimeout(() => reject(new Error("RFB: timed out")), timeoutMs).unref();
  });
  const pump = () => {
    if (want && buf.length >= need) {
      const w = want;
      const take = buf.subarray(0, need);
      buf = buf.subarray(need);
      want = null;
      w(Buffer.from(take));
    }
  };
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    pump();
  });
  const read = (n: number) =>
    Promise.race([
      new Promise<Buffer>((resolve) => {
        want = resolve;
        need = n;
        pump();
      }),
      failed,
    ]);
  try {
    const version = (await read(12)).toString("latin1");
    if (!/^RFB 003\.00\d\n$/.test(version)) throw new Error(`not an RFB server: ${JSON.stringify(version)}`);
    s.write("RFB 003.008\n");
    const n = (await read(1))[0] as number;
    if (n === 0) throw new Error("RFB server refused the connection");
    const types = [...(await read(n))];
    if (!types.includes(1)) throw new Error(`RFB server wants authentication: security types ${types}`);
    s.write(Buffer.from([1]));
    if ((await read(4)).readUInt32BE(0) !== 0) throw new Error("RFB security handshake failed");
    s.write(Buffer.from([1])); // ClientInit: shared
    const init = await read(24);
    const width = init.readUInt16BE(0);
    const height = init.readUInt16BE(2);
    await read(init.readUInt32BE(20)); // the desktop's name
    // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 8 bits each, red at 16, green at 8, blue at 0
    const pf = Buffer.alloc(20);
    pf[0] = 0;
    pf.set([32, 24, 0, 1], 4);
    pf.writeUInt16BE(255, 8);
    pf.writeUInt16BE(255, 10);
    pf.writeUInt16BE(255, 12);
    pf.set([16, 8, 0], 14);
    s.write(pf);
    const enc = Buffer.alloc(8);
    enc[0] = 2;
    enc.writeUInt16BE(1, 2);
    enc.writeInt32BE(0, 4); // raw only
    s.write(enc);
    const req = Buffer.alloc(10);
    req[0] = 3; // FramebufferUpdateRequest, not incremental, all of it
    req.writeUInt16BE(width, 6);
    req.writeUInt16BE(height, 8);
    s.write(req);
    const rgba = Buffer.alloc(width * height * 4);
    let covered = 0;
    while (covered < width * height) {
      const head = await read(4);
      if (head[0] !== 0) {
        // not a framebuffer update (a bell or colour map): these tests do not expect any
        throw new Error(`RFB: unexpected server message ${head[0]}`);
      }
      const rects = head.readUInt16BE(2);
      for (let i = 0; i < rects; i++) {
        const r = await read(12);
        const [x, y, w, h] = [r.readUInt16BE(0), r.readUInt16BE(2), r.readUInt16BE(4), r.readUInt16BE(6)];
        if (r.readInt32BE(8) !== 0) throw new Error(`RFB: encoding ${r.readInt32BE(8)} not asked for`);
        const px = await read(w * h * 4);
        for (let row = 0; row < h; row++) {
          for (let col = 0; col < w; col++) {
            const src = (row * w + col) * 4;
            const dst = ((y + row) * width + x + col) * 4;
            rgba[dst] = px[src + 2] as number;
            rgba[dst + 1] = px[src + 1] as number;
            rgba[dst + 2] = px[src] as number;
            rgba[dst + 3] = 255;
          }
        }
        covered += w * h;
      }
    }
    return { version: version.trim(), width, height, rgba };
  } finally {
    s.destroy();
  }
}
