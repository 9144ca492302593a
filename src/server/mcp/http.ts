/**
 * MCP over Streamable HTTP at `/mcp` (POST, GET for the server's event stream, DELETE to end a session). Stateful:
 * `initialize` opens a session (its id in the `Mcp-Session-Id` header), each with its own MCP server and sandboxes.
 * A session ends on DELETE, when it has been idle too long, or when the server shuts down; its sandboxes are
 * deleted then. The global token check protects every request (the route is not `auth: false`).
 */

import { randomUUID } from "node:crypto";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { isInitializeRequest } from "@modelcontextprotocol/sdk/types.js";
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from "fastify";
import type { ServerContext } from "../app.js";
import { buildMcpServer } from "./server.js";
import { McpSession } from "./session.js";

export interface McpHttpOptions {
  ctx: ServerContext;
  /** Sessions open at once (default 64); more initialize requests get 503. */
  maxSessions?: number;
  /** A session with no request for this long is ended, its event stream closed (default 30 min). */
  idleMs?: number;
}

/** One session: its transport, MCP server and sandboxes. */
class HttpSession {
  lastSeen = Date.now();
  /** Requests in progress (not counting its event stream). */
  active = 0;
  private ending: Promise<void> | null = null;
  readonly transport: StreamableHTTPServerTransport;
  readonly session: McpSession;
  private readonly server: ReturnType<typeof buildMcpServer>;

  constructor(ctx: ServerContext, onInitialized: (s: HttpSession) => void, onEnd: (s: HttpSession) => void) {
    const id = randomUUID();
    this.session = new McpSession({ hub: ctx.hub, id });
    this.server = buildMcpServer(this.session);
    this.transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => id,
      onsessioninitialized: () => onInitialized(this),
      // a DELETE is answered once the session's sandboxes are gone
      onsessionclosed: () => this.session.close(),
    });
    this.transport.onclose = () => {
      void this.end();
    };
    this.onEnd = onEnd;
  }

  private readonly onEnd: (s: HttpSession) => void;

  get id(): string {
    return this.session.id;
  }

  connect(): Promise<void> {
    return this.server.connect(this.transport);
  }

  /** End the session: close its transport and delete its sandboxes. Idempotent. */
  end(): Promise<void> {
    if (!this.ending) {
      this.onEnd(this);
      this.ending = (async () => {
        await this.server.close().catch(() => {});
        await this.session.close();
      })();
    }
    return this.ending;
  }
}

function rpcError(reply: FastifyReply, status: number, code: number, message: string) {
  return reply.status(status).send({ jsonrpc: "2.0", error: { code, message }, id: null });
}

export const mcpHttpPlugin: FastifyPluginAsync<McpHttpOptions> = async (app, opts) => {
  const maxSessions = opts.maxSessions ?? 64;
  const idleMs = opts.idleMs ?? 30 * 60_000;
  const sessions = new Map<string, HttpSession>();
  let starting = 0;

  const sweep = setInterval(
    () => {
      const now = Date.now();
      for (const s of sessions.values()) if (s.active === 0 && now - s.lastSeen > idleMs) void s.end();
    },
    Math.min(60_000, Math.max(1000, idleMs / 4)),
  );
  sweep.unref();

  // server shutdown: every session ends and its sandboxes are deleted
  app.addHook("preClose", async () => {
    clearInterval(sweep);
    await Promise.allSettled([...sessions.values()].map((s) => s.end()));
  });

  async function handle(req: FastifyRequest, reply: FastifyReply) {
    const sid = req.headers["mcp-session-id"];
    let s: HttpSession | undefined;
    if (typeof sid === "string") {
      s = sessions.get(sid);
      if (!s)
        return rpcError(reply, 404, -32001, "Session not found (it ended or never existed): initialize a new one");
    } else if (req.method === "POST" && isInitializeRequest(req.body)) {
      if (sessions.size + starting >= maxSessions) {
        return rpcError(
          reply,
          503,
          -32000,
          `Too many MCP sessions (limit ${maxSessions}); end one (DELETE /mcp) or retry later`,
        );
      }
      s = new HttpSession(
        opts.ctx,
        (x) => sessions.set(x.id, x),
        (x) => sessions.delete(x.id),
      );
      starting++;
      try {
        await s.connect();
      } catch (e) {
        starting--;
        throw e;
      }
    } else {
      return rpcError(reply, 400, -32000, "Bad Request: no Mcp-Session-Id header; send an initialize request first");
    }
    s.lastSeen = Date.now();
    if (req.method !== "GET") {
      // an open event stream (GET) does not keep a session alive: only requests do
      s.active++;
      const session = s;
      reply.raw.once("close", () => {
        session.active--;
        session.lastSeen = Date.now();
      });
    }
    reply.raw.setHeader("x-request-id", req.id); // headers set through `reply` are not sent once hijacked
    reply.hijack();
    try {
      await s.transport.handleRequest(req.raw, reply.raw, req.body);
    } catch (e) {
      req.log.error({ err: e }, "MCP request failed");
      if (!reply.raw.headersSent) reply.raw.writeHead(500, { "content-type": "application/json" });
      reply.raw.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32603, message: "Internal error" }, id: null }));
    } finally {
      if (typeof sid !== "string") {
        starting--;
        // an initialize that did not open a session (refused by the transport) leaves nothing behind
        if (!sessions.has(s.id)) void s.end();
      }
    }
  }

  const route = { schema: { hide: true } };
  app.post("/mcp", route, handle);
  app.get("/mcp", route, handle);
  app.delete("/mcp", route, handle);
};
