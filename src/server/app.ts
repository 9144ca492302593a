/**
 * `smolvm serve`'s Fastify application: authentication on every route but `/health` and `/openapi.json`, one error
 * shape, request ids, limits, and the API plugins (REST under `/v1`, MCP at `/mcp`, E2B's API at its own paths).
 * Built without listening so tests and `serve` share it.
 */

import { randomUUID } from "node:crypto";
import swagger from "@fastify/swagger";
import websocket from "@fastify/websocket";
import Fastify, { type FastifyInstance, type FastifyServerOptions } from "fastify";
import { jsonSchemaTransform, serializerCompiler, validatorCompiler } from "fastify-type-provider-zod";
import { credentialOf, tokenChecker } from "./auth.js";
import { e2bPlugin, sandboxHealth } from "./e2b/index.js";
import { httpError, toHttp } from "./errors.js";
import type { SandboxHub } from "./hub.js";
import { mcpHttpPlugin } from "./mcp/http.js";
import { countRequests, metricsPlugin, type ServerMetrics, serverMetrics } from "./metrics.js";
import { restPlugin } from "./rest/index.js";

declare module "fastify" {
  interface FastifyContextConfig {
    /** Skip the bearer-token check (the route authenticates itself, or is public). */
    auth?: false;
  }
}

export interface ServerOptions {
  token: string;
  hub: SandboxHub;
  /** Fastify's logger option (pino): false in tests, JSON lines in `serve`. */
  logger?: FastifyServerOptions["logger"];
  /** Largest JSON body in bytes (file uploads stream and are not bounded by it). Default 1 MiB. */
  bodyLimit?: number;
  https?: { key: Buffer; cert: Buffer } | null;
}

/** What every API plugin gets. */
export interface ServerContext {
  hub: SandboxHub;
  /** True when `candidate` is this server's token (constant time). */
  checkToken: (candidate: string | undefined) => boolean;
  token: string;
  metrics: ServerMetrics;
}

const ROUTES = new WeakMap<FastifyInstance, string[]>();

/** Every route the application registered, as `method /path/{param}`. */
export const routesOf = (app: FastifyInstance): string[] => ROUTES.get(app) ?? [];

export async function buildServer(opts: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: opts.bodyLimit ?? 1 << 20,
    genReqId: (req) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && /^[\w.:-]{1,128}$/.test(given) ? given : randomUUID();
    },
    forceCloseConnections: true,
    ...(opts.https ? { https: opts.https } : {}),
  }) as unknown as FastifyInstance;
  const routes: string[] = [];
  app.addHook("onRoute", (r) => {
    for (const m of [r.method].flat()) routes.push(`${m.toLowerCase()} ${r.url.replace(/:(\w+)/g, "{$1}")}`);
  });
  ROUTES.set(app, routes);
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);

  const checkToken = tokenChecker(opts.token);
  const ctx: ServerContext = { hub: opts.hub, checkToken, token: opts.token, metrics: serverMetrics(opts.hub) };

  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
    if (req.routeOptions.config?.auth === false) return;
    if (!checkToken(credentialOf(req.headers))) {
      reply.header("www-authenticate", 'Bearer realm="smolvm"');
      throw httpError(401, "unauthorized", "a valid token is required: Authorization: Bearer <token>");
    }
  });
  countRequests(app, ctx.metrics);
  app.setErrorHandler((err, req, reply) => {
    const e = toHttp(err);
    if (e.status >= 500) req.log.error({ err }, "request failed");
    return reply.status(e.status).type("application/json; charset=utf-8").send({ error: e.body });
  });
  app.setNotFoundHandler((req, reply) => {
    // No route: the same answer with or without a token, so nothing is learned without one.
    reply
      .status(404)
      .send({ error: { code: "not_found", message: `no route ${req.method} ${req.url.split("?")[0]}` } });
  });

  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: { title: "SmolVM", version: "1", description: "Hardware-isolated Linux sandboxes" },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });
  await app.register(websocket, { options: { maxPayload: 1 << 20 } });
  app.get(
    "/health",
    { config: { auth: false }, schema: { summary: "Liveness (no token needed)", security: [], tags: ["server"] } },
    async (req, reply) => {
      // with E2b-Sandbox-Id it is envd's health check (E2B_SANDBOX_URL points here): 204, or 502 for no such sandbox
      if (req.headers["e2b-sandbox-id"] === undefined) return { status: "ok" };
      const health = await sandboxHealth(ctx, (name) => req.headers[name]?.toString());
      return health.code === 204 ? reply.status(204).send() : reply.status(health.code).send(health);
    },
  );
  app.get("/openapi.json", { config: { auth: false }, schema: { hide: true } }, async () => app.swagger());
  await app.register(metricsPlugin, { ctx });
  await app.register(restPlugin, { ctx, prefix: "/v1" });
  await app.register(e2bPlugin, { ctx });
  await app.register(mcpHttpPlugin, { ctx });
  return app;
}
