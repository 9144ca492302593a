/**
 * `/v1/sandboxes/:id/files`: raw streaming download and upload of one file (bounded memory both ways), list, stat,
 * mkdir, remove, rename, and folders as tar (down: the guest's archive is checked and extracted on the host as
 * `smolvm cp` does, then packed again, so nothing the guest made up reaches the client unchecked).
 */

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { EntryInfo } from "../../sandbox/files.js";
import { packDir } from "../../sandbox/tar.js";
import { defaultTransferLimit } from "../../sandbox/transfers.js";
import type { ServerContext } from "../app.js";
import { SERVER_LIST_BYTES } from "../hub.js";
import { ErrorResponse, SandboxParams } from "./schemas.js";

const tags = ["files"];
const errors = { 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse };
const Path = z.object({ path: z.string().min(1).max(4096).describe("Absolute guest path") });

const Entry = z.object({
  name: z.string(),
  path: z.string(),
  type: z.string(),
  size: z.number(),
  mode: z.number(),
  mtime: z.string(),
  symlinkTarget: z.string().optional(),
});
const entry = (e: EntryInfo) => ({ ...e, mtime: e.mtime.toISOString() });

/** Bytes a download of one file or folder may send (also the temporary space a folder takes on the host). */
export const MAX_DOWNLOAD = 4 * 1024 ** 3;

/** Routes with raw bodies: no parser reads them (they stream to the guest), so no body limit applies but the guest's. */
const rawRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser("*", (_req, _payload, done) => done(null));

  app.put(
    "/sandboxes/:id/files/content",
    {
      schema: {
        tags,
        summary: "Upload one file (the raw request body, streamed; parents created; replaced atomically)",
        params: SandboxParams,
        querystring: Path.extend({
          mode: z
            .string()
            .regex(/^[0-7]{3,4}$/)
            .optional()
            .describe("Octal, e.g. 0755"),
        }),
        response: { 201: z.object({ path: z.string(), bytesWritten: z.number() }), ...errors },
      },
    },
    async (req, reply) => {
      const vm = await ctx.hub.get(req.params.id);
      const mode = req.query.mode ? Number.parseInt(req.query.mode, 8) : undefined;
      const r = await vm.files.write(req.query.path, req.raw as unknown as Readable, { mode });
      return reply.status(201).send(r);
    },
  );

  app.put(
    "/sandboxes/:id/files/tar",
    {
      schema: {
        tags,
        summary: "Upload a folder: the body is a tar archive extracted into path (created if missing)",
        params: SandboxParams,
        querystring: Path,
        response: { 201: z.object({ path: z.string() }), ...errors },
      },
    },
    async (req, reply) => {
      const vm = await ctx.hub.get(req.params.id);
      await vm.files.mkdir(req.query.path, { parents: true });
      const abort = new AbortController();
      req.raw.on("aborted", () => abort.abort(new Error("the client went away")));
      await vm.files.untar(req.query.path, req.raw as AsyncIterable<Buffer>, { signal: abort.signal });
      return reply.status(201).send({ path: req.query.path });
    },
  );
};

export const fileRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const { hub } = ctx;
  await app.register(rawRoutes, { ctx });

  app.get(
    "/sandboxes/:id/files/content",
    {
      schema: {
        tags,
        summary: "Download one regular file (streamed, application/octet-stream)",
        params: SandboxParams,
        querystring: Path,
        response: { 200: z.any().describe("The file's bytes (application/octet-stream)"), ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      const st = await vm.files.stat(req.query.path); // 404 before any byte is sent
      if (st.type !== "file") {
        return reply
          .status(400)
          .send({ error: { code: "not_a_file", message: `${req.query.path} is a ${st.type}`, field: "path" } });
      }
      reply.header("content-type", "application/octet-stream");
      return reply.send(Readable.from(vm.files.readChunks(req.query.path, { maxBytes: MAX_DOWNLOAD })));
    },
  );

  app.get(
    "/sandboxes/:id/files",
    {
      schema: {
        tags,
        summary: "List a folder",
        params: SandboxParams,
        querystring: Path.extend({ depth: z.coerce.number().int().min(1).max(16).default(1) }),
        response: { 200: z.object({ entries: z.array(Entry) }), ...errors },
      },
    },
    async (req) => {
      const vm = await hub.get(req.params.id);
      return {
        entries: (await vm.files.list(req.query.path, { depth: req.query.depth, maxBytes: SERVER_LIST_BYTES })).map(
          entry,
        ),
      };
    },
  );

  app.get(
    "/sandboxes/:id/files/stat",
    {
      schema: {
        tags,
        summary: "Stat a path",
        params: SandboxParams,
        querystring: Path,
        response: { 200: Entry, ...errors },
      },
    },
    async (req) => entry(await (await hub.get(req.params.id)).files.stat(req.query.path)),
  );

  app.post(
    "/sandboxes/:id/files/mkdir",
    {
      schema: {
        tags,
        summary: "Make a folder (and its parents unless parents is false)",
        params: SandboxParams,
        body: Path.extend({ parents: z.boolean().default(true) }).strict(),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      await (await hub.get(req.params.id)).files.mkdir(req.body.path, { parents: req.body.parents });
      return reply.status(204).send(null);
    },
  );

  app.delete(
    "/sandboxes/:id/files",
    {
      schema: {
        tags,
        summary: "Remove a file, or a folder with recursive=true",
        params: SandboxParams,
        querystring: Path.extend({ recursive: z.enum(["true", "false"]).default("false") }),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      await vm.files.remove(req.query.path, { recursive: req.query.recursive === "true" });
      return reply.status(204).send(null);
    },
  );

  app.post(
    "/sandboxes/:id/files/rename",
    {
      schema: {
        tags,
        summary: "Rename or move a path",
        params: SandboxParams,
        body: z.object({ from: z.string().min(1).max(4096), to: z.string().min(1).max(4096) }).strict(),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      await (await hub.get(req.params.id)).files.rename(req.body.from, req.body.to);
      return reply.status(204).send(null);
    },
  );

  app.get(
    "/sandboxes/:id/files/tar",
    {
      schema: {
        tags,
        summary: "Download a folder as a tar archive",
        params: SandboxParams,
        querystring: Path,
        response: { 200: z.any().describe("A tar archive (application/x-tar)"), ...errors },
      },
    },
    async (req, reply) => {
      const vm = await hub.get(req.params.id);
      const work = mkdtempSync(join(tmpdir(), "smolvm-serve-"));
      try {
        // at most 4 GiB, and never more than the host's temporary folder can take while keeping its margin free
        const maxBytes = Math.min(MAX_DOWNLOAD, defaultTransferLimit(work));
        await vm.files.downloadDir(req.query.path, join(work, "d"), { maxBytes });
      } catch (e) {
        rmSync(work, { recursive: true, force: true });
        throw e;
      }
      const body = Readable.from(packDir(join(work, "d")));
      body.on("close", () => rmSync(work, { recursive: true, force: true }));
      reply.header("content-type", "application/x-tar");
      return reply.send(body);
    },
  );
};
