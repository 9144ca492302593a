/**
 * `GET /v1/sandboxes/:id/terminal` (WebSocket): an interactive terminal. Binary messages carry terminal bytes both
 * ways; text messages from the client are JSON control (`{"type":"resize","cols":120,"rows":40}`); the server's last
 * text message is `{"type":"exit","exitCode":N}`, then it closes. Output waits for the socket to drain.
 */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { ServerContext } from "../app.js";
import { ErrorResponse, SandboxParams } from "./schemas.js";

const SLOW_SOCKET = 1 << 20;
/** Input a client may send before its terminal has started. */
const MAX_EARLY_INPUT = 64 << 10;
const Control = z.object({
  type: z.literal("resize"),
  cols: z.number().int().min(1).max(65535),
  rows: z.number().int().min(1).max(65535),
});

export const terminalRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  // @fastify/websocket hides WebSocket routes from the OpenAPI document; this one is part of the API
  app.addHook("onRoute", (r) => {
    if (r.websocket && r.schema) r.schema.hide = false;
  });
  app.get(
    "/sandboxes/:id/terminal",
    {
      websocket: true,
      schema: {
        tags: ["terminal"],
        summary: "Interactive terminal over WebSocket (binary: terminal bytes; text: JSON resize / exit)",
        params: SandboxParams,
        querystring: z.object({
          cols: z.coerce.number().int().min(1).max(65535).default(80),
          rows: z.coerce.number().int().min(1).max(65535).default(24),
          cmd: z.string().max(4096).optional().describe("Program to run through /bin/sh -c; default a login shell"),
        }),
        response: { 401: ErrorResponse, 404: ErrorResponse },
      },
    },
    async (socket, req) => {
      const q = req.query as { cols: number; rows: number; cmd?: string };
      const params = req.params as { id: string };
      const fail = (message: string) => {
        socket.send(JSON.stringify({ type: "error", message }));
        socket.close(1011, "terminal failed");
      };
      let pty: Awaited<ReturnType<Awaited<ReturnType<typeof ctx.hub.get>>["pty"]["create"]>>;
      const pending: [Buffer, boolean][] = [];
      let pendingBytes = 0;
      let inFlight = 0; // input bytes sent on to the guest and not yet taken by it
      const onMessage = (data: Buffer, isBinary: boolean) => {
        if (!pty) {
          pendingBytes += data.length;
          if (pendingBytes > MAX_EARLY_INPUT) socket.close(1008, "too much input before the terminal started");
          else pending.push([Buffer.from(data), isBinary]);
          return;
        }
        if (isBinary) {
          // the guest takes input at its own pace: past 1 MiB in flight, stop reading the socket until it catches up
          const n = data.length;
          inFlight += n;
          if (inFlight > SLOW_SOCKET) socket.pause();
          pty
            .write(Buffer.from(data))
            .catch(() => {})
            .finally(() => {
              inFlight -= n;
              if (inFlight <= SLOW_SOCKET / 4) socket.resume();
            });
          return;
        }
        const c = Control.safeParse(safeJson(data.toString("utf8")));
        if (c.success) pty.resize({ cols: c.data.cols, rows: c.data.rows }).catch(() => {});
        else socket.send(JSON.stringify({ type: "error", message: "text messages must be {type:'resize',cols,rows}" }));
      };
      socket.on("message", onMessage);
      try {
        const vm = await ctx.hub.get(params.id);
        pty = await vm.pty.create({
          cols: q.cols,
          rows: q.rows,
          cmd: q.cmd ? ["/bin/sh", "-c", q.cmd] : undefined,
          onData: (chunk) => {
            if (socket.readyState !== socket.OPEN) return;
            socket.send(chunk, { binary: true });
            if (socket.bufferedAmount > SLOW_SOCKET) {
              return new Promise<void>((resolve) => {
                const check = () =>
                  socket.bufferedAmount <= SLOW_SOCKET / 2 || socket.readyState !== socket.OPEN
                    ? resolve()
                    : setTimeout(check, 10);
                check();
              });
            }
          },
        });
      } catch (e) {
        fail((e as Error).message);
        return;
      }
      if (socket.readyState !== socket.OPEN) {
        pty.kill(9).catch(() => {}); // the client left while the terminal started
        return;
      }
      for (const [b, binary] of pending.splice(0)) onMessage(b, binary);
      socket.on("close", () => {
        pty.kill(9).catch(() => {}); // the terminal's program ends with its socket
      });
      pty.wait().then(
        (exit) => {
          if (socket.readyState === socket.OPEN) {
            socket.send(JSON.stringify({ type: "exit", exitCode: exit.exitCode }));
            socket.close(1000, "exited");
          }
        },
        (e: unknown) => fail((e as Error).message),
      );
    },
  );
};

function safeJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return null;
  }
}
