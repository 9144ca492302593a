/**
 * HTTP transport for one repository of one registry: scheme choice (https unless insecure), a 30 s limit for
 * connecting and getting headers, a stall limit while reading bodies, manual redirects that never carry
 * credentials to another origin, the 401 → authenticate → retry-once flow, and mapping of failures to the typed
 * errors of errors.ts.
 */
import { ImageError } from "../../errors.js";
import type { Progress } from "../../util/run.js";
import {
  basicAuthorization,
  type CredentialLookup,
  cachedToken,
  fetchToken,
  loadCredentials,
  parseChallenges,
} from "./auth.js";
import { RegistryAuthError, RegistryError, RegistryUnreachableError } from "./errors.js";
import type { Platform } from "./manifest.js";
import { apiHost, type ImageRef } from "./reference.js";

export interface RegistryOptions {
  /** Use plain http for this registry. Also enabled per host:port by SMOLVM_INSECURE_REGISTRIES. */
  insecure?: boolean;
  /** Platform to pick from an index; default hostPlatform(). */
  platform?: Platform;
  progress?: Progress;
  signal?: AbortSignal;
}

/** Connecting and receiving response headers must finish within this. */
export const HEADER_TIMEOUT_MS = 30_000;
/** While reading a body, no new bytes for this long aborts the transfer. */
export const STALL_TIMEOUT_MS = 60_000;
const MAX_REDIRECTS = 10;

/** Whether `registry` is spoken to over plain http. */
export function isInsecure(registry: string, opts: RegistryOptions, env: NodeJS.ProcessEnv = process.env): boolean {
  if (opts.insecure) return true;
  const list = (env.SMOLVM_INSECURE_REGISTRIES ?? "")
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  return list.includes(registry.toLowerCase()) || list.includes(apiHost(registry).toLowerCase());
}

/** Parse the registry's error body `{"errors":[{"code","message"}]}`; tolerant of anything else. */
export async function readRegistryErrors(res: Response): Promise<{ codes: string[]; message: string | null }> {
  let text = "";
  try {
    text = new TextDecoder().decode(await readCapped(res, 64 * 1024, STALL_TIMEOUT_MS, "error body"));
  } catch {
    return { codes: [], message: null };
  }
  try {
    const body = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    if (Array.isArray(body.errors)) {
      const errs = body.errors.filter((e) => typeof e === "object" && e !== null);
      const codes = errs.map((e) => String(e.code ?? ""));
      const message = errs.map((e) => [e.code, e.message].filter(Boolean).join(": ")).join("; ");
      return { codes, message: message || null };
    }
  } catch {
    // not JSON
  }
  const trimmed = text.trim().slice(0, 200);
  return { codes: [], message: trimmed || null };
}

/**
 * Yield a body's chunks; fail if no bytes arrive for `stallMs`. Cancelling the reader on stall also releases
 * the connection.
 */
export async function* bodyChunks(res: Response, stallMs: number, what: string): AsyncGenerator<Uint8Array> {
  if (!res.body) return;
  const reader = res.body.getReader();
  try {
    while (true) {
      let timer: NodeJS.Timeout | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new ImageError(`${what}: no data for ${stallMs / 1000} s`)), stallMs);
      });
      let r: Awaited<ReturnType<typeof reader.read>>;
      try {
        r = await Promise.race([reader.read(), stalled]);
      } finally {
        clearTimeout(timer);
      }
      if (r.done) return;
      yield r.value;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Read a whole body, refusing more than `max` bytes whatever Content-Length says. */
export async function readCapped(res: Response, max: number, stallMs: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > max) {
    await res.body?.cancel().catch(() => {});
    throw new ImageError(`${what} is too large: ${declared} bytes, the limit is ${max}`);
  }
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of bodyChunks(res, stallMs, what)) {
    total += chunk.length;
    if (total > max) throw new ImageError(`${what} is too large: more than ${max} bytes, the limit is ${max}`);
    parts.push(chunk);
  }
  return Buffer.concat(parts);
}

function describeNetworkError(e: unknown): { reason: string; tls: boolean } {
  const err = e as { message?: string; cause?: { code?: string; message?: string } };
  const code = err.cause?.code ?? "";
  const detail = err.cause?.message ?? err.message ?? String(e);
  const tls = /SSL|TLS|CERT/i.test(code) || /wrong version number|packet length too long/i.test(detail);
  return { reason: code ? `${code} (${detail.split("\n")[0]})` : detail, tls };
}

/** Talks to one repository; keeps the Authorization it earned for later requests. */
export class RegistryClient {
  readonly base: string;
  private readonly origin: string;
  private readonly scope: string;
  private authorization: string | null = null;
  private lookup: CredentialLookup | null = null;

  constructor(
    readonly ref: ImageRef,
    readonly opts: RegistryOptions,
  ) {
    const scheme = isInsecure(ref.registry, opts) ? "http" : "https";
    this.base = `${scheme}://${apiHost(ref.registry)}`;
    this.origin = new URL(this.base).origin;
    this.scope = `repository:${ref.repository}:pull`;
  }

  private credentials(): CredentialLookup {
    this.lookup ??= loadCredentials(this.ref.registry);
    return this.lookup;
  }

  /**
   * One request, no redirects followed. Network failures become RegistryUnreachableError; the caller's abort
   * is rethrown as is. The header timeout ends when headers arrive, so long bodies are not cut off.
   */
  readonly send = async (url: string, init: RequestInit): Promise<Response> => {
    const headerTimeout = new AbortController();
    const timer = setTimeout(() => headerTimeout.abort(), HEADER_TIMEOUT_MS);
    const signals = [headerTimeout.signal];
    if (this.opts.signal) signals.push(this.opts.signal);
    try {
      return await fetch(url, { ...init, redirect: "manual", signal: AbortSignal.any(signals) });
    } catch (e) {
      this.opts.signal?.throwIfAborted();
      if (headerTimeout.signal.aborted) {
        throw new RegistryUnreachableError(this.ref.registry, url, `no response within ${HEADER_TIMEOUT_MS / 1000} s`);
      }
      const { reason, tls } = describeNetworkError(e);
      throw new RegistryUnreachableError(this.ref.registry, url, reason, {
        cause: e,
        plainHttpSuspected: tls && url.startsWith("https:"),
      });
    } finally {
      clearTimeout(timer);
    }
  };

  /** GET following redirects by hand: Authorization goes only to the registry's own origin. */
  private async follow(path: string, accept: string | undefined): Promise<Response> {
    let url = `${this.base}${path}`;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const headers: Record<string, string> = {};
      if (accept) headers.Accept = accept;
      const sameOrigin = new URL(url).origin === this.origin;
      if (sameOrigin && this.authorization) headers.Authorization = this.authorization;
      const res = await this.send(url, { headers });
      const location = res.headers.get("location");
      if (![301, 302, 303, 307, 308].includes(res.status) || !location) return res;
      await res.body?.cancel().catch(() => {});
      url = new URL(location, url).toString();
    }
    throw new RegistryError(this.ref.registry, 310, url, `more than ${MAX_REDIRECTS} redirects`);
  }

  /** GET `path` (starting with /v2/), authenticating on a 401 challenge and retrying once. */
  async get(path: string, accept?: string): Promise<Response> {
    if (!this.authorization) {
      const token = cachedToken(this.ref.registry, this.scope);
      if (token) this.authorization = `Bearer ${token}`;
    }
    let res = await this.follow(path, accept);
    if (res.status === 401) {
      const challengeHeader = res.headers.get("www-authenticate") ?? "";
      await res.body?.cancel().catch(() => {});
      await this.authenticate(challengeHeader);
      res = await this.follow(path, accept);
    }
    if (res.status === 401 || res.status === 403) {
      const { message } = await readRegistryErrors(res);
      const tried = this.authorization ? "after authenticating" : "without credentials";
      throw new RegistryAuthError(
        this.ref.registry,
        `HTTP ${res.status} ${tried} for ${this.ref.repository}${message ? ` (${message})` : ""}` +
          " - the repository may not exist or may need other credentials",
        this.credentials().hint,
      );
    }
    return res;
  }

  /** Earn an Authorization header from a WWW-Authenticate challenge. */
  private async authenticate(header: string): Promise<void> {
    const challenges = parseChallenges(header);
    const lookup = this.credentials();
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      const realm = bearer.params.realm ?? "";
      // Credentials over plain http only when the registry itself is used over plain http.
      if (!/^https:/i.test(realm) && !(this.base.startsWith("http:") && /^http:/i.test(realm))) {
        throw new RegistryAuthError(this.ref.registry, `refusing token realm "${realm}" (not https)`, lookup.hint);
      }
      const sendToken = (url: string, init: RequestInit) => this.send(url, init);
      const r = await fetchToken(this.ref.registry, bearer, this.scope, lookup.creds, sendToken);
      if (!r.ok) {
        const who = lookup.creds ? "with the credentials given" : "anonymously";
        throw new RegistryAuthError(this.ref.registry, `could not get a pull token ${who}: ${r.message}`, lookup.hint);
      }
      this.authorization = `Bearer ${r.token}`;
      return;
    }
    if (challenges.some((c) => c.scheme === "basic")) {
      const basic = basicAuthorization(lookup.creds);
      if (!basic) throw new RegistryAuthError(this.ref.registry, "the registry requires a login", lookup.hint);
      this.authorization = basic;
      return;
    }
    throw new RegistryAuthError(
      this.ref.registry,
      `HTTP 401 with no usable challenge (WWW-Authenticate: ${header || "none"})`,
      lookup.hint,
    );
  }

  /** Turn a non-OK response into a RegistryError carrying the registry's own message. */
  async failure(res: Response, path: string): Promise<RegistryError> {
    const { message } = await readRegistryErrors(res);
    return new RegistryError(this.ref.registry, res.status, `${this.base}${path}`, message);
  }
}
