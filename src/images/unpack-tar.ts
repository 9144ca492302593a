/**
 * Reading a layer's tar with tar-stream, one entry at a time, plus what tar-stream leaves out of headers: PAX
 * owner/mtime overrides and binary-safe PAX xattrs.
 */
import type { Readable } from "node:stream";
import { type Extract, extract, type Header } from "tar-stream";
import { ImageError } from "../errors.js";

export type EntryHandler = (
  h: Header,
  data: AsyncIterable<unknown>,
  xattrs: Map<string, Buffer> | null,
) => Promise<void>;

/**
 * Parse a tar stream and hand each entry to `onEntry`, waiting for it before the next one. Errors become
 * ImageErrors naming the layer and the entry (or the entry after which the tar broke).
 */
export async function readTar(tar: Readable, label: string, onEntry: EntryHandler): Promise<void> {
  // allowUnknownFormat: take old v7 headers too (the checksum is still verified); not in the typings.
  const ex = extract({ allowUnknownFormat: true } as Parameters<typeof extract>[0]);
  let paxXattrs: Map<string, Buffer> | null = null;
  capturePaxXattrs(ex, (m) => {
    paxXattrs = m;
  });
  let failure: Error | null = null;
  let lastEntry = "";
  ex.on("entry", (h, stream, next) => {
    const xattrs = paxXattrs;
    paxXattrs = null;
    lastEntry = h.name;
    onEntry(h, stream, xattrs).then(
      () => next(),
      (e) => {
        failure ??= new ImageError(`layer ${label}: entry ${JSON.stringify(h.name)}: ${errText(e)}`, { cause: e });
        next(failure as Error);
      },
    );
  });
  const done = new Promise<void>((resolve, reject) => {
    const fail = (e: unknown) => {
      const where = lastEntry ? ` after entry ${JSON.stringify(lastEntry)}` : "";
      reject(failure ?? new ImageError(`layer ${label}${where}: ${errText(e)}`));
    };
    ex.on("finish", resolve);
    ex.on("error", fail);
    ex.on("close", () => fail(new Error("the tar stream ended early")));
  });
  done.catch(() => {}); // awaited below; no unhandled rejection meanwhile
  // Fed with 'data' events: an async iterator would concatenate buffered chunks (a copy of everything).
  tar.on("data", (chunk: Buffer) => {
    if (ex.destroyed) return;
    if (!ex.write(chunk)) {
      tar.pause();
      drained(ex).then(() => tar.resume());
    }
  });
  tar.on("end", () => {
    if (!ex.destroyed) ex.end(undefined);
  });
  tar.on("error", (e) => ex.destroy(e)); // reading or decompressing failed
  await done;
}

function drained(ex: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      ex.off("drain", done);
      ex.off("close", done);
      resolve();
    };
    ex.on("drain", done);
    ex.on("close", done);
  });
}

export function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export interface Meta {
  mode: number; // permission bits with setuid/setgid/sticky, no type bits
  uid: number;
  gid: number;
  mtime: number; // seconds
}

const PAX_XATTR = "SCHILY.xattr.";
/** Largest xattr value kept (ext4 with ea_inode takes 64 KiB; a capability is 20 bytes). */
export const MAX_XATTR_VALUE = 64 << 10;
const MAX_ID = 0xfffffffe; // (uid_t)-1 means "no change" to chown

/** Owner, mode and mtime of an entry; PAX records win over the ustar fields (large ids, sub-second times). */
export function headerMeta(h: Header): Meta {
  const pax = (h as { pax?: Record<string, string> | null }).pax ?? null;
  const num = (key: string, fallback: number): number => {
    const v = pax?.[key];
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new ImageError(`bad PAX ${key} ${JSON.stringify(v)}`);
    return n;
  };
  const id = (key: "uid" | "gid"): number => {
    const n = num(key, h[key] ?? 0);
    if (!Number.isInteger(n) || n < 0 || n > MAX_ID) throw new ImageError(`bad ${key} ${n}`);
    return n;
  };
  const ustarTime = (h.mtime?.getTime() ?? 0) / 1000;
  const mtime = num("mtime", Number.isFinite(ustarTime) ? ustarTime : 0);
  return { mode: (h.mode ?? 0o644) & 0o7777, uid: id("uid"), gid: id("gid"), mtime };
}

/**
 * tar-stream decodes PAX values as UTF-8, which mangles binary xattrs such as security.capability. This hooks its
 * PAX decoding to also parse the raw record (binary-safe) and hand over the SCHILY.xattr records, just before the
 * entry they belong to is emitted. If a future tar-stream renames the hook, entryXattrs falls back to the decoded
 * strings (right for textual values).
 */
export function capturePaxXattrs(ex: Extract, onPax: (xattrs: Map<string, Buffer>) => void): void {
  const inner = ex as unknown as {
    _decodeLongHeader?: (buf: Buffer) => unknown;
    _header?: { type?: string } | null;
  };
  const original = inner._decodeLongHeader;
  if (typeof original !== "function") return;
  inner._decodeLongHeader = function (this: typeof inner, buf: Buffer) {
    if (this._header?.type === "pax-header") onPax(parsePaxXattrs(buf));
    return original.call(this, buf);
  };
}

/** PAX records are "LEN KEY=VALUE\n" with LEN counting the whole record in bytes. */
export function parsePaxXattrs(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let at = 0;
  while (at < buf.length) {
    const space = buf.indexOf(0x20, at);
    if (space < 0) break;
    const len = Number.parseInt(buf.toString("latin1", at, space), 10);
    if (!(len > 0) || at + len > buf.length) break;
    const record = buf.subarray(space + 1, at + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    if (eq > 0) {
      const key = record.toString("utf8", 0, eq);
      if (key.startsWith(PAX_XATTR)) out.set(key.slice(PAX_XATTR.length), Buffer.from(record.subarray(eq + 1)));
    }
    at += len;
  }
  return out;
}

/** The entry's xattrs worth keeping: security.capability, user.* and trusted.* (others are dropped). */
export function entryXattrs(h: Header, raw: Map<string, Buffer> | null): Map<string, Buffer> | null {
  let all = raw;
  if (!all) {
    const pax = (h as { pax?: Record<string, string> | null }).pax;
    if (!pax) return null;
    all = new Map();
    for (const [k, v] of Object.entries(pax)) {
      if (k.startsWith(PAX_XATTR)) all.set(k.slice(PAX_XATTR.length), Buffer.from(v, "utf8"));
    }
  }
  let out: Map<string, Buffer> | null = null;
  for (const [name, value] of all) {
    if (!keepXattr(name)) continue;
    if (value.length > MAX_XATTR_VALUE) throw new ImageError(`xattr ${name} larger than ${MAX_XATTR_VALUE} bytes`);
    out ??= new Map();
    out.set(name, value);
  }
  return out;
}

function keepXattr(name: string): boolean {
  if (name === "security.capability") return true;
  // Printable ASCII without quotes or backslashes: the name goes into a debugfs script.
  return /^(user|trusted)\.[\x21\x23-\x5b\x5d-\x7e]{1,240}$/.test(name);
}
