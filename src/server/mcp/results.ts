/**
 * Tool results: structured content plus a text rendering, and errors as `isError` results whose message names the
 * argument at fault (in the tool's own argument names), never as protocol errors.
 */
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { ConfigError, FileNotFoundError, FileSystemError, VMNotFoundError } from "../../errors.js";

export function ok(structured: Record<string, unknown>, text: string): CallToolResult {
  return { content: [{ type: "text", text }], structuredContent: structured };
}

export function fail(message: string): CallToolResult {
  return { content: [{ type: "text", text: message }], isError: true };
}

/** SDK field names (as `ConfigError.field` gives them) → this tool's argument names. */
export type FieldNames = Record<string, string>;

/** Rename a ConfigError's field (or its first path segment: `labels.x`, `network.internet`) to the tool's argument. */
function argumentName(field: string, names: FieldNames): string {
  if (names[field]) return names[field];
  const dot = field.indexOf(".");
  if (dot > 0 && names[field.slice(0, dot)]) return `${names[field.slice(0, dot)]}${field.slice(dot)}`;
  return field;
}

/** A sentence for the model: which argument is wrong and why, or what failed. */
export function describeError(e: unknown, names: FieldNames = {}): string {
  if (e instanceof ConfigError) {
    const reason = e.message.startsWith(`${e.field}: `) ? e.message.slice(e.field.length + 2) : e.message;
    return `Invalid argument ${argumentName(e.field, names)}: ${reason}`;
  }
  if (e instanceof FileNotFoundError) return `path: ${e.message}`;
  if (e instanceof FileSystemError) return `path: ${e.message} (${e.code})`;
  if (e instanceof VMNotFoundError) return `sandbox_id: no such sandbox: ${e.vmId}`;
  return e instanceof Error ? e.message : String(e);
}

/** Run a tool body; any error becomes an `isError` result. */
export async function guarded(names: FieldNames, body: () => Promise<CallToolResult>): Promise<CallToolResult> {
  try {
    return await body();
  } catch (e) {
    return fail(describeError(e, names));
  }
}

/** `buf` without an incomplete UTF-8 sequence at its end (cut there by a byte limit). */
export function withoutCutEnd(buf: Buffer): Buffer {
  for (let back = 1; back <= Math.min(3, buf.length); back++) {
    const b = buf[buf.length - back] as number;
    if ((b & 0xc0) === 0x80) continue; // continuation byte: look further back for the lead
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return need > back ? buf.subarray(0, buf.length - back) : buf;
  }
  return buf;
}

/** `buf` without the continuation bytes of a UTF-8 sequence cut at its start. */
export function withoutCutStart(buf: Buffer): Buffer {
  let i = 0;
  while (i < Math.min(3, buf.length) && ((buf[i] as number) & 0xc0) === 0x80) i++;
  return buf.subarray(i);
}

/** Valid UTF-8 text without NUL bytes (what a model can read), or null: binary. */
export function asText(buf: Buffer): string | null {
  if (buf.includes(0)) return null;
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(buf);
  } catch {
    return null;
  }
}

/**
 * Output of a command kept within a bound: its first `headBytes` and last `tailBytes`; the middle is dropped (and
 * counted). Memory stays at about head + tail + one chunk whatever the command prints.
 */
export class HeadTail {
  private readonly head: Buffer[] = [];
  private headSize = 0;
  private tail: Buffer[] = [];
  private tailSize = 0;
  /** Every byte the command wrote to this stream. */
  total = 0;

  constructor(
    private readonly headBytes: number,
    private readonly tailBytes: number,
  ) {}

  push(chunk: Buffer): void {
    this.total += chunk.length;
    let b = chunk;
    if (this.headSize < this.headBytes) {
      const take = b.subarray(0, this.headBytes - this.headSize);
      this.head.push(take);
      this.headSize += take.length;
      b = b.subarray(take.length);
    }
    if (b.length === 0) return;
    this.tail.push(b);
    this.tailSize += b.length;
    while (this.tail.length > 1 && this.tailSize - (this.tail[0] as Buffer).length >= this.tailBytes) {
      this.tailSize -= (this.tail.shift() as Buffer).length;
    }
  }

  /** The text kept; `droppedBytes` > 0 when the middle was left out (a marker line stands in its place). */
  render(): { text: string; droppedBytes: number } {
    const head = Buffer.concat(this.head);
    let tail = Buffer.concat(this.tail);
    if (tail.length > this.tailBytes) tail = tail.subarray(tail.length - this.tailBytes);
    const droppedBytes = this.total - head.length - tail.length;
    if (droppedBytes === 0) return { text: Buffer.concat([head, tail]).toString("utf8"), droppedBytes };
    const marker = `\n[... ${droppedBytes} bytes of output dropped here (${this.total} in all) ...]\n`;
    return {
      text: `${withoutCutEnd(head).toString("utf8")}${marker}${withoutCutStart(tail).toString("utf8")}`,
      droppedBytes,
    };
  }
}
