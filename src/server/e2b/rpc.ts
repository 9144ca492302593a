/**
 * The Connect-RPC services of envd (process.Process, filesystem.Filesystem), JSON or binary, unary and server
 * streaming over HTTP/1.1, mounted at the server's root as envd has them (`/process.Process/Start`...). Its own
 * encapsulated plugin: Connect's no-op body parsers stay here, the routes skip the bearer-token hook (each call
 * checks the sandbox's `X-Access-Token`) and are hidden from the OpenAPI document.
 */

import { Code } from "@connectrpc/connect";
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import type { FastifyPluginAsync } from "fastify";
import type { ServerContext } from "../app.js";
import { checkEnvdToken } from "./access.js";
import { filesystemService } from "./filesystem-service.js";
import { Filesystem } from "./gen/filesystem/filesystem_pb.js";
import { Process } from "./gen/process/process_pb.js";
import { processService } from "./process-service.js";
import { ProcessRegistry } from "./process-sessions.js";
import { toConnectError } from "./rpc-errors.js";

export const rpcRoutes: FastifyPluginAsync<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const registry = new ProcessRegistry();
  app.addHook("onRoute", (route) => {
    route.config = { ...(route.config ?? {}), auth: false };
    route.schema = { ...(route.schema ?? {}), hide: true };
  });
  // the sandbox's access token is checked before Connect reads a body (up to readMaxBytes)
  app.addHook("onRequest", async (req, reply) => {
    try {
      checkEnvdToken(ctx, (name) => {
        const v = req.headers[name];
        return typeof v === "string" ? v : undefined;
      });
    } catch (e) {
      const ce = toConnectError(e);
      const status = ce.code === Code.Unauthenticated ? 401 : 503;
      return reply
        .status(status)
        .type("application/json")
        .send({ code: ce.code === Code.Unauthenticated ? "unauthenticated" : "unavailable", message: ce.rawMessage });
    }
  });
  await app.register(fastifyConnectPlugin, {
    routes: (router) => {
      router.service(Process, processService(ctx, registry));
      router.service(Filesystem, filesystemService(ctx));
    },
    readMaxBytes: 8 << 20,
    writeMaxBytes: 16 << 20,
    jsonOptions: { ignoreUnknownFields: true },
  });
};
