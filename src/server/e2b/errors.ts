/** E2B's error shape, `{ code: <HTTP status>, message }`, and the mapping of SmolVM's errors onto it. */
import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";
import { toHttp } from "../errors.js";
import { EnvdAccessError } from "./access.js";

export class E2bError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "E2bError";
  }
}

export interface E2bErrorBody {
  code: number;
  message: string;
}

/** Status and body for anything a handler throws. */
export function toE2b(err: unknown): E2bErrorBody {
  if (err instanceof E2bError) return { code: err.status, message: err.message };
  // E2B's proxy answers 502 for a sandbox it cannot reach; the SDK reads that as "not running"
  if (err instanceof EnvdAccessError) return { code: err.kind === "unauthenticated" ? 401 : 502, message: err.message };
  const e = toHttp(err);
  return { code: e.status, message: e.body.message };
}

/** The error handler of the E2B plugins: E2B's shape whatever failed (validation, auth, SmolVM). */
export function e2bErrorHandler(err: FastifyError | Error, req: FastifyRequest, reply: FastifyReply) {
  const body = toE2b(err);
  if (body.code >= 500 && body.code !== 502) req.log.error({ err }, "E2B request failed");
  return reply.status(body.code).send(body);
}
