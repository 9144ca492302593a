/** Prometheus `/metrics`: sandboxes by state, requests by route and status, command latency. One registry per server. */
import type { FastifyInstance, FastifyPluginAsync } from "fastify";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ServerContext } from "./app.js";
import type { SandboxHub } from "./hub.js";

export interface ServerMetrics {
  registry: Registry;
  requests: Counter<"method" | "route" | "status">;
  /** Seconds a command took, by API (rest, mcp, e2b). */
  execSeconds: Histogram<"api">;
}

const STATES = ["running", "paused", "stopped", "crashed", "error", "created"] as const;

export function serverMetrics(hub: SandboxHub): ServerMetrics {
  const registry = new Registry();
  new Gauge({
    name: "smolvm_sandboxes",
    help: "Sandboxes in the state store, by state",
    labelNames: ["state"],
    registers: [registry],
    async collect() {
      const counts = Object.fromEntries(STATES.map((s) => [s, 0])) as Record<string, number>;
      for (const v of await hub.list()) counts[v.status] = (counts[v.status] ?? 0) + 1;
      for (const [state, n] of Object.entries(counts)) this.set({ state }, n);
    },
  });
  new Gauge({
    name: "smolvm_sandbox_memory_mib",
    help: "Guest memory of running and paused sandboxes (MiB)",
    registers: [registry],
    collect() {
      this.set(hub.usage().memoryMib);
    },
  });
  const requests = new Counter({
    name: "smolvm_http_requests_total",
    help: "HTTP requests by method, route and status",
    labelNames: ["method", "route", "status"] as const,
    registers: [registry],
  });
  const execSeconds = new Histogram({
    name: "smolvm_exec_seconds",
    help: "Time from a command's request to its exit, by API",
    labelNames: ["api"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [registry],
  });
  return { registry, requests, execSeconds };
}

/** Count every request (added on the root instance so it sees all routes). */
export function countRequests(app: FastifyInstance, metrics: ServerMetrics): void {
  app.addHook("onResponse", async (req, reply) => {
    metrics.requests.inc({
      method: req.method,
      route: req.routeOptions.url ?? "unmatched",
      status: String(reply.statusCode),
    });
  });
}

export const metricsPlugin: FastifyPluginAsync<{ ctx: ServerContext }> = async (app, { ctx }) => {
  app.get("/metrics", { schema: { hide: true } }, async (_req, reply) => {
    reply.type(ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
};
