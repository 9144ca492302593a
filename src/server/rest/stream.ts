/**
 * Streamed command output over HTTP: NDJSON (`application/x-ndjson`, one JSON event per line) or Server-Sent Events
 * (`text/event-stream`). Events: `{type:"start",pid}`, `{type:"stdout"|"stderr",data}` (UTF-8 text, characters never
 * split between events), `{type:"exit",exitCode,signal,...}`, `{type:"error",code,message}`. Writes wait for the
 * socket to drain, so a slow reader slows the command instead of filling the server's memory.
 */
import type { ServerResponse } from "node:http";
import { StringDecoder } from "node:string_decoder";
import type { FastifyReply, FastifyRequest } from "fastify";

export type StreamFormat = "ndjson" | "sse";

/** The format a request asks for (`?stream=` wins over Accept), or null for one JSON answer at the end. */
export function streamFormat(req: FastifyRequest, query?: string): StreamFormat | null {
  if (query === "ndjson" || query === "sse") return query;
  const accept = req.headers.accept ?? "";
  if (accept.includes("text/event-stream")) return "sse";
  if (accept.includes("application/x-ndjson") || accept.includes("application/jsonl")) return "ndjson";
  return null;
}

export class EventStream {
  private readonly res: ServerResponse;
  private readonly decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") };
  private seq = 0;
  closed = false;

  constructor(
    reply: FastifyReply,
    private readonly format: StreamFormat,
  ) {
    reply.hijack();
    this.res = reply.raw;
    this.res.writeHead(200, {
      "content-type": format === "sse" ? "text/event-stream; charset=utf-8" : "application/x-ndjson; charset=utf-8",
      "cache-control": "no-store",
      "x-request-id": String(reply.request.id),
      "x-accel-buffering": "no",
    });
    this.res.flushHeaders();
    this.res.on("close", () => {
      this.closed = true;
    });
  }

  /** Write one event; resolves when the socket can take more. */
  send(event: Record<string, unknown> & { type: string }): Promise<void> {
    if (this.closed) return Promise.resolve();
    const json = JSON.stringify(event);
    const text = this.format === "sse" ? `id: ${this.seq++}\nevent: ${event.type}\ndata: ${json}\n\n` : `${json}\n`;
    if (this.res.write(text)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.res.off("drain", done);
        this.res.off("close", done);
        resolve();
      };
      this.res.on("drain", done);
      this.res.on("close", done);
    });
  }

  /** Output bytes as text events; a character split across chunks waits for its end. */
  output(stream: "stdout" | "stderr", chunk: Buffer): Promise<void> {
    const data = this.decoders[stream].write(chunk);
    return data ? this.send({ type: stream, data }) : Promise.resolve();
  }

  /** Flush partial characters, write the last event and end the response. */
  async end(last: Record<string, unknown> & { type: string }): Promise<void> {
    for (const s of ["stdout", "stderr"] as const) {
      const rest = this.decoders[s].end();
      if (rest) await this.send({ type: s, data: rest });
    }
    await this.send(last);
    if (!this.closed) this.res.end();
  }
}
