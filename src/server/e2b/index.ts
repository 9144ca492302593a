/**
 * E2B's API on `smolvm serve`, so the stock E2B SDKs work with `E2B_API_URL` and `E2B_SANDBOX_URL` both set to this
 * server and `E2B_API_KEY` to its token: the control plane (control.ts), envd's file HTTP API (files-http.ts) and
 * its Connect services (rpc.ts). Errors are E2B's `{ code, message }`. See docs/E2B.md.
 */
import type { FastifyPluginAsync } from "fastify";
import type { ServerContext } from "../app.js";
import { controlRoutes } from "./control.js";
import { e2bErrorHandler } from "./errors.js";
import { filesRoutes } from "./files-http.js";
import { rpcRoutes } from "./rpc.js";
import { unsupportedRoutes } from "./unsupported.js";

export { sandboxHealth } from "./access.js";

export const e2bPlugin: FastifyPluginAsync<{ ctx: ServerContext }> = async (app, { ctx }) => {
  app.setErrorHandler(e2bErrorHandler);
  await app.register(controlRoutes, { ctx });
  await app.register(filesRoutes, { ctx });
  await app.register(rpcRoutes, { ctx });
  await app.register(unsupportedRoutes);
};
