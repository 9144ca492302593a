/**
 * MCP with the official SDK's client, against real VMs: `smolvm mcp` over stdio and `/mcp` over Streamable HTTP.
 * Tools listed with schemas; create, run, write/read; bounded output and files; errors as isError naming the
 * argument; a session's sandboxes invisible to other sessions and deleted when it ends (DELETE, stdin closed, server
 * shutdown); the token required.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { SmolVM } from "../src/index.js";
import { buildServer } from "../src/server/app.js";
import { SandboxHub } from "../src/server/hub.js";
import { cliPath, isolatedState } from "./helpers.js";

isolatedState();

const TOOLS = [
  "browser_click",
  "browser_open",
  "browser_screenshot",
  "browser_text",
  "browser_type",
  "create_sandbox",
  "delete_sandbox",
  "expose_port",
  "fork_sandbox",
  "list_files",
  "list_sandboxes",
  "read_file",
  "restore_snapshot",
  "run_command",
  "snapshot_sandbox",
  "write_file",
];

type Structured = Record<string, unknown>;

async function call(client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return (await client.callTool({ name, arguments: args })) as CallToolResult;
}

/** A tool call that must succeed: its structured content. */
async function ok(client: Client, name: string, args: Record<string, unknown>): Promise<Structured> {
  const r = await call(client, name, args);
  assert.notEqual(r.isError, true, `${name} failed: ${JSON.stringify(r.content)}`);
  assert.ok(r.structuredContent, `${name}: no structured content`);
  const text = r.content[0];
  assert.ok(text?.type === "text" && text.text.length > 0, `${name}: no text rendering`);
  return r.structuredContent as Structured;
}

/** A tool call that must fail: its message. */
async function failure(client: Client, name: string, args: Record<string, unknown>): Promise<string> {
  const r = await call(client, name, args);
  assert.equal(r.isError, true, `${name} should fail: ${JSON.stringify(r)}`);
  const t = r.content[0];
  return t?.type === "text" ? t.text : "";
}

const exists = async (id: string) => (await SmolVM.list()).some((v) => v.vmId === id);

async function waitGone(id: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (await exists(id)) {
    if (Date.now() > end) assert.fail(`sandbox ${id} still exists ${ms} ms after its session ended`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** What every transport must do: tools and schemas, create, run, files, truncation, argument errors. */
async function basics(client: Client): Promise<string> {
  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((t) => t.name).sort(), TOOLS);
  for (const t of tools) {
    assert.equal(t.inputSchema.type, "object", t.name);
    assert.ok(t.outputSchema, `${t.name} has an output schema`);
    assert.ok((t.description ?? "").length > 40, `${t.name} has a description`);
  }
  const create = tools.find((t) => t.name === "create_sandbox");
  assert.ok(create?.inputSchema.properties?.memory_mib, "create_sandbox takes memory_mib");

  const created = await ok(client, "create_sandbox", { memory_mib: 256, labels: { task: "t1" } });
  const id = created.sandbox_id as string;
  assert.match(id, /^[a-z0-9-]+$/);
  assert.equal(created.status, "running");
  assert.equal(created.memory_mib, 256);
  const labels = created.labels as Record<string, string>;
  assert.equal(labels.task, "t1");
  assert.ok(labels["mcp.session"], "labelled with its session");
  assert.ok(created.expires_at, "always has a lifetime");

  const listed = await ok(client, "list_sandboxes", {});
  assert.deepEqual(
    (listed.sandboxes as Structured[]).map((s) => s.sandbox_id),
    [id],
  );

  const echo = await ok(client, "run_command", { sandbox_id: id, command: "echo hello; echo oops >&2; exit 3" });
  assert.equal(echo.stdout, "hello\n");
  assert.equal(echo.stderr, "oops\n");
  assert.equal(echo.exit_code, 3);
  assert.equal(echo.timed_out, false);
  assert.equal(echo.stdout_dropped_bytes, 0);

  const text = "héllo wörld\nline 2\n";
  const w = await ok(client, "write_file", { sandbox_id: id, path: "/root/dir/a.txt", content: text });
  assert.equal(w.bytes_written, Buffer.byteLength(text));
  const r = await ok(client, "read_file", { sandbox_id: id, path: "/root/dir/a.txt" });
  assert.equal(r.content, text);
  assert.equal(r.truncated, false);
  assert.equal(r.binary, false);
  const cat = await ok(client, "run_command", { sandbox_id: id, command: "cat a.txt", cwd: "/root/dir" });
  assert.equal(cat.stdout, text);
  const head = await ok(client, "read_file", { sandbox_id: id, path: "/root/dir/a.txt", max_bytes: 2 });
  assert.equal(head.truncated, true);
  assert.equal(head.bytes_read, 2);
  assert.equal(head.content, "h", "a character cut by the limit is left out");
  assert.equal(head.size_bytes, Buffer.byteLength(text));
  const ls = await ok(client, "list_files", { sandbox_id: id, path: "/root/dir" });
  assert.deepEqual(
    (ls.entries as Structured[]).map((e) => [e.name, e.type]),
    [["a.txt", "file"]],
  );

  // 300000 bytes of output: 64 KiB come back, the rest is counted as dropped
  const big = await ok(client, "run_command", { sandbox_id: id, command: "yes 0123456789abcdef | head -c 300000" });
  assert.equal(big.exit_code, 0);
  assert.equal(big.stdout_bytes, 300_000);
  assert.equal(big.stdout_dropped_bytes, 300_000 - 65_536);
  assert.match(big.stdout as string, /\[\.\.\. 234464 bytes of output dropped here \(300000 in all\) \.\.\.\]/);
  assert.ok((big.stdout as string).startsWith("0123456789abcdef\n"));
  assert.ok((big.stdout as string).length < 66_000);

  assert.match(await failure(client, "create_sandbox", { memory_mib: 5 }), /memory_mib/);
  assert.match(await failure(client, "create_sandbox", { network: "none", internet: "open" }), /internet/);
  assert.match(
    await failure(client, "run_command", { sandbox_id: "nope", command: "true" }),
    /sandbox_id.*not a sandbox of this MCP session/,
  );
  assert.match(
    await failure(client, "run_command", { sandbox_id: id, command: "true", timeout_seconds: 0 }),
    /timeout_seconds/,
  );
  assert.match(await failure(client, "read_file", { sandbox_id: id, path: "/nonexistent" }), /path: .*\/nonexistent/);
  assert.match(
    await failure(client, "write_file", { sandbox_id: id, path: "/root/b", content: "@@", encoding: "base64" }),
    /content/,
  );
  return id;
}

/** `smolvm mcp` spawned by the SDK's stdio client; `errors` collects anything on stdout that is not JSON-RPC. */
async function stdioServer() {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [cliPath, "mcp"],
    env: process.env as Record<string, string>,
    stderr: "pipe",
  });
  const out = { stderr: "", errors: [] as Error[] };
  transport.stderr?.on("data", (d) => {
    out.stderr += d;
  });
  const client = new Client({ name: "smolvm-test", version: "1" });
  client.onerror = (e) => out.errors.push(e);
  await client.connect(transport);
  return { client, transport, out };
}

describe("MCP over stdio: smolvm mcp", () => {
  it("serves the tools; its sandboxes are deleted when stdin closes", async () => {
    const { client, out } = await stdioServer();
    const id = await basics(client);
    assert.equal((await SmolVM.list()).find((v) => v.vmId === id)?.keep, false, "owned by the mcp process");

    // a long command sends progress (so clients can keep waiting); cancelling the call kills the command
    const abort = new AbortController();
    const messages: string[] = [];
    const long = client.callTool(
      {
        name: "run_command",
        arguments: { sandbox_id: id, command: "echo $$ > /tmp/pid; sleep 60", timeout_seconds: 120 },
      },
      undefined,
      {
        signal: abort.signal,
        resetTimeoutOnProgress: true,
        onprogress: (p) => {
          messages.push(p.message ?? "");
          abort.abort();
        },
      },
    );
    await assert.rejects(long, /abort/i);
    assert.match(messages[0] ?? "", /run_command: still working/);
    const check = await ok(client, "run_command", {
      sandbox_id: id,
      command: "sleep 1; kill -0 $(cat /tmp/pid) && echo alive || echo gone",
    });
    assert.equal(check.stdout, "gone\n", "the cancelled command was killed");

    await client.close(); // closes the server's stdin
    await waitGone(id, 15_000);
    assert.match(out.stderr, /stdin closed/);
    assert.deepEqual(out.errors, [], "nothing but JSON-RPC on stdout");
  });

  it("SIGTERM deletes its sandboxes; so does SIGKILL (the VM supervisor)", async () => {
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      const { client, transport } = await stdioServer();
      const id = (await ok(client, "create_sandbox", { memory_mib: 256 })).sandbox_id as string;
      assert.ok(await exists(id));
      process.kill(transport.pid as number, signal);
      await waitGone(id, 15_000);
      await client.close();
    }
  });
});

describe("MCP over Streamable HTTP: /mcp", () => {
  const token = "test-token-0123456789";
  const hub = new SandboxHub();
  let app: Awaited<ReturnType<typeof buildServer>>;
  let url: URL;
  const clients: Client[] = [];

  const connect = async (): Promise<{ client: Client; transport: StreamableHTTPClientTransport }> => {
    const transport = new StreamableHTTPClientTransport(url, {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    });
    const client = new Client({ name: "smolvm-test", version: "1" });
    await client.connect(transport);
    clients.push(client);
    return { client, transport };
  };

  before(async () => {
    app = await buildServer({ token, hub });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const addr = app.server.address();
    assert.ok(addr && typeof addr === "object");
    url = new URL(`http://127.0.0.1:${addr.port}/mcp`);
  });
  after(async () => {
    for (const c of clients) await c.close().catch(() => {});
    await app.close();
    hub.close();
  });

  it("needs the token", async () => {
    const init = { jsonrpc: "2.0", id: 1, method: "initialize", params: {} };
    const res = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
      body: JSON.stringify(init),
    });
    assert.equal(res.status, 401);
    const wrong = await fetch(url, { method: "POST", headers: { authorization: "Bearer nope" }, body: "{}" });
    assert.equal(wrong.status, 401);
    const noSession = await fetch(url, { method: "GET", headers: { authorization: `Bearer ${token}` } });
    assert.equal(noSession.status, 400);
    const spec = (await (await fetch(new URL("/openapi.json", url))).json()) as { paths: Record<string, unknown> };
    assert.equal(spec.paths["/mcp"], undefined, "/mcp is not in the OpenAPI document");
  });

  it("serves the tools; a session sees only its own sandboxes, which DELETE /mcp deletes", async () => {
    const a = await connect();
    const id = await basics(a.client);
    const b = await connect();
    assert.deepEqual((await ok(b.client, "list_sandboxes", {})).sandboxes, []);
    assert.match(
      await failure(b.client, "run_command", { sandbox_id: id, command: "true" }),
      /not a sandbox of this MCP session/,
    );
    assert.match(await failure(b.client, "delete_sandbox", { sandbox_id: id }), /not a sandbox of this MCP session/);
    const forked = await ok(a.client, "fork_sandbox", { sandbox_id: id });
    const clone = (forked.sandboxes as Structured[])[0]?.sandbox_id as string;
    assert.equal(
      (await ok(a.client, "read_file", { sandbox_id: clone, path: "/root/dir/a.txt" })).content,
      "héllo wörld\nline 2\n",
    );
    const snap = await ok(a.client, "snapshot_sandbox", { sandbox_id: id });
    await ok(a.client, "write_file", { sandbox_id: id, path: "/root/dir/a.txt", content: "changed" });
    const restored = await ok(a.client, "restore_snapshot", { snapshot_id: snap.snapshot_id, lifetime_seconds: 120 });
    const back = restored.sandbox_id as string;
    assert.equal(
      (await ok(a.client, "read_file", { sandbox_id: back, path: "/root/dir/a.txt" })).content,
      "héllo wörld\nline 2\n",
    );
    assert.match(
      await failure(b.client, "restore_snapshot", { snapshot_id: snap.snapshot_id }),
      /snapshot_id.*not a snapshot taken in this MCP session/,
    );
    const listed = await ok(a.client, "list_sandboxes", {});
    assert.deepEqual((listed.sandboxes as Structured[]).map((s) => s.sandbox_id).sort(), [id, clone, back].sort());
    const port = await ok(a.client, "expose_port", { sandbox_id: id, port: 8080 });
    assert.match(port.url as string, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.ok(await exists(id));
    await a.transport.terminateSession(); // DELETE /mcp: answered once the sandboxes are gone
    assert.equal(await exists(id), false);
    assert.equal(await exists(clone), false, "the fork belonged to the session too");
    assert.equal(await exists(back), false, "so did the restored sandbox");
    const again = await call(a.client, "list_sandboxes", {}).catch((e: Error) => e);
    assert.ok(again instanceof Error, "the ended session is refused");
  });

  it("server shutdown ends the sessions and deletes their sandboxes", async () => {
    const c = await connect();
    const created = await ok(c.client, "create_sandbox", { lifetime_seconds: 600 });
    const id = created.sandbox_id as string;
    assert.ok(await exists(id));
    await app.close();
    assert.equal(await exists(id), false);
  });
});

describe("MCP over HTTP: bounded sessions", () => {
  it("refuses sessions past maxSessions and ends idle ones", async () => {
    const { default: Fastify } = await import("fastify");
    const { mcpHttpPlugin } = await import("../src/server/mcp/http.js");
    const hub = new SandboxHub();
    const app = Fastify();
    const ctx = { hub, token: "t", checkToken: () => true, metrics: {} } as unknown as Parameters<
      typeof mcpHttpPlugin
    >[1]["ctx"];
    await app.register(mcpHttpPlugin, { ctx, maxSessions: 1, idleMs: 1000 });
    await app.listen({ host: "127.0.0.1", port: 0 });
    const addr = app.server.address();
    assert.ok(addr && typeof addr === "object");
    const url = new URL(`http://127.0.0.1:${addr.port}/mcp`);
    try {
      const first = new Client({ name: "a", version: "1" });
      const t1 = new StreamableHTTPClientTransport(url);
      await first.connect(t1);
      const sid = t1.sessionId;
      assert.ok(sid);
      const second = new Client({ name: "b", version: "1" });
      await assert.rejects(second.connect(new StreamableHTTPClientTransport(url)), /Too many MCP sessions|503/);
      await new Promise((r) => setTimeout(r, 3500)); // idle past 1 s; the sweep runs every second
      const res = await fetch(url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
          "mcp-session-id": sid,
        },
        body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "tools/list", params: {} }),
      });
      assert.equal(res.status, 404, "the idle session was ended");
      const third = new Client({ name: "c", version: "1" });
      await third.connect(new StreamableHTTPClientTransport(url)); // its place is free again
      await third.close();
      await first.close();
    } finally {
      await app.close();
      hub.close();
    }
  });
});
