/**
 * E2B endpoints SmolVM does not implement answer 501 in E2B's error shape (the SDK then throws a `SandboxError`
 * saying so), rather than a 404 the SDK would read as "sandbox not found".
 */
import type { FastifyPluginAsync } from "fastify";
import { E2bError } from "./errors.js";

const ROUTES = [
  "/sandboxes/:sandboxID/snapshots",
  "/sandboxes/:sandboxID/network",
  "/sandboxes/:sandboxID/logs",
  "/v2/sandboxes/:sandboxID/logs",
  "/sandboxes/metrics",
  "/snapshots",
  "/templates",
  "/templates/*",
  "/v2/templates",
  "/v2/templates/*",
  "/v3/templates",
  "/v3/templates/*",
  "/volumes",
  "/volumes/*",
  "/secrets",
  "/secrets/*",
];

export const unsupportedRoutes: FastifyPluginAsync = async (app) => {
  for (const url of ROUTES) {
    app.route({
      method: ["GET", "POST", "PUT", "PATCH", "DELETE"],
      url,
      schema: { hide: true },
      handler: async (req) => {
        throw new E2bError(501, `${req.method} ${url} is not supported by smolvm serve's E2B API (see docs/E2B.md)`);
      },
    });
  }
};
