/** The REST API, mounted under `/v1`. */
import type { FastifyPluginAsync } from "fastify";
import type { ServerContext } from "../app.js";
import { browserRoutes } from "./browser.js";
import { commandRoutes } from "./commands.js";
import { fileRoutes } from "./files.js";
import { resourceRoutes } from "./resources.js";
import { sandboxRoutes } from "./sandboxes.js";
import { terminalRoutes } from "./terminal.js";

export const restPlugin: FastifyPluginAsync<{ ctx: ServerContext }> = async (app, { ctx }) => {
  await app.register(sandboxRoutes, { ctx });
  await app.register(commandRoutes, { ctx });
  await app.register(fileRoutes, { ctx });
  await app.register(terminalRoutes, { ctx });
  await app.register(resourceRoutes, { ctx });
  await app.register(browserRoutes, { ctx });
};
