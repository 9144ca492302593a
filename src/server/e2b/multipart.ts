/**
 * A streaming `multipart/form-data` reader with bounded memory: part headers up to 16 KiB, and body data handed on
 * as it arrives (never more than one input chunk plus the boundary held). The consumer pulls events, so a slow
 * consumer slows the upload instead of buffering it.
 */
import { E2bError } from "./errors.js";

export type MultipartEvent =
  | { type: "part"; name: string | null; filename: string | null; contentType: string | null }
  | { type: "data"; chunk: Buffer }
  | { type: "end" };

const MAX_HEADER = 16 << 10;
const CRLF = Buffer.from("\r\n");
const HEADER_END = Buffer.from("\r\n\r\n");

/** The boundary of a `multipart/form-data; boundary=...` content type, or null. */
export function boundaryOf(contentType: string | undefined): string | null {
  if (!contentType || !/^multipart\/form-data\s*;/i.test(contentType)) return null;
  const m = /;\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))/i.exec(contentType);
  return m ? (m[1] ?? m[2] ?? null) : null;
}

function parseHeaders(raw: string): Extract<MultipartEvent, { type: "part" }> {
  let name: string | null = null;
  let filename: string | null = null;
  let contentType: string | null = null;
  for (const line of raw.split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const key = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (key === "content-type") contentType = value;
    if (key !== "content-disposition") continue;
    for (const m of value.matchAll(/;\s*([A-Za-z*]+)=(?:"((?:[^"\\]|\\.)*)"|([^;]*))/g)) {
      const param = (m[1] ?? "").toLowerCase();
      const v = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : (m[3] ?? "").trim();
      if (param === "name") name = v;
      else if (param === "filename") filename = v;
      else if (param === "filename*") {
        const star = /^[^']*'[^']*'(.*)$/.exec(v);
        try {
          filename = decodeURIComponent(star?.[1] ?? v);
        } catch {
          filename = v;
        }
      }
    }
  }
  return { type: "part", name, filename, contentType };
}

/** The events of a multipart body. Throws E2bError 400 on malformed input. */
export async function* readMultipart(body: AsyncIterable<Buffer>, boundary: string): AsyncGenerator<MultipartEvent> {
  const opening = Buffer.from(`--${boundary}`);
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  let buf: Buffer = Buffer.alloc(0);
  let state: "preamble" | "after-boundary" | "headers" | "body" | "done" = "preamble";
  const input = body[Symbol.asyncIterator]();
  let ended = false;
  const more = async (): Promise<boolean> => {
    if (ended) return false;
    const r = await input.next();
    if (r.done) {
      ended = true;
      return false;
    }
    const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    return true;
  };
  for (;;) {
    if (state === "preamble") {
      // the body starts with the boundary (a preamble before it is allowed and skipped)
      const at = buf.indexOf(opening);
      if (at >= 0) {
        buf = buf.subarray(at + opening.length);
        state = "after-boundary";
        continue;
      }
      if (buf.length > MAX_HEADER) throw new E2bError(400, "multipart: no boundary found");
    } else if (state === "after-boundary") {
      if (buf.length >= 2) {
        if (buf[0] === 0x2d && buf[1] === 0x2d) {
          state = "done";
          return;
        }
        const crlf = buf.indexOf(CRLF);
        if (crlf < 0 && buf.length > 256) throw new E2bError(400, "multipart: malformed boundary line");
        if (crlf >= 0) {
          buf = buf.subarray(crlf + 2);
          state = "headers";
          continue;
        }
      }
    } else if (state === "headers") {
      const end = buf.indexOf(HEADER_END);
      if (end >= 0) {
        yield parseHeaders(buf.subarray(0, end).toString("latin1"));
        buf = buf.subarray(end + 4);
        state = "body";
        continue;
      }
      if (buf.length > MAX_HEADER) throw new E2bError(400, "multipart: part headers too large");
    } else if (state === "body") {
      const at = buf.indexOf(delimiter);
      if (at >= 0) {
        if (at > 0) yield { type: "data", chunk: Buffer.from(buf.subarray(0, at)) };
        yield { type: "end" };
        buf = buf.subarray(at + delimiter.length);
        state = "after-boundary";
        continue;
      }
      // keep what could be the start of a delimiter; hand on the rest
      const safe = buf.length - (delimiter.length - 1);
      if (safe > 0) {
        yield { type: "data", chunk: Buffer.from(buf.subarray(0, safe)) };
        buf = buf.subarray(safe);
      }
    } else return;
    if (!(await more())) throw new E2bError(400, "multipart: body ended early");
  }
}
