/**
 * E2B's control plane (the API at `E2B_API_URL`), authenticated with `X-API-KEY: <server token>` by the server's
 * global hook: create, connect, resume, get, list, kill, timeout, pause. Everything goes through `ctx.hub`.
 */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { VMConfig } from "../../config.js";
import { ImageError } from "../../errors.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { E2bError } from "./errors.js";
import { metadataToLabels, parseMetadataQuery, TEMPLATE_LABEL } from "./metadata.js";
import { DEFAULT_TEMPLATE, templateImage } from "./templates.js";
import { createdSandbox, detailedSandbox, e2bState, listedSandbox } from "./view.js";

const hide = true;
const Params = z.object({ sandboxID: z.string().min(1).max(128) });
const Seconds = z
  .number()
  .int()
  .min(0)
  .max(366 * 86_400);
const NewSandbox = z.looseObject({
  templateID: z.string().min(1).max(256).optional(),
  timeout: Seconds.optional(),
  metadata: z.record(z.string(), z.string()).nullish(),
  envVars: z.record(z.string(), z.string()).nullish(),
  autoPause: z.boolean().optional(),
  secure: z.boolean().optional(),
  allow_internet_access: z.boolean().optional(),
});
const ConnectBody = z.looseObject({ timeout: Seconds.optional() }).nullish();
const ListQuery = z.looseObject({
  metadata: z.string().max(16384).optional(),
  state: z.union([z.string(), z.array(z.string())]).optional(),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
  nextToken: z.string().max(64).optional(),
});

export const controlRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const { hub } = ctx;
  const lifetime = (seconds: number | undefined) =>
    hub.lifetime(seconds === undefined ? undefined : seconds * 1000, "timeout");

  async function create(body: z.infer<typeof NewSandbox>): Promise<SmolVM> {
    const templateId = body.templateID ?? DEFAULT_TEMPLATE;
    const image = templateImage(templateId);
    if (!image) throw new E2bError(404, `template '${templateId}' not found`);
    const config: VMConfig = {
      image,
      labels: { ...metadataToLabels(body.metadata), [TEMPLATE_LABEL]: templateId },
      env: body.envVars ?? {},
      timeoutMs: lifetime(body.timeout),
      onTimeout: body.autoPause ? "pause" : "delete",
    };
    if (body.allow_internet_access === true) config.network = { mode: "user", internet: "open" };
    try {
      return await hub.create(config);
    } catch (e) {
      if (e instanceof ImageError) throw new E2bError(404, `template '${templateId}' not found: ${e.message}`);
      throw e;
    }
  }

  for (const path of ["/sandboxes", "/v2/sandboxes"]) {
    app.post(path, { schema: { hide, body: NewSandbox } }, async (req, reply) => {
      const vm = await create(req.body);
      return reply.status(201).send(createdSandbox(vm.info(), ctx.token));
    });
  }

  /** Connect: resume a paused sandbox (201) or attach to a running one (200); `timeout` sets a new lifetime. */
  for (const path of ["/sandboxes/:sandboxID/connect", "/v2/sandboxes/:sandboxID/connect"]) {
    app.post(path, { schema: { hide, params: Params, body: ConnectBody } }, async (req, reply) => {
      const vm = await hub.get(req.params.sandboxID);
      const state = e2bState(vm.info());
      if (!state) throw new E2bError(404, `sandbox ${req.params.sandboxID} is ${vm.status}`);
      // a resumed sandbox always gets a lifetime again (the one asked for, else the server's default); a running
      // one's is only ever extended, as E2B does
      if (state === "paused") {
        await vm.resume();
        vm.setTimeout(lifetime(req.body?.timeout));
      } else if (req.body?.timeout !== undefined) {
        const wanted = lifetime(req.body.timeout);
        const left = vm.info().timeLeftMs;
        if (left !== null && wanted > left) vm.setTimeout(wanted);
      }
      return reply.status(state === "paused" ? 201 : 200).send(createdSandbox(vm.info(), ctx.token));
    });
  }

  app.post(
    "/sandboxes/:sandboxID/resume",
    { schema: { hide, params: Params, body: ConnectBody } },
    async (req, reply) => {
      const vm = await hub.get(req.params.sandboxID);
      if (vm.status !== "paused")
        throw new E2bError(409, `sandbox ${req.params.sandboxID} is ${vm.status}, not paused`);
      await vm.resume();
      vm.setTimeout(lifetime(req.body?.timeout));
      return reply.status(201).send(createdSandbox(vm.info(), ctx.token));
    },
  );

  app.post("/sandboxes/:sandboxID/pause", { schema: { hide, params: Params } }, async (req, reply) => {
    const vm = await hub.get(req.params.sandboxID);
    const status = vm.status;
    if (status === "paused") throw new E2bError(409, `sandbox ${req.params.sandboxID} is already paused`);
    if (status !== "running") throw new E2bError(404, `sandbox ${req.params.sandboxID} is ${status}`);
    await vm.pause();
    return reply.status(204).send();
  });

  /** Fork: `count` copies of a running sandbox as it is now (each its own VM with the same metadata). */
  app.post(
    "/sandboxes/:sandboxID/fork",
    {
      schema: {
        hide,
        params: Params,
        body: z.looseObject({ timeout: Seconds.optional(), count: z.number().int().min(1).max(16).optional() }),
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.sandboxID);
      if (vm.status !== "running")
        throw new E2bError(409, `sandbox ${req.params.sandboxID} is ${vm.status}, not running`);
      const clones = await hub.fork(vm, req.body.count ?? 1, lifetime(req.body.timeout));
      return reply.status(201).send(clones.map((c) => ({ sandbox: createdSandbox(c.info(), ctx.token) })));
    },
  );

  app.get("/sandboxes/:sandboxID", { schema: { hide, params: Params } }, async (req) => {
    const info = (await hub.get(req.params.sandboxID)).info();
    if (!e2bState(info)) throw new E2bError(404, `sandbox ${req.params.sandboxID} is ${info.status}`);
    return detailedSandbox(info, ctx.token);
  });

  app.delete("/sandboxes/:sandboxID", { schema: { hide, params: Params } }, async (req, reply) => {
    await hub.delete(req.params.sandboxID);
    return reply.status(204).send();
  });

  const setTimeoutRoute = (path: string, field: "timeout" | "duration") =>
    app.post(
      path,
      { schema: { hide, params: Params, body: z.looseObject({ [field]: Seconds }) } },
      async (req, reply) => {
        const vm = await hub.get(req.params.sandboxID);
        vm.setTimeout(lifetime((req.body as Record<string, number>)[field]));
        return reply.status(204).send();
      },
    );
  setTimeoutRoute("/sandboxes/:sandboxID/timeout", "timeout");
  setTimeoutRoute("/sandboxes/:sandboxID/refreshes", "duration");

  app.get("/sandboxes/:sandboxID/metrics", { schema: { hide, params: Params } }, async (req) => {
    await hub.get(req.params.sandboxID); // 404 for an unknown one; no metrics are collected
    return [];
  });

  async function listed(query: z.infer<typeof ListQuery>, defaultStates: string[]) {
    const wanted = parseMetadataQuery(query.metadata);
    const states = new Set(
      (query.state === undefined ? defaultStates : [query.state].flat().flatMap((s) => s.split(",")))
        .map((s) => s.trim())
        .filter(Boolean),
    );
    const all = await hub.list(metadataToLabels(wanted));
    return all
      .filter((v) => {
        const s = e2bState(v);
        return s !== null && states.has(s);
      })
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt) || a.vmId.localeCompare(b.vmId))
      .map(listedSandbox);
  }

  app.get("/sandboxes", { schema: { hide, querystring: ListQuery } }, async (req) => listed(req.query, ["running"]));

  /** Paginated: `limit` (default 100) and `nextToken` (an offset), `x-next-token` when more follow. */
  app.get("/v2/sandboxes", { schema: { hide, querystring: ListQuery } }, async (req, reply) => {
    const all = await listed(req.query, ["running", "paused"]);
    const limit = req.query.limit ?? 100;
    let offset = 0;
    if (req.query.nextToken) {
      offset = Number.parseInt(Buffer.from(req.query.nextToken, "base64url").toString("utf8"), 10);
      if (!Number.isSafeInteger(offset) || offset < 0) throw new E2bError(400, "invalid nextToken");
    }
    const page = all.slice(offset, offset + limit);
    if (offset + limit < all.length) {
      reply.header("x-next-token", Buffer.from(String(offset + limit)).toString("base64url"));
    }
    return page;
  });
};
