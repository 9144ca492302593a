/**
 * `smolvm mcp`: an MCP server on stdin/stdout for one client (Claude Desktop, Claude Code, any MCP client that
 * spawns servers). Its sandboxes belong to this process: they are deleted when stdin closes, on SIGTERM/SIGINT, and
 * by their VM supervisors if this process dies any other way (`kill -9`). Only MCP JSON-RPC goes to stdout.
 */

import { randomUUID } from "node:crypto";
import type { Command } from "commander";
import { ConfigError } from "../errors.js";
import { exitNow, onInterrupt } from "./cleanup.js";
import { int, parseDuration } from "./output.js";

interface McpOpts {
  maxSandboxes?: string;
  maxMemory?: string;
  defaultTimeout: string;
  maxTimeout?: string;
}

export function registerMcp(program: Command): void {
  program
    .command("mcp")
    .description("Serve MCP (Model Context Protocol) on stdin/stdout: tools to create sandboxes and run code in them")
    .option("--max-sandboxes <N>", "sandboxes this client may have at once (default 16)")
    .option("--max-memory <MIB>", "guest memory of all sandboxes on this host together (default 3/4 of host RAM)")
    .option("--default-timeout <D>", "lifetime of a sandbox created without one", "30m")
    .option("--max-timeout <D>", "longest lifetime a client may ask for (default 24h)")
    .action(async (o: McpOpts) => serveStdio(o));
}

function log(msg: string): void {
  process.stderr.write(`smolvm mcp: ${msg}\n`);
}

async function serveStdio(o: McpOpts): Promise<void> {
  const { StdioServerTransport } = await import("@modelcontextprotocol/sdk/server/stdio.js");
  const { SandboxHub, defaultLimits } = await import("../server/hub.js");
  const { McpSession } = await import("../server/mcp/session.js");
  const { buildMcpServer } = await import("../server/mcp/server.js");

  // stdout carries JSON-RPC only: anything logged goes to stderr
  console.log = console.info = console.debug = console.error;
  const limits = defaultLimits();
  const perClient = int("--max-sandboxes", o.maxSandboxes, { min: 1, max: 4096 }) ?? 16;
  limits.maxMemoryMib = int("--max-memory", o.maxMemory, { min: 128, max: 1 << 24 }) ?? limits.maxMemoryMib;
  limits.defaultTimeoutMs = parseDuration("--default-timeout", o.defaultTimeout);
  limits.maxTimeoutMs = parseDuration("--max-timeout", o.maxTimeout) ?? limits.maxTimeoutMs;
  if (limits.defaultTimeoutMs > limits.maxTimeoutMs) {
    throw new ConfigError("--default-timeout", "is longer than --max-timeout");
  }
  const hub = new SandboxHub(limits);
  const session = new McpSession({ hub, id: `stdio-${randomUUID()}`, maxSandboxes: perClient });
  const server = buildMcpServer(session);
  const transport = new StdioServerTransport();

  let ended: Promise<void> | null = null;
  const end = () => {
    ended ??= (async () => {
      await session.close();
      hub.close();
    })();
    return ended;
  };
  onInterrupt(end); // SIGTERM, SIGINT, SIGHUP, a closed stdout: sandboxes deleted before the exit
  const finish = (why: string) => {
    log(`${why}; deleting this session's sandboxes`);
    void end().then(() => exitNow(0));
  };
  process.stdin.once("end", () => finish("stdin closed"));
  transport.onclose = () => finish("transport closed");
  await server.connect(transport);
  log(`serving MCP on stdio (session ${session.id}; sandboxes live ${limits.defaultTimeoutMs / 1000} s by default)`);
  await new Promise(() => {}); // until stdin closes or a signal: exitNow ends the process
}
