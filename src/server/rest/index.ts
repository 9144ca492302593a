/** The REST API, mounted under `/v1`. */
import type { FastifyPluginAsync } from "fastify";
import type { ServerContext } from "../app.js";
import { sandboxRoutes } from "./sandboxes.js";

export const restPlugin: FastifyPluginAsync<{ ctx: ServerContext }> = async (app, { ctx }) => {
  await app.register(sandboxRoutes, { ctx });
};
