/**
 * The SmolVM guest protocol framing (docs/PROTOCOL.md), host side.
 * frame = u32 length (big-endian, = 5 + payload bytes) | u8 type | u32 stream id | payload (<= 64 KiB)
 */
import { AgentError } from "../errors.js";

export const PROTOCOL_VERSION = 4;
export const HEADER_BYTES = 9;
export const MAX_PAYLOAD = 65536;
/** Unacknowledged stdin bytes the host may have in flight per stream (the agent acknowledges with WINDOW). */
export const STDIN_WINDOW = 1 << 20;
/**
 * Output bytes the agent may send per stream before the host acknowledges them (with WINDOW, as it consumes them):
 * a consumer that stops reading (a full pipe, a slow disk) stops the command, never grows the host's memory.
 */
export const OUTPUT_WINDOW = 2 << 20;

export const T = {
  PING: 0x01,
  PONG: 0x02,
  HELLO: 0x03,
  WELCOME: 0x04,
  EXEC: 0x10,
  STARTED: 0x11,
  STDIN: 0x12,
  SIGNAL: 0x13,
  STDOUT: 0x14,
  STDERR: 0x15,
  EXIT: 0x16,
  RESIZE: 0x17,
  DONE: 0x18,
  WINDOW: 0x19,
  ERROR: 0x1f,
  RELEASE: 0x20,
  SHUTDOWN: 0x30,
  SYNC: 0x31,
  NETCFG: 0x32,
  ENV_SET: 0x40,
  ENV_UNSET: 0x41,
  ENV_LIST: 0x42,
  FREAD: 0x50,
  FWRITE: 0x51,
  FSTAT: 0x52,
  FLIST: 0x53,
  FMKDIR: 0x54,
  FREMOVE: 0x55,
  FRENAME: 0x56,
  PS: 0x60,
  CONNECT: 0x61,
  TCPCONNECT: 0x62,
  PKILL: 0x63,
} as const;

/** Field tags of EXEC payloads. */
export const F = { ARG: 1, SHELL: 2, ENV: 3, CWD: 4, STDIN: 5, USER: 6, PTY: 7, KEEP: 8, OUTWIN: 9 } as const;
/** Field tags of STARTED payloads (exec, connect, file read). */
export const ST = { PID: 1, OUTWIN: 2, SIZE: 3, TYPE: 4 } as const;
/** Field tags of process list entries (PS) and CONNECT. */
export const P = { PID: 1, CMD: 2, RUNNING: 3, EXIT: 4, ATTACHED: 5, KEEP: 6, OUTWIN: 7, SIGNAL: 8 } as const;
/** Field tags of file operation requests, and their flags. */
export const FF = { PATH: 1, PATH2: 2, MODE: 3, FLAGS: 4, DEPTH: 5, OUTWIN: 6 } as const;
export const FL = { PARENTS: 1, RECURSIVE: 2, REGULAR: 4 } as const;
/** Field tags of stat / list entries. */
export const E = { PATH: 1, TYPE: 2, SIZE: 3, MODE: 4, MTIME: 5, LINK: 6 } as const;
/** Field tags of NETCFG requests (strings, except MTU: u32; DOWN: any value). */
export const NC = { ADDR: 1, GATEWAY: 2, MAC: 3, DNS: 4, MTU: 5, DOWN: 6, NEIGH: 7 } as const;
/** Field tags of TCPCONNECT requests (PORT and OUTWIN: u32; HOST: an IPv4 literal, default 127.0.0.1). */
export const TC = { PORT: 1, HOST: 2, OUTWIN: 3 } as const;
/** Field tags of ERROR payloads. */
export const FE = { CODE: 1, MSG: 2 } as const;

export interface Frame {
  type: number;
  stream: number;
  payload: Buffer;
}

export function encodeFrame(type: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const buf = Buffer.allocUnsafe(HEADER_BYTES + payload.length);
  buf.writeUInt32BE(payload.length + 5, 0);
  buf.writeUInt8(type, 4);
  buf.writeUInt32BE(stream >>> 0, 5);
  payload.copy(buf, HEADER_BYTES);
  return buf;
}

export type Field = [tag: number, value: Buffer | string];

export function encodeFields(fields: Field[]): Buffer {
  const parts: Buffer[] = [];
  for (const [tag, value] of fields) {
    const v = typeof value === "string" ? Buffer.from(value, "utf8") : value;
    const h = Buffer.allocUnsafe(5);
    h.writeUInt8(tag, 0);
    h.writeUInt32BE(v.length, 1);
    parts.push(h, v);
  }
  return Buffer.concat(parts);
}

/** Decode a field list; throws `AgentError` on a field that runs past the payload. */
export function decodeFields(payload: Buffer): Field[] {
  const out: Field[] = [];
  let off = 0;
  while (off < payload.length) {
    if (payload.length - off < 5) throw new AgentError("malformed field header");
    const tag = payload.readUInt8(off);
    const len = payload.readUInt32BE(off + 1);
    if (len > payload.length - off - 5) throw new AgentError("field length runs past the payload");
    out.push([tag, payload.subarray(off + 5, off + 5 + len)]);
    off += 5 + len;
  }
  return out;
}

export function fieldU32(fields: Field[], tag: number): number | undefined {
  const f = fields.find(([t]) => t === tag);
  if (!f || !Buffer.isBuffer(f[1]) || f[1].length !== 4) return undefined;
  return f[1].readUInt32BE(0);
}

export function fieldU64(fields: Field[], tag: number): number | undefined {
  const f = fields.find(([t]) => t === tag);
  if (!f || !Buffer.isBuffer(f[1]) || f[1].length !== 8) return undefined;
  return Number(f[1].readBigUInt64BE(0));
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

export function fieldString(fields: Field[], tag: number): string | undefined {
  const f = fields.find(([t]) => t === tag);
  return f ? f[1].toString() : undefined;
}

/**
 * Incremental decoder. Holds at most one partial frame (<= 64 KiB + header), so memory stays bounded
 * whatever the peer sends; a length outside the protocol's range throws `AgentError`.
 */
export class FrameDecoder {
  /** Received bytes not yet decoded, joined only once a whole frame (or a length field) is there. */
  private parts: Buffer[] = [];
  private len = 0;
  /** Bytes needed before anything can be decoded: the length field, then the whole frame. */
  private need = 4;

  push(chunk: Buffer): Frame[] {
    this.parts.push(chunk);
    this.len += chunk.length;
    if (this.len < this.need) return [];
    const buf = this.parts.length === 1 ? (this.parts[0] as Buffer) : Buffer.concat(this.parts, this.len);
    const frames: Frame[] = [];
    let off = 0;
    this.need = 4;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (len < 5 || len > MAX_PAYLOAD + 5) {
        this.parts = [];
        this.len = 0;
        throw new AgentError(`invalid frame length ${len} from the agent`);
      }
      if (buf.length - off < 4 + len) {
        this.need = 4 + len;
        break;
      }
      frames.push({
        type: buf.readUInt8(off + 4),
        stream: buf.readUInt32BE(off + 5),
        // copy: the frame must not pin the (possibly large) read buffer
        payload: Buffer.from(buf.subarray(off + HEADER_BYTES, off + 4 + len)),
      });
      off += 4 + len;
    }
    const rest = off === buf.length ? null : Buffer.from(buf.subarray(off));
    this.parts = rest ? [rest] : [];
    this.len = rest ? rest.length : 0;
    return frames;
  }

  get pendingBytes(): number {
    return this.len;
  }
}
