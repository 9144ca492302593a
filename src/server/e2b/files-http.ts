/**
 * envd's HTTP file API at `E2B_SANDBOX_URL`: `GET /files?path=` streams a file, `POST /files?path=` writes one from
 * an `application/octet-stream` body (optionally gzip) or from `multipart/form-data` parts (each part's filename is
 * its path when no `path` is given). Both stream with bounded memory. Authenticated per sandbox with
 * `X-Access-Token` (see access.ts), not with the server token.
 */
import { posix } from "node:path";
import { pipeline, type Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { Busboy, type BusboyHeaders } from "@fastify/busboy";
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { basicUser, checkEnvdToken, envdSandbox } from "./access.js";
import { E2bError } from "./errors.js";
import { effectiveUser, guestPath, homeOf } from "./paths.js";
import { PullStream } from "./pull-stream.js";

const FilesQuery = z.looseObject({
  path: z.string().max(4096).optional(),
  username: z.string().max(64).optional(),
});
const MAX_PARTS = 1000;

function userOf(query: { username?: string }, authorization: string | undefined): string | undefined {
  const u = query.username || undefined;
  if (u !== undefined && !/^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$/i.test(u))
    throw new E2bError(400, "invalid username");
  return u ?? basicUser(authorization);
}

/** What envd answers for a written file. */
const written = (path: string) => ({ name: posix.basename(path), type: "file", path });

export const filesRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  // the raw body stream: written to the guest as it arrives, never parsed into memory
  const raw = (_req: unknown, payload: Readable, done: (err: Error | null, body?: unknown) => void) =>
    done(null, payload);
  // the sandbox's access token is checked before any body is read
  app.addHook("onRequest", async (req) => {
    checkEnvdToken(ctx, header(req));
  });
  app.addContentTypeParser("application/octet-stream", raw);
  app.addContentTypeParser(/^multipart\/form-data/i, raw);
  const header = (req: { headers: Record<string, string | string[] | undefined> }) => (name: string) => {
    const v = req.headers[name];
    return typeof v === "string" ? v : undefined;
  };

  app.get(
    "/files",
    { config: { auth: false }, schema: { hide: true, querystring: FilesQuery } },
    async (req, reply) => {
      const vm = await envdSandbox(ctx, header(req));
      const user = effectiveUser(vm, userOf(req.query, req.headers.authorization));
      const path = guestPath(req.query.path, homeOf(user));
      const st = await vm.files.stat(path);
      if (st.type === "dir") throw new E2bError(400, `path '${path}' is a directory`);
      const out = new PullStream();
      vm.files
        .readStream(path, (b) => out.offer(b))
        .then(
          () => out.push(null),
          (e: unknown) => out.destroy(e as Error),
        );
      const name = posix.basename(path).replace(/[^\x20-\x7e]|["\\]/g, "_");
      return reply
        .header("content-type", "application/octet-stream")
        .header("content-disposition", `attachment; filename="${name}"`)
        .send(out);
    },
  );

  async function writeOne(vm: SmolVM, path: string, source: Readable): Promise<void> {
    await vm.files.write(path, source);
  }

  app.post(
    "/files",
    { config: { auth: false }, schema: { hide: true, querystring: FilesQuery } },
    async (req, reply) => {
      const vm = await envdSandbox(ctx, header(req));
      const user = effectiveUser(vm, userOf(req.query, req.headers.authorization));
      const home = homeOf(user);
      const body = req.body as Readable | undefined;
      if (!body || typeof (body as Readable).pipe !== "function") {
        throw new E2bError(400, "send the file as application/octet-stream or multipart/form-data");
      }
      const contentType = req.headers["content-type"];
      if (!/^multipart\/form-data\s*;/i.test(contentType ?? "")) {
        const path = guestPath(req.query.path, home);
        const encoding = (req.headers["content-encoding"] ?? "identity").toLowerCase();
        if (encoding !== "identity" && encoding !== "gzip")
          throw new E2bError(400, `unsupported content-encoding ${encoding}`);
        // pipeline: a corrupt gzip stream is an error of the write, never an unhandled 'error' event
        const source = encoding === "gzip" ? pipeline(body, createGunzip(), () => {}) : body;
        await writeOne(vm, path, source);
        return [written(path)];
      }
      const results: ReturnType<typeof written>[] = [];
      await new Promise<void>((resolve, reject) => {
        // @fastify/busboy parses the parts as they stream; a file's stream is written to the guest before the parser
        // reads on, so an upload goes at the guest's pace and the server holds at most a chunk or two of it
        const bb = Busboy({
          headers: req.headers as BusboyHeaders,
          preservePath: true, // E2B sends each file's path as its filename
          limits: { files: MAX_PARTS, fields: 16, fieldSize: 64 << 10, headerSize: 16 << 10, parts: MAX_PARTS + 16 },
        });
        let writes = Promise.resolve();
        let failed = false;
        const fail = (e: unknown) => {
          if (failed) return;
          failed = true;
          body.unpipe(bb);
          body.resume(); // drain the rest of the request rather than leave it hanging
          reject(e);
        };
        bb.on("file", (_field, stream, filename) => {
          stream.on("error", fail); // a truncated part errors here, maybe before its write has started reading it
          if (failed) return void stream.resume();
          const path = guestPath(req.query.path && results.length === 0 ? req.query.path : filename || undefined, home);
          results.push(written(path));
          writes = writes.then(() => writeOne(vm, path, stream));
          writes.catch((e: unknown) => {
            stream.resume();
            fail(e);
          });
        });
        bb.on("filesLimit", () => fail(new E2bError(400, `at most ${MAX_PARTS} files per request`)));
        bb.on("partsLimit", () => fail(new E2bError(400, `at most ${MAX_PARTS} parts per request`)));
        bb.on("error", (e: unknown) => fail(new E2bError(400, `malformed multipart body: ${(e as Error).message}`)));
        bb.on("finish", () => writes.then(resolve, fail));
        body.on("error", fail);
        body.pipe(bb);
      });
      if (results.length === 0) throw new E2bError(400, "multipart body without any file");
      return reply.status(200).send(results);
    },
  );
};
