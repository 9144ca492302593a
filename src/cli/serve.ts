/** `smolvm serve`: the REST, MCP and E2B-compatible API server. */
import { chmodSync, existsSync, readFileSync, rmSync } from "node:fs";
import { isIP } from "node:net";
import type { Command } from "commander";
import { ConfigError } from "../errors.js";
import { onInterrupt } from "./cleanup.js";
import { int, parseDuration, printJson, progress } from "./output.js";

interface ServeOpts {
  host: string;
  port: string;
  socket?: string;
  tokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  insecureListen?: boolean;
  maxSandboxes?: string;
  maxMemory?: string;
  defaultTimeout?: string;
  maxTimeout?: string;
  allowPrivateCidrs?: boolean;
  logLevel: string;
  json?: boolean;
  pool?: string;
}

/** 127.0.0.0/8, ::1, localhost. */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1" || host === "::ffff:127.0.0.1";
}

export function registerServe(program: Command): void {
  program
    .command("serve")
    .description("Serve the REST API (/v1, /openapi.json), MCP (/mcp) and the E2B-compatible API")
    .option(
      "--host <ADDR>",
      "address to listen on (non-loopback needs --tls-cert/--tls-key or --insecure-listen)",
      "127.0.0.1",
    )
    .option("-p, --port <PORT>", "TCP port", "8686")
    .option("--socket <PATH>", "listen on this Unix socket (mode 0600) instead of TCP")
    .option(
      "--token-file <FILE>",
      "read the API token from FILE (mode 0600); default SMOLVM_API_TOKEN, else a generated one",
    )
    .option("--tls-cert <FILE>", "TLS certificate (PEM)")
    .option("--tls-key <FILE>", "TLS private key (PEM)")
    .option(
      "--insecure-listen",
      "allow a non-loopback address without TLS (the token then crosses the network in clear)",
    )
    .option("--max-sandboxes <N>", "sandboxes running at once on this host (default 64); more get 429")
    .option("--max-memory <MIB>", "guest memory of all sandboxes together (default 3/4 of host RAM); more get 507")
    .option("--default-timeout <D>", "lifetime of a sandbox created without one (default 15m)")
    .option("--max-timeout <D>", "longest lifetime a client may ask for (default 24h)")
    .option(
      "--allow-private-cidrs",
      "let clients allow their guests private, link-local or host addresses in network.internet.allowCidrs",
    )
    .option("--pool <N>", "keep N sandboxes of each shape asked for ready, paused (default SMOLVM_POOL, else 0)")
    .option("--log-level <LEVEL>", "fatal, error, warn, info, debug or silent", "info")
    .option("--json", "print where it listens as JSON")
    .action(async (o: ServeOpts) => serve(o));
}

async function serve(o: ServeOpts): Promise<void> {
  const { buildServer } = await import("../server/app.js");
  const { loadToken } = await import("../server/auth.js");
  const { SandboxHub, defaultLimits } = await import("../server/hub.js");

  const port = int("--port", o.port, { min: 0, max: 65535 });
  if (!o.socket && !isLoopback(o.host) && !(o.tlsCert && o.tlsKey) && !o.insecureListen) {
    throw new ConfigError(
      "--host",
      `${o.host} is not a loopback address: give --tls-cert and --tls-key, or say --insecure-listen to serve the token in clear`,
    );
  }
  if (!!o.tlsCert !== !!o.tlsKey)
    throw new ConfigError(o.tlsCert ? "--tls-key" : "--tls-cert", "--tls-cert and --tls-key go together");
  const limits = defaultLimits();
  limits.maxSandboxes = int("--max-sandboxes", o.maxSandboxes, { min: 1, max: 4096 }) ?? limits.maxSandboxes;
  limits.maxMemoryMib = int("--max-memory", o.maxMemory, { min: 128, max: 1 << 24 }) ?? limits.maxMemoryMib;
  limits.defaultTimeoutMs = parseDuration("--default-timeout", o.defaultTimeout) ?? limits.defaultTimeoutMs;
  limits.maxTimeoutMs = parseDuration("--max-timeout", o.maxTimeout) ?? limits.maxTimeoutMs;
  limits.allowPrivateCidrs = o.allowPrivateCidrs === true;
  if (limits.defaultTimeoutMs > limits.maxTimeoutMs) {
    throw new ConfigError("--default-timeout", "is longer than --max-timeout");
  }
  const poolSize = int("--pool", o.pool, { min: 0, max: 64 });
  if (poolSize !== undefined) {
    const { SmolVM } = await import("../sandbox/smolvm.js");
    SmolVM.configurePool({ size: poolSize });
  }
  const tok = loadToken({ tokenFile: o.tokenFile });
  const https = o.tlsCert && o.tlsKey ? { cert: readFileSync(o.tlsCert), key: readFileSync(o.tlsKey) } : null;
  const hub = new SandboxHub(limits);
  const app = await buildServer({
    token: tok.token,
    hub,
    https,
    logger: o.logLevel === "silent" ? false : { level: o.logLevel },
  });

  let where: string;
  if (o.socket) {
    if (existsSync(o.socket)) rmSync(o.socket); // a socket left by a server that was killed
    const old = process.umask(0o177); // the socket is 0600 from its first moment
    try {
      await app.listen({ path: o.socket });
    } finally {
      process.umask(old);
    }
    chmodSync(o.socket, 0o600);
    where = `unix:${o.socket}`;
  } else {
    await app.listen({ host: o.host, port }).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "EADDRINUSE")
        throw new ConfigError("--port", `${o.host}:${port} is in use (another smolvm serve?); pick another --port`);
      if (e.code === "EADDRNOTAVAIL") throw new ConfigError("--host", `${o.host} is not an address of this host`);
      throw e;
    });
    const addr = app.server.address();
    const p = typeof addr === "object" && addr ? addr.port : port;
    const h = o.host.includes(":") ? `[${o.host}]` : o.host;
    where = `${https ? "https" : "http"}://${h}:${p}`;
  }
  onInterrupt(async () => {
    // graceful: stop taking requests, let running ones finish; the sandboxes keep running
    await app.close();
    hub.close();
    // the sandboxes waiting in the pool are the server's own: they go with it
    const { SmolVM } = await import("../sandbox/smolvm.js");
    await SmolVM.closePool();
    if (o.socket) rmSync(o.socket, { force: true });
  });
  if (o.json) {
    printJson({
      url: where,
      tokenFile: tok.path,
      tokenFrom: tok.from,
      ...(tok.from === "generated" ? { token: tok.token } : {}),
    });
  } else {
    progress(`serving on ${where} (REST ${where}/v1, OpenAPI /openapi.json, MCP /mcp, E2B API at the root)`);
    if (tok.from === "generated") progress(`API token (saved to ${tok.path}, shown only this once): ${tok.token}`);
    else progress(`API token from ${tok.from === "env" ? "SMOLVM_API_TOKEN" : tok.path}`);
    progress(`E2B SDKs: E2B_API_URL=${where} E2B_SANDBOX_URL=${where} E2B_API_KEY=<the token> (docs/E2B.md)`);
  }
  await new Promise(() => {}); // until a signal: cleanup.ts runs the interrupt task, then exits
}
