/** `/v1`: exposed ports of a sandbox, snapshots (list, restore into a new sandbox, delete), images (list). */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { images } from "../../images/api.js";
import { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { ErrorResponse, Sandbox, SandboxParams, Snapshot } from "./schemas.js";

const errors = { 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };
const Port = z.object({ guestPort: z.number(), host: z.string(), port: z.number(), url: z.string() });
const Image = z.object({
  id: z.string(),
  names: z.array(z.string()),
  source: z.string(),
  origin: z.string(),
  platform: z.string().nullable(),
  contentBytes: z.number(),
  sizeBytes: z.number(),
  createdAt: z.string(),
});
const SnapshotParams = z.object({ snapshot: z.string().min(1).max(128) });

export const resourceRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const { hub } = ctx;

  app.get(
    "/sandboxes/:id/ports",
    {
      schema: {
        tags: ["ports"],
        summary: "Ports exposed on the host",
        params: SandboxParams,
        response: { 200: z.object({ ports: z.array(Port) }), ...errors },
      },
    },
    async (req) => ({ ports: (await hub.get(req.params.id)).ports() }),
  );

  app.post(
    "/sandboxes/:id/ports",
    {
      schema: {
        tags: ["ports"],
        summary: "Expose a guest port on the host's loopback (hostPort: 0 or absent picks one)",
        params: SandboxParams,
        body: z
          .object({
            guestPort: z.number().int().min(1).max(65535),
            hostPort: z.number().int().min(0).max(65535).optional(),
          })
          .strict(),
        response: { 201: Port, ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      return reply.status(201).send(await vm.expose(req.body.guestPort, { hostPort: req.body.hostPort }));
    },
  );

  app.delete(
    "/sandboxes/:id/ports/:guestPort",
    {
      schema: {
        tags: ["ports"],
        summary: "Stop exposing a guest port",
        params: SandboxParams.extend({ guestPort: z.coerce.number().int().min(1).max(65535) }),
        response: { 200: z.object({ ports: z.array(Port) }), ...errors },
      },
    },
    async (req) => ({ ports: await (await hub.get(req.params.id)).unexpose(req.params.guestPort) }),
  );

  app.get(
    "/snapshots",
    {
      schema: {
        tags: ["snapshots"],
        summary: "List snapshots",
        response: { 200: z.object({ snapshots: z.array(Snapshot) }), ...errors },
      },
    },
    async () => ({ snapshots: SmolVM.listSnapshots() }),
  );

  app.post(
    "/snapshots/:snapshot/sandboxes",
    {
      schema: {
        tags: ["snapshots"],
        summary: "Start a new sandbox from a snapshot",
        params: SnapshotParams,
        body: z
          .object({ name: z.string().max(64).optional(), timeoutMs: z.number().int().positive().optional() })
          .strict()
          .optional(),
        response: { 201: Sandbox, ...errors, 429: ErrorResponse, 507: ErrorResponse },
      },
    },
    async (req, reply) => {
      const vm = await hub.restore(req.params.snapshot, { name: req.body?.name, timeoutMs: req.body?.timeoutMs });
      return reply.status(201).send(vm.info());
    },
  );

  app.delete(
    "/snapshots/:snapshot",
    {
      schema: {
        tags: ["snapshots"],
        summary: "Delete a snapshot",
        params: SnapshotParams,
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      SmolVM.deleteSnapshot(req.params.snapshot);
      return reply.status(204).send(null);
    },
  );

  app.get(
    "/images",
    {
      schema: {
        tags: ["images"],
        summary: "Images in the local store",
        response: { 200: z.object({ images: z.array(Image) }), ...errors },
      },
    },
    async () => ({ images: images.list() }),
  );
};
