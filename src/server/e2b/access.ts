/**
 * Who may use a sandbox's envd API. Each sandbox's `envdAccessToken` is an HMAC of its id under the server token:
 * it is checked without any storage, differs per sandbox, and changes with the server token. Every envd route
 * (files, processes, file system) requires it in `X-Access-Token`; the sandbox is named by `E2b-Sandbox-Id`.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { VMNotFoundError } from "../../errors.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";

export function envdAccessToken(serverToken: string, sandboxId: string): string {
  return createHmac("sha256", serverToken).update(`smolvm-e2b-envd:${sandboxId}`).digest("base64url");
}

const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Why an envd request is refused: the sandbox is not there (E2B's proxy answers 502) or the token is wrong. */
export class EnvdAccessError extends Error {
  constructor(
    readonly kind: "unknown_sandbox" | "unauthenticated",
    message: string,
  ) {
    super(message);
    this.name = "EnvdAccessError";
  }
}

type HeaderGetter = (name: string) => string | null | undefined;

/** The user an envd request asks for: `Authorization: Basic base64("user:")`; undefined → the image's default. */
export function basicUser(authorization: string | null | undefined): string | undefined {
  if (!authorization) return undefined;
  const m = /^Basic\s+([A-Za-z0-9+/=]{1,400})$/i.exec(authorization.trim());
  if (!m?.[1]) return undefined;
  const decoded = Buffer.from(m[1], "base64").toString("utf8");
  const user = decoded.split(":")[0] ?? "";
  return /^[a-z_][a-z0-9_-]{0,31}$|^[0-9]{1,10}$/i.test(user) ? user : undefined;
}

/**
 * The sandbox id of an envd request whose `X-Access-Token` is that sandbox's; throws `EnvdAccessError`. Synchronous
 * and cheap, so it runs in `onRequest`, before any body is read: without the token nothing is buffered.
 */
export function checkEnvdToken(ctx: ServerContext, header: HeaderGetter): string {
  const id = header("e2b-sandbox-id");
  if (!id || !SANDBOX_ID.test(id))
    throw new EnvdAccessError("unknown_sandbox", "missing or invalid E2b-Sandbox-Id header");
  const token = header("x-access-token") ?? "";
  const want = Buffer.from(envdAccessToken(ctx.token, id));
  const got = Buffer.from(token);
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new EnvdAccessError("unauthenticated", "invalid or missing X-Access-Token for this sandbox");
  }
  return id;
}

/**
 * The running sandbox an envd request is for, after checking its access token. Throws `EnvdAccessError`
 * (unknown_sandbox also for a paused or stopped one: its envd is not reachable, as with E2B).
 */
export async function envdSandbox(ctx: ServerContext, header: HeaderGetter): Promise<SmolVM> {
  const id = checkEnvdToken(ctx, header);
  let vm: SmolVM;
  try {
    vm = await ctx.hub.get(id);
  } catch (e) {
    if (e instanceof VMNotFoundError) throw new EnvdAccessError("unknown_sandbox", `sandbox ${id} not found`);
    throw e;
  }
  const status = vm.status;
  if (status !== "running") throw new EnvdAccessError("unknown_sandbox", `sandbox ${id} is ${status}`);
  return vm;
}

/**
 * `GET /health` with `E2b-Sandbox-Id`: 204 when the sandbox runs (envd's answer), 502 when it does not (E2B's
 * proxy's), 401 without the sandbox's access token (so sandbox ids cannot be probed).
 */
export async function sandboxHealth(
  ctx: ServerContext,
  header: HeaderGetter,
): Promise<{ code: 204 | 401 | 502; message: string }> {
  try {
    await envdSandbox(ctx, header);
    return { code: 204, message: "" };
  } catch (e) {
    if (e instanceof EnvdAccessError) return { code: e.kind === "unauthenticated" ? 401 : 502, message: e.message };
    throw e;
  }
}
