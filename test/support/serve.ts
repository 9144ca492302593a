/** A `smolvm serve` child process on a loopback port of its own, with its own token file, for the server tests. */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BIN = join(import.meta.dirname, "..", "..", "..", "bin", "smolvm.js");

export interface Served {
  url: string;
  token: string;
  proc: ChildProcess;
  /** Headers carrying the token (and JSON content type). */
  auth: Record<string, string>;
  /** SIGTERM and wait. */
  stop(): Promise<void>;
  /** SIGKILL and wait. */
  kill9(): Promise<void>;
  /** fetch relative to the server, with the token. */
  api(path: string, init?: RequestInit & { json?: unknown }): Promise<Response>;
}

/** Token folders made by this test process, removed when it exits (a token outlives the servers that share it). */
const tokenDirs: string[] = [];
process.on("exit", () => {
  for (const d of tokenDirs) rmSync(d, { recursive: true, force: true });
});

export function newTokenFile(token = `e2b_${randomBytes(20).toString("hex")}`): { file: string; token: string } {
  const dir = mkdtempSync(join(tmpdir(), "smolvm-token-"));
  tokenDirs.push(dir);
  const file = join(dir, "token");
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return { file, token };
}

/** Start a server; `tok: null` lets it find or generate its token (then `token` is what it printed, if anything). */
export async function serve(
  args: string[] = [],
  tok: { file: string; token: string } | null = newTokenFile(),
  env: Record<string, string> = {},
): Promise<Served & { printed: Record<string, unknown> }> {
  const proc = spawn(
    process.execPath,
    [BIN, "serve", "--port", "0", "--json", "--log-level", "warn", ...(tok ? ["--token-file", tok.file] : []), ...args],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SMOLVM_API_TOKEN: "", ...env } },
  );
  let out = "";
  let err = "";
  proc.stderr?.on("data", (b: Buffer) => {
    err = (err + b.toString()).slice(-8000);
  });
  let printed: Record<string, unknown> = {};
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000);
    proc.stdout?.on("data", (b: Buffer) => {
      out += b.toString();
      try {
        const j = JSON.parse(out) as { url?: string; error?: { message: string } };
        clearTimeout(t);
        printed = j;
        if (j.url) resolve(j.url);
        else reject(new Error(`serve failed: ${j.error?.message ?? out}`));
      } catch {
        // not all of it yet
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`serve exited ${code}: ${err}`));
    });
  });
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  const token = tok?.token ?? String(printed.token ?? "");
  const auth = { authorization: `Bearer ${token}` };
  return {
    url,
    token,
    printed,
    proc,
    auth,
    async stop() {
      proc.kill("SIGTERM");
      await exited;
    },
    async kill9() {
      proc.kill("SIGKILL");
      await exited;
    },
    api(path, init = {}) {
      const headers: Record<string, string> = { ...auth, ...((init.headers as Record<string, string>) ?? {}) };
      let body = init.body;
      if (init.json !== undefined) {
        headers["content-type"] = "application/json";
        body = JSON.stringify(init.json);
      }
      return fetch(`${url}${path}`, { ...init, headers, body });
    },
  };
}
