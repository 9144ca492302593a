/**
 * The server's bearer token: `SMOLVM_API_TOKEN`, else `--token-file`, else one generated on first start into
 * `<state dir>/server-token` (0600). Compared in constant time; one token grants everything this server can do.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { ConfigError } from "../errors.js";
import { stateDir } from "../paths.js";

export interface TokenSource {
  token: string;
  /** env, file (named by --token-file), generated (just written: print it once), stored (generated earlier). */
  from: "env" | "file" | "generated" | "stored";
  path: string | null;
}

const MIN_TOKEN = 16;

export function defaultTokenPath(): string {
  return join(stateDir(), "server-token");
}

/** Tokens look like E2B API keys (`e2b_` + hex) so E2B SDKs that check the shape accept them. */
export function newToken(): string {
  return `e2b_${randomBytes(20).toString("hex")}`;
}

function checkToken(token: string, where: string): string {
  const t = token.trim();
  if (t.length < MIN_TOKEN) throw new ConfigError(where, `the token must be at least ${MIN_TOKEN} characters`);
  if (!/^[\x21-\x7e]+$/.test(t)) throw new ConfigError(where, "the token must be printable ASCII without spaces");
  return t;
}

export function loadToken(opts: { tokenFile?: string } = {}): TokenSource {
  const env = process.env.SMOLVM_API_TOKEN;
  if (env !== undefined && env !== "") return { token: checkToken(env, "SMOLVM_API_TOKEN"), from: "env", path: null };
  if (opts.tokenFile) {
    if (!existsSync(opts.tokenFile)) throw new ConfigError("--token-file", `${opts.tokenFile} does not exist`);
    const st = statSync(opts.tokenFile);
    if (st.mode & 0o077) {
      throw new ConfigError(
        "--token-file",
        `${opts.tokenFile} is readable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`,
      );
    }
    return {
      token: checkToken(readFileSync(opts.tokenFile, "utf8"), "--token-file"),
      from: "file",
      path: opts.tokenFile,
    };
  }
  const path = defaultTokenPath();
  if (existsSync(path)) {
    chmodSync(path, 0o600);
    return { token: checkToken(readFileSync(path, "utf8"), path), from: "stored", path };
  }
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const token = newToken();
  writeFileSync(path, `${token}\n`, { mode: 0o600, flag: "wx" });
  return { token, from: "generated", path };
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** A checker that compares in constant time whatever the candidate's length. */
export function tokenChecker(token: string): (candidate: string | undefined) => boolean {
  const want = digest(token);
  return (candidate) => candidate !== undefined && timingSafeEqual(digest(candidate), want);
}

/** The credential a request carries: `Authorization: Bearer T`, or E2B's `X-API-KEY: T`. */
export function credentialOf(headers: Record<string, string | string[] | undefined>): string | undefined {
  const auth = headers.authorization;
  if (typeof auth === "string") {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  const key = headers["x-api-key"];
  return typeof key === "string" ? key : undefined;
}
