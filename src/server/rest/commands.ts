/**
 * `/v1/sandboxes/:id/commands`: run (one JSON result, or output streamed as NDJSON/SSE while it runs), start in the
 * background, list, follow again, send stdin, signal.
 */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { CommandTimeoutError } from "../../errors.js";
import { parseSignal } from "../../util/signals.js";
import type { ServerContext } from "../app.js";
import { Attachments, type Chunk, SLOW_READER_BYTES } from "../attached.js";
import { httpError } from "../errors.js";
import { ErrorResponse, SandboxParams } from "./schemas.js";
import { EventStream, streamFormat } from "./stream.js";

const tags = ["commands"];
const errors = { 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };
const MAX_STDIN = 1 << 20;

const RunBody = z
  .object({
    cmd: z.union([z.string().min(1), z.array(z.string()).min(1)]).describe("A shell command line, or argv"),
    env: z.record(z.string(), z.string()).optional(),
    cwd: z.string().optional(),
    user: z.string().optional().describe("Guest user (name or uid); default root"),
    timeoutMs: z.number().int().positive().optional().describe("Kill the command after this long"),
    stdin: z.string().max(MAX_STDIN).optional().describe("Text written to stdin, which is then closed"),
    background: z.boolean().optional().describe("Start it and return its pid at once; follow it with GET .../:pid"),
    maxOutputBytes: z
      .number()
      .int()
      .min(0)
      .max(4 << 20)
      .optional()
      .describe("Output kept per stream in a JSON answer (default 1 MiB; stream the output for more)"),
  })
  .strict();

const Result = z.object({
  exitCode: z.number(),
  signal: z.number().nullable(),
  stdout: z.string(),
  stderr: z.string(),
  durationMs: z.number(),
  truncated: z.boolean(),
});

const ProcessInfo = z.object({
  pid: z.number(),
  command: z.string(),
  running: z.boolean(),
  attached: z.boolean(),
  background: z.boolean(),
  exitCode: z.number().nullable().optional(),
  signal: z.number().nullable().optional(),
});

const PidParams = SandboxParams.extend({ pid: z.coerce.number().int().positive() });
const StreamQuery = z.object({ stream: z.enum(["ndjson", "sse"]).optional() });

export const commandRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const { hub } = ctx;
  const attachments = new Attachments();
  const execTimer = () => ctx.metrics.execSeconds.startTimer({ api: "rest" });

  app.post(
    "/sandboxes/:id/commands",
    {
      schema: {
        tags,
        summary: "Run a command: JSON result, or streamed output (Accept: application/x-ndjson or text/event-stream)",
        params: SandboxParams,
        querystring: StreamQuery,
        body: RunBody,
        response: { 200: Result, 201: z.object({ pid: z.number() }), ...errors, 504: ErrorResponse },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      const b = req.body;
      const opts = { env: b.env, cwd: b.cwd, user: b.user };
      if (b.background) {
        const pid = await vm.processes.start(b.cmd, { ...opts, stdin: true });
        return reply.status(201).send({ pid });
      }
      const format = streamFormat(req, req.query.stream);
      const abort = new AbortController();
      reply.raw.on("close", () => {
        if (!reply.raw.writableFinished) abort.abort(); // the client went away: the command is killed
      });
      const stop = execTimer();
      if (!format) {
        const r = await vm
          .run(b.cmd, {
            ...opts,
            timeoutMs: b.timeoutMs,
            stdin: b.stdin,
            signal: abort.signal,
            maxOutputBytes: b.maxOutputBytes ?? 1 << 20,
          })
          .finally(stop);
        return { ...r, durationMs: Math.round(r.durationMs) };
      }
      const out = new EventStream(reply, format);
      try {
        const r = await vm.run(b.cmd, {
          ...opts,
          timeoutMs: b.timeoutMs,
          stdin: b.stdin,
          signal: abort.signal,
          maxOutputBytes: 0, // everything is streamed; nothing is collected
          onStdout: (c) => out.output("stdout", c),
          onStderr: (c) => out.output("stderr", c),
        });
        await out.end({ type: "exit", exitCode: r.exitCode, signal: r.signal, durationMs: Math.round(r.durationMs) });
      } catch (e) {
        const timeout = e instanceof CommandTimeoutError;
        await out.end({
          type: "error",
          code: timeout ? "command_timeout" : "command_failed",
          message: (e as Error).message,
        });
      } finally {
        stop();
      }
    },
  );

  app.get(
    "/sandboxes/:id/commands",
    {
      schema: {
        tags,
        summary: "Commands the sandbox runs (and finished background ones not yet followed)",
        params: SandboxParams,
        response: { 200: z.object({ commands: z.array(ProcessInfo) }), ...errors },
      },
    },
    async (req) => ({ commands: await (await hub.get(req.params.id)).processes.list() }),
  );

  app.get(
    "/sandboxes/:id/commands/:pid",
    {
      schema: {
        tags,
        summary: "Follow a background command: its latest output (64 KiB), then live output, then its exit",
        params: PidParams,
        querystring: StreamQuery,
        response: { ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      const a = await attachments.get(vm, req.params.pid);
      const socket = reply.raw;
      const out = new EventStream(reply, streamFormat(req, req.query.stream) ?? "ndjson");
      if (socket.destroyed) return; // the client left while we attached
      await out.send({ type: "start", pid: a.pid });
      await new Promise<void>((resolve) => {
        let queue = Promise.resolve();
        let waiting = 0; // bytes of output queued for this reader, not yet taken by its socket
        const unfollow = a.follow({
          chunk: (c: Chunk) => {
            if (waiting > SLOW_READER_BYTES) {
              socket.destroy(); // too slow a reader: cut off rather than buffered for
              return;
            }
            waiting += c.data.length;
            queue = queue
              .then(() => out.output(c.stream, c.data))
              .finally(() => {
                waiting -= c.data.length;
              });
          },
          exit: (e) => {
            queue = queue.then(() =>
              out.end(
                "error" in e ? { type: "error", code: "command_failed", message: e.error } : { type: "exit", ...e },
              ),
            );
            void queue.then(resolve);
          },
        });
        socket.on("close", () => {
          unfollow(); // the process keeps running
          resolve();
        });
        if (socket.destroyed) {
          unfollow();
          resolve();
        }
      });
    },
  );

  app.post(
    "/sandboxes/:id/commands/:pid/stdin",
    {
      schema: {
        tags,
        summary: "Write to a background command's stdin (started with background: true); eof closes it",
        params: PidParams,
        body: z.object({ data: z.string().max(MAX_STDIN).optional(), eof: z.boolean().optional() }).strict(),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      const a = await attachments.get(await hub.get(req.params.id), req.params.pid);
      if (a.result) throw httpError(409, "command_ended", `process ${req.params.pid} has ended`);
      if (req.body.data) await a.write(Buffer.from(req.body.data, "utf8"));
      if (req.body.eof) a.closeStdin();
      return reply.status(204).send(null);
    },
  );

  app.post(
    "/sandboxes/:id/commands/:pid/signal",
    {
      schema: {
        tags,
        summary: "Signal a command and its process group (default TERM)",
        params: PidParams,
        body: z.object({ signal: z.union([z.string(), z.number().int().min(1).max(64)]).default("TERM") }).strict(),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      await vm.processes.kill(req.params.pid, parseSignal(req.body.signal));
      return reply.status(204).send(null);
    },
  );
};
