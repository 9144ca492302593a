/**
 * A real OCI registry for tests: Debian's docker-registry (distribution 2.8) as a plain child process on
 * 127.0.0.1, with its own config and storage in a temp dir. With `auth: "token"` it uses the registry's "silly"
 * auth, which sends a real Bearer challenge pointing at a tiny token server started here; that server hands out
 * tokens only for Basic `user:secret` and counts requests. (Silly auth then accepts any Authorization header, so
 * the token's value is not checked by the registry; the token server is where credentials are enforced.)
 *
 * No side effects at import time: node --test runs every .js under dist/test.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { type AddressInfo, createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const REGISTRY_BIN = "/usr/bin/docker-registry";
export const TOKEN_USER = "user";
export const TOKEN_PASSWORD = "secret";

export function registryAvailable(): boolean {
  return existsSync(REGISTRY_BIN);
}

export interface TestRegistry {
  /** "127.0.0.1:PORT", usable as an ImageRef registry (plain http: pass insecure). */
  host: string;
  storageDir: string;
  /** Requests the token server received (only with auth: "token"). */
  readonly tokenRequests: number;
  /** The `scope` query parameter of each token request, in order. */
  readonly tokenScopes: string[];
  stop(): Promise<void>;
}

/** A port that was free a moment ago (bind port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createTcpServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

interface TokenServer {
  server: Server;
  port: number;
  requests: number;
  scopes: string[];
}

async function startTokenServer(): Promise<TokenServer> {
  const expected = `Basic ${Buffer.from(`${TOKEN_USER}:${TOKEN_PASSWORD}`).toString("base64")}`;
  const state: TokenServer = { server: createServer(), port: 0, requests: 0, scopes: [] };
  state.server.on("request", (req, res) => {
    state.requests++;
    state.scopes.push(new URL(req.url ?? "/", "http://x").searchParams.get("scope") ?? "");
    res.setHeader("Content-Type", "application/json");
    if (req.headers.authorization !== expected) {
      res.statusCode = 401;
      res.end(JSON.stringify({ details: "bad or missing credentials" }));
      return;
    }
    res.end(JSON.stringify({ token: `tok-${randomBytes(8).toString("hex")}`, expires_in: 300 }));
  });
  await new Promise<void>((resolve, reject) => {
    state.server.once("error", reject);
    state.server.listen(0, "127.0.0.1", () => resolve());
  });
  state.port = (state.server.address() as AddressInfo).port;
  return state;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Start a registry and wait until GET /v2/ answers (200, or 401 with token auth). */
export async function startRegistry(opts: { auth?: "token" } = {}): Promise<TestRegistry> {
  const dir = mkdtempSync(join(tmpdir(), "smolvm-registry-"));
  const storageDir = join(dir, "storage");
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const token = opts.auth === "token" ? await startTokenServer() : null;

  const authYaml = token
    ? `auth:\n  silly:\n    realm: http://127.0.0.1:${token.port}/token\n    service: smolvm-test-registry\n`
    : "";
  const config =
    "version: 0.1\n" +
    "log:\n  level: error\n  accesslog:\n    disabled: true\n" +
    `storage:\n  filesystem:\n    rootdirectory: ${storageDir}\n  delete:\n    enabled: true\n` +
    `http:\n  addr: ${host}\n` +
    authYaml;
  const configPath = join(dir, "config.yml");
  writeFileSync(configPath, config);
  const logPath = join(dir, "registry.log");
  const log = openSync(logPath, "w");
  const child = spawn(REGISTRY_BIN, ["serve", configPath], { stdio: ["ignore", log, log] });
  closeSync(log); // the child has its own copy
  const logTail = () => (existsSync(logPath) ? readFileSync(logPath, "utf8").slice(-2000) : "");

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      if (!(await waitExit(child, 5000))) {
        child.kill("SIGKILL");
        await waitExit(child, 5000);
      }
    }
    if (token) await new Promise<void>((resolve) => token.server.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const tail = logTail();
      await stop();
      throw new Error(`docker-registry exited early (${child.exitCode ?? child.signalCode}):\n${tail}`);
    }
    try {
      const res = await fetch(`http://${host}/v2/`, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (res.status === 200 || (token && res.status === 401)) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      const tail = logTail();
      await stop();
      throw new Error(`docker-registry did not answer on ${host} within 15 s:\n${tail}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  return {
    host,
    storageDir,
    get tokenRequests() {
      return token?.requests ?? 0;
    },
    get tokenScopes() {
      return token?.scopes ?? [];
    },
    stop,
  };
}

/** Where the registry keeps a blob's bytes on disk (tests corrupt blobs there). */
export function blobDataPath(storageDir: string, digest: string): string {
  const hex = digest.replace(/^sha256:/, "");
  return join(storageDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
}
