/**
 * The Connect-RPC services of envd (process.Process, filesystem.Filesystem), JSON or binary, unary and server
 * streaming over HTTP/1.1, mounted at the server's root as envd has them (`/process.Process/Start`...). Its own
 * encapsulated plugin: Connect's no-op body parsers stay here, the routes skip the bearer-token hook (each call
 * checks the sandbox's `X-Access-Token`) and are hidden from the OpenAPI document.
 */
import { fastifyConnectPlugin } from "@connectrpc/connect-fastify";
import type { FastifyPluginAsync } from "fastify";
import type { ServerContext } from "../app.js";
import { filesystemService } from "./filesystem-service.js";
import { Filesystem } from "./gen/filesystem/filesystem_pb.js";
import { Process } from "./gen/process/process_pb.js";
import { processService } from "./process-service.js";
import { ProcessRegistry } from "./process-sessions.js";

export const rpcRoutes: FastifyPluginAsync<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const registry = new ProcessRegistry();
  app.addHook("onRoute", (route) => {
    route.config = { ...(route.config ?? {}), auth: false };
    route.schema = { ...(route.schema ?? {}), hide: true };
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
