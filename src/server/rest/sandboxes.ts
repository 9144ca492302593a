/** `/v1/sandboxes`: create, list (label filters), get, delete, pause, resume, lifetime, snapshot, fork. */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { VMConfig } from "../../config.js";
import type { ServerContext } from "../app.js";
import { httpError } from "../errors.js";
import {
  CreateSandbox,
  ErrorResponse,
  ForkRequest,
  Sandbox,
  SandboxParams,
  Snapshot,
  SnapshotRequest,
  Timeout,
} from "./schemas.js";

const tags = ["sandboxes"];
const errors = { 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };

/** `label=k=v` (repeatable) or `label=k` (has the key) query values. */
function labelFilter(q: string | string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of q === undefined ? [] : Array.isArray(q) ? q : [q]) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw httpError(400, "invalid_request", `label: "${item}" is not KEY=VALUE`, { field: "label" });
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

export const sandboxRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const { hub } = ctx;

  app.post(
    "/sandboxes",
    {
      schema: {
        tags,
        summary: "Create and start a sandbox",
        body: CreateSandbox,
        response: { 201: Sandbox, ...errors, 429: ErrorResponse, 507: ErrorResponse },
      },
    },
    async (req, reply) => {
      const vm = await hub.create(req.body as VMConfig);
      return reply.status(201).send(vm.info());
    },
  );

  app.get(
    "/sandboxes",
    {
      schema: {
        tags,
        summary: "List sandboxes, optionally those carrying every given label",
        querystring: z.object({ label: z.union([z.string(), z.array(z.string())]).optional() }),
        response: { 200: z.object({ sandboxes: z.array(Sandbox) }), ...errors },
      },
    },
    async (req) => ({ sandboxes: await hub.list(labelFilter(req.query.label)) }),
  );

  app.get(
    "/sandboxes/:id",
    { schema: { tags, summary: "Get a sandbox", params: SandboxParams, response: { 200: Sandbox, ...errors } } },
    async (req) => (await hub.get(req.params.id)).info(),
  );

  app.delete(
    "/sandboxes/:id",
    { schema: { tags, summary: "Delete a sandbox", params: SandboxParams, response: { 204: z.null(), ...errors } } },
    async (req, reply) => {
      await hub.delete(req.params.id);
      return reply.status(204).send(null);
    },
  );

  app.post(
    "/sandboxes/:id/pause",
    { schema: { tags, summary: "Pause a sandbox", params: SandboxParams, response: { 200: Sandbox, ...errors } } },
    async (req) => {
      const vm = await hub.get(req.params.id);
      await vm.pause();
      return vm.info();
    },
  );

  app.post(
    "/sandboxes/:id/resume",
    {
      schema: {
        tags,
        summary: "Resume a paused sandbox; it runs for a new lifetime (timeoutMs, else the server's default)",
        params: SandboxParams,
        body: z.object({ timeoutMs: z.number().int().positive().optional() }).strict().optional(),
        response: { 200: Sandbox, ...errors },
      },
    },
    async (req) => {
      const vm = await hub.get(req.params.id);
      await vm.resume();
      // a sandbox paused by its lifetime has none left: it runs again for a new one
      vm.setTimeout(hub.lifetime(req.body?.timeoutMs));
      return vm.info();
    },
  );

  app.post(
    "/sandboxes/:id/timeout",
    {
      schema: {
        tags,
        summary: "Set a new lifetime, counted from now",
        params: SandboxParams,
        body: Timeout,
        response: { 200: Sandbox, ...errors },
      },
    },
    async (req) => {
      const vm = await hub.get(req.params.id);
      vm.setTimeout(hub.lifetime(req.body.timeoutMs));
      return vm.info();
    },
  );

  app.post(
    "/sandboxes/:id/snapshots",
    {
      schema: {
        tags,
        summary: "Snapshot a sandbox (memory and disk); it keeps running",
        params: SandboxParams,
        body: SnapshotRequest.optional(),
        response: { 201: Snapshot, ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      return reply.status(201).send(await vm.snapshot({ name: req.body?.name }));
    },
  );

  app.post(
    "/sandboxes/:id/fork",
    {
      schema: {
        tags,
        summary: "Make copies of a running sandbox",
        params: SandboxParams,
        body: ForkRequest.optional(),
        response: { 201: z.object({ sandboxes: z.array(Sandbox) }), ...errors, 429: ErrorResponse, 507: ErrorResponse },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      const clones = await hub.fork(vm, req.body?.count ?? 1, req.body?.timeoutMs);
      return reply.status(201).send({ sandboxes: clones.map((c) => c.info()) });
    },
  );
};
