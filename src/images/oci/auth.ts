/**
 * Registry credentials and the token dance.
 *
 * Credentials come from SMOLVM_REGISTRY_USER + SMOLVM_REGISTRY_PASSWORD (these win), else from the Docker CLI's
 * config.json ($DOCKER_CONFIG/config.json or ~/.docker/config.json): `auths[host]` with `auth` (base64
 * "user:pass"), `username`/`password`, or `identitytoken`. Credential helpers (credsStore/credHelpers) are not run;
 * when one is configured for the registry the error hint says so.
 *
 * Where credentials may go: Basic credentials are sent to the registry host itself (Basic challenge) or to the
 * token service named by the registry's Bearer challenge; the registry then gets only the short-lived token.
 * Redirects to other hosts (blob CDNs) get no Authorization header at all; http.ts enforces that.
 */
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { DOCKER_HUB } from "./reference.js";

export interface Credentials {
  username?: string;
  password?: string;
  /** An OAuth2 refresh token (Docker's "identitytoken"), exchanged at the token service. */
  identityToken?: string;
}

export interface CredentialLookup {
  creds: Credentials | null;
  /** Human text for error messages: where credentials came from, or where they were looked for. */
  hint: string;
}

const HUB_KEYS = new Set(["index.docker.io", "docker.io", "registry-1.docker.io"]);

/** "https://index.docker.io/v1/" → "index.docker.io"; "Host:5000" → "host:5000". */
function keyHost(key: string): string {
  return key
    .replace(/^[a-z]+:\/\//i, "")
    .split("/")[0]!
    .toLowerCase();
}

function keyMatches(key: string, registry: string): boolean {
  const host = keyHost(key);
  return registry === DOCKER_HUB ? HUB_KEYS.has(host) : host === registry.toLowerCase();
}

export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.DOCKER_CONFIG || join(homedir(), ".docker"), "config.json");
}

/** Find credentials for `registry` (as in ImageRef.registry). Never throws; problems end up in `hint`. */
export function loadCredentials(registry: string, env: NodeJS.ProcessEnv = process.env): CredentialLookup {
  const user = env.SMOLVM_REGISTRY_USER;
  const password = env.SMOLVM_REGISTRY_PASSWORD;
  // environment credentials belong to one registry (SMOLVM_REGISTRY_HOST), never sent to whatever registry an
  // image reference names
  const envHost = env.SMOLVM_REGISTRY_HOST?.trim().toLowerCase();
  if (user && password !== undefined && envHost && keyMatches(envHost, registry)) {
    return {
      creds: { username: user, password },
      hint: "credentials were taken from SMOLVM_REGISTRY_USER / SMOLVM_REGISTRY_PASSWORD",
    };
  }
  const path = dockerConfigPath(env);
  const howTo =
    `set SMOLVM_REGISTRY_HOST=${registry} with SMOLVM_REGISTRY_USER and SMOLVM_REGISTRY_PASSWORD, or add an "auths" entry for ${registry} ` +
    `to ${path} (e.g. with docker login)`;
  let config: unknown;
  try {
    config = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "does not exist" : `is unreadable: ${String(e)}`;
    return { creds: null, hint: `no credentials: ${path} ${why}; ${howTo}` };
  }
  if (typeof config !== "object" || config === null) {
    return { creds: null, hint: `no credentials: ${path} is not a JSON object; ${howTo}` };
  }
  const cfg = config as { auths?: unknown; credsStore?: unknown; credHelpers?: unknown };

  let problem = "";
  if (typeof cfg.auths === "object" && cfg.auths !== null) {
    for (const [key, entry] of Object.entries(cfg.auths as Record<string, unknown>)) {
      if (!keyMatches(key, registry) || typeof entry !== "object" || entry === null) continue;
      const e = entry as Record<string, unknown>;
      const where = `credentials were taken from ${path} (auths["${key}"])`;
      if (typeof e.identitytoken === "string" && e.identitytoken !== "") {
        const username = typeof e.username === "string" ? e.username : undefined;
        return { creds: { identityToken: e.identitytoken, username }, hint: where };
      }
      if (typeof e.auth === "string" && e.auth !== "") {
        const decoded = Buffer.from(e.auth, "base64").toString("utf8");
        const colon = decoded.indexOf(":");
        if (colon > 0) {
          return {
            creds: { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) },
            hint: where,
          };
        }
        problem = `; auths["${key}"].auth in ${path} is not base64 of "user:password"`;
        continue;
      }
      if (typeof e.username === "string" && typeof e.password === "string") {
        return { creds: { username: e.username, password: e.password }, hint: where };
      }
    }
  }

  // A credential helper would hold the secret; we do not execute helpers.
  let helper: string | null = null;
  if (typeof cfg.credHelpers === "object" && cfg.credHelpers !== null) {
    for (const [key, name] of Object.entries(cfg.credHelpers as Record<string, unknown>)) {
      if (keyMatches(key, registry) && typeof name === "string") helper = name;
    }
  }
  if (helper === null && typeof cfg.credsStore === "string" && cfg.credsStore !== "") helper = cfg.credsStore;
  if (helper !== null) {
    problem +=
      `; ${path} delegates credentials to the helper "docker-credential-${helper}", which SmolVM does not ` +
      `support - put inline "auth" in "auths" or use the environment variables`;
  }
  return { creds: null, hint: `no credentials for ${registry} found${problem}; ${howTo}` };
}

/** "Basic <base64 user:pass>", or null without a username/password pair. */
export function basicAuthorization(creds: Credentials | null): string | null {
  if (!creds?.username || creds.password === undefined) return null;
  return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString("base64")}`;
}

export interface Challenge {
  /** Lowercased: "bearer", "basic". */
  scheme: string;
  params: Record<string, string>;
}

/**
 * Parse a WWW-Authenticate header: `Bearer realm="https://x/token",service="x",scope="repository:a:pull"`.
 * Several challenges may be listed; parameters are name=token or name="quoted string".
 */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  const tokenRe = /[A-Za-z0-9!#$%&'*+.^_`|~-]+/y;
  const quotedRe = /"((?:[^"\\]|\\.)*)"/y;
  // Unquoted values should be tokens, but registries write bare URLs too; take everything up to , or space.
  const bareRe = /[^,\s]*/y;
  let current: Challenge | null = null;
  let i = 0;
  const skip = () => {
    while (i < header.length && /[\s,]/.test(header[i]!)) i++;
  };
  while (true) {
    skip();
    tokenRe.lastIndex = i;
    const name = tokenRe.exec(header);
    if (!name) break;
    i = tokenRe.lastIndex;
    while (header[i] === " ") i++;
    if (header[i] !== "=") {
      // A bare word starts a new challenge ("Bearer", "Basic").
      current = { scheme: name[0].toLowerCase(), params: {} };
      out.push(current);
      continue;
    }
    i++;
    while (header[i] === " ") i++;
    let value: string;
    quotedRe.lastIndex = i;
    bareRe.lastIndex = i;
    const quoted = quotedRe.exec(header);
    if (quoted) {
      value = quoted[1]!.replace(/\\(.)/g, "$1");
      i = quotedRe.lastIndex;
    } else {
      value = bareRe.exec(header)?.[0] ?? "";
      i = bareRe.lastIndex;
    }
    if (current) current.params[name[0].toLowerCase()] = value;
  }
  return out;
}

interface CachedToken {
  value: string;
  expiresAt: number;
}

/** Bearer tokens by "<registry> <scope>". In memory only; tokens are short-lived. */
const tokenCache = new Map<string, CachedToken>();

export function cachedToken(registry: string, scope: string): string | null {
  const key = `${registry} ${scope}`;
  const t = tokenCache.get(key);
  if (!t) return null;
  if (Date.now() >= t.expiresAt) {
    tokenCache.delete(key);
    return null;
  }
  return t.value;
}

/** Forget every cached token (tests; after credentials changed). */
export function clearTokenCache(): void {
  tokenCache.clear();
}

/** The way http.ts sends one request (timeouts, error mapping); injected so this module stays transport-free. */
export type Send = (url: string, init: RequestInit) => Promise<Response>;

export type TokenResult = { ok: true; token: string } | { ok: false; status: number; message: string };

/**
 * Get a Bearer token for `scope` from the realm of a Bearer challenge and cache it. With an identity token this is
 * an OAuth2 refresh-token POST; otherwise a GET, with Basic credentials when we have them, anonymous when not.
 */
export async function fetchToken(
  registry: string,
  challenge: Challenge,
  scope: string,
  creds: Credentials | null,
  send: Send,
): Promise<TokenResult> {
  const realm = challenge.params.realm;
  if (!realm) return { ok: false, status: 0, message: "the Bearer challenge names no token realm" };
  const service = challenge.params.service;
  let res: Response;
  if (creds?.identityToken) {
    const form = new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: creds.identityToken,
      client_id: "smolvm",
      scope,
    });
    if (service) form.set("service", service);
    res = await send(realm, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    });
  } else {
    const url = new URL(realm);
    if (service) url.searchParams.set("service", service);
    url.searchParams.set("scope", scope);
    const headers: Record<string, string> = {};
    const basic = basicAuthorization(creds);
    if (basic) headers.Authorization = basic;
    res = await send(url.toString(), { headers });
  }
  const text = await readSmall(res).catch(() => "");
  if (!res.ok) {
    return { ok: false, status: res.status, message: `token service ${new URL(realm).host} answered ${res.status}` };
  }
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return { ok: false, status: res.status, message: "token service answered with something other than JSON" };
  }
  const token = typeof body.token === "string" ? body.token : body.access_token;
  if (typeof token !== "string" || token === "") {
    return { ok: false, status: res.status, message: "token service answer has no token" };
  }
  // Docker's rule: tokens live at least 60 s; refresh a little early.
  const lifetime = typeof body.expires_in === "number" && body.expires_in > 60 ? body.expires_in : 60;
  tokenCache.set(`${registry} ${scope}`, { value: token, expiresAt: Date.now() + (lifetime - 10) * 1000 });
  return { ok: true, token };
}

/** A token service's answer, at most 1 MiB and with no pause over 60 s (a hostile one cannot hang or flood us). */
async function readSmall(res: Response): Promise<string> {
  const reader = res.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("token service stalled")), 60_000);
      });
      const r = await Promise.race([reader.read(), stalled]).finally(() => clearTimeout(timer));
      if (r.done) break;
      total += r.value.length;
      if (total > 1 << 20) throw new Error("token service answer over 1 MiB");
      chunks.push(r.value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks).toString("utf8");
}
