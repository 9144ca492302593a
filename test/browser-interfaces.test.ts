/**
 * `vm.browser` through the CLI (`smolvm browser ...`), the REST API and MCP, against real VMs of the `browser` image:
 * two VMs in all (one for the CLI; one created through MCP over `/mcp` of a `smolvm serve` child, which the REST API
 * then drives too), each reused across its assertions.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { inflateSync } from "node:zlib";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { SmolVM } from "../src/index.js";
import { cli, isolatedState } from "./helpers.js";
import { type Served, serve } from "./support/serve.js";

isolatedState();

/** A form: submitting it (button or Enter) writes "Hello, NAME" under it. */
const FORM = `<!doctype html><title>Form</title>
<form id=f><input id=name><button id=go type=submit>Go</button></form><p id=out>waiting</p>
<script>document.getElementById("f").onsubmit = (e) => { e.preventDefault();
document.getElementById("out").textContent = "Hello, " + document.getElementById("name").value; };</script>`;
const FORM_URL = `data:text/html,${encodeURIComponent(FORM)}`;

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc32 = (b: Buffer) => {
  let c = 0xffffffff;
  for (const x of b) c = (CRC_TABLE[(c ^ x) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};

/** Decode a PNG far enough to know it is one: signature, chunk CRCs, IHDR, and IDAT inflating to its rows. */
function decodePng(png: Buffer): { width: number; height: number } {
  assert.equal(png.subarray(0, 8).toString("hex"), "89504e470d0a1a0a", "PNG signature");
  let at = 8;
  let width = 0;
  let height = 0;
  let bytesPerPixel = 0;
  const idat: Buffer[] = [];
  for (;;) {
    const len = png.readUInt32BE(at);
    const type = png.subarray(at + 4, at + 8).toString("latin1");
    const data = png.subarray(at + 8, at + 8 + len);
    assert.equal(png.readUInt32BE(at + 8 + len), crc32(png.subarray(at + 4, at + 8 + len)), `${type} CRC`);
    if (type === "IHDR") {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      assert.equal(data[8], 8, "8 bits per channel");
      bytesPerPixel = ({ 2: 3, 6: 4, 0: 1, 4: 2 } as Record<number, number>)[data[9] as number] ?? 0;
    }
    if (type === "IDAT") idat.push(data);
    at += 12 + len;
    if (type === "IEND") break;
  }
  assert.ok(bytesPerPixel > 0, "a colour type we know");
  assert.equal(inflateSync(Buffer.concat(idat)).length, height * (1 + width * bytesPerPixel), "every row is there");
  return { width, height };
}

/** A `smolvm ...` that must succeed with --json: its output parsed. */
async function json(args: string[]): Promise<Record<string, unknown>> {
  const r = await cli([...args, "--json"], { timeoutMs: 240_000 });
  assert.equal(r.code, 0, `smolvm ${args.join(" ")}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

/** A `smolvm ...` that must succeed. */
async function run(args: string[]): Promise<string> {
  const r = await cli(args, { timeoutMs: 240_000 });
  assert.equal(r.code, 0, `smolvm ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

describe("smolvm browser (CLI)", () => {
  let id = "";
  const work = mkdtempSync(join(tmpdir(), "smolvm-browser-cli-"));
  before(async () => {
    const vm = await SmolVM.create({ image: "browser" });
    id = vm.vmId;
    vm.close();
  });
  after(async () => {
    if (id) await (await SmolVM.fromId(id)).delete();
    rmSync(work, { recursive: true, force: true });
  });

  it("bad flags are usage errors naming the flag", async () => {
    for (const [args, flag] of [
      [["browser", "start", id, "--viewport", "big"], "--viewport"],
      [["browser", "start", id, "--viewport", "10x720"], "--viewport"],
      [["browser", "start", id, "--arg", "--user-data-dir=/tmp/x"], "--arg"],
      [["browser", "start", id, "--headful", "--headless"], "--headful"],
      [["browser", "text", id, "--max-chars", "0"], "--max-chars"],
      [["browser", "open", id, "data:x", "--timeout", "soon"], "--timeout"],
    ] as const) {
      const r = await cli([...args], { timeoutMs: 60_000 });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^smolvm: ${flag}: `), args.join(" "));
    }
    const j = await cli(["browser", "start", id, "--viewport", "10x720", "--json"]);
    assert.equal(j.code, 2);
    assert.equal((JSON.parse(j.stdout) as { error: { type: string } }).error.type, "ConfigError");
  });

  it("start, open, type, click, text, screenshot, vnc, stop, status", async () => {
    const started = await json(["browser", "start", id]);
    assert.equal(started.running, true);
    assert.equal(started.headless, true);
    assert.deepEqual(started.viewport, { width: 1280, height: 720 });
    assert.match(started.cdpUrl as string, /^http:\/\/127\.0\.0\.1:\d+$/);
    // the DevTools port outlives the CLI process that exposed it
    const version = (await (await fetch(`${started.cdpUrl}/json/version`)).json()) as { Browser: string };
    assert.match(version.Browser, /Chrom/);
    const human = await run(["browser", "status", id]);
    assert.match(human, new RegExp(`^cdpUrl +${started.cdpUrl}$`, "m"));
    assert.match(human, /^running +yes$/m);

    const vnc = await cli(["browser", "vnc", id]);
    assert.equal(vnc.code, 1);
    assert.match(vnc.stderr, /headless.*smolvm browser start \S+ --headful/);

    const page = await json(["browser", "open", id, FORM_URL]);
    assert.deepEqual(page, { url: FORM_URL, title: "Form" });
    assert.equal(await run(["browser", "open", id, FORM_URL]), "Form\n", "without --json: the title");
    await run(["browser", "type", id, "#name", "Ada"]);
    await run(["browser", "click", id, "#go"]);
    const t = await json(["browser", "text", id]);
    assert.match(t.text as string, /Hello, Ada/);
    assert.equal(t.title, "Form");
    assert.equal(t.truncated, false);
    const cut = await json(["browser", "text", id, "--max-chars", "2"]);
    assert.equal(cut.text, "Go");
    assert.equal(cut.truncated, true);

    const missing = await cli(["browser", "click", id, "#nope"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no element matches "#nope"/);

    const file = join(work, "shot.png");
    const shot = await json(["browser", "screenshot", id, "-o", file]);
    assert.deepEqual(shot, { file, bytes: readFileSync(file).length, width: 1280, height: 720 });
    assert.deepEqual(decodePng(readFileSync(file)), { width: 1280, height: 720 });
    // the default file name, in the working directory
    const r = await cli(["browser", "screenshot", id], { timeoutMs: 120_000, cwd: work });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `screenshot-${id}.png\n`);
    assert.deepEqual(decodePng(readFileSync(join(work, `screenshot-${id}.png`))), { width: 1280, height: 720 });

    assert.equal(await run(["browser", "stop", id]), "");
    const stopped = await json(["browser", "status", id]);
    assert.equal(stopped.running, false);
    assert.equal(stopped.cdpUrl, undefined);
    const vm = await SmolVM.fromId(id);
    assert.deepEqual(vm.ports(), [], "its ports are closed");
    vm.close();
    const afterStop = await cli(["browser", "text", id]);
    assert.equal(afterStop.code, 1);
    assert.match(afterStop.stderr, new RegExp(`not running: start it: smolvm browser start ${id}`));
  });
});

describe("the browser over MCP and REST (smolvm serve)", () => {
  let s: Served;
  let client: Client;
  let transport: StreamableHTTPClientTransport;
  let id = "";

  const call = async (name: string, args: Record<string, unknown>) =>
    (await client.callTool({ name, arguments: args }, undefined, { timeout: 240_000 })) as CallToolResult;
  const ok = async (name: string, args: Record<string, unknown>) => {
    const r = await call(name, args);
    assert.notEqual(r.isError, true, `${name}: ${JSON.stringify(r.content)}`);
    assert.ok(r.structuredContent, `${name}: structured content`);
    return r;
  };
  const failure = async (name: string, args: Record<string, unknown>) => {
    const r = await call(name, args);
    assert.equal(r.isError, true, `${name} should fail: ${JSON.stringify(r)}`);
    const c = r.content[0];
    return c?.type === "text" ? c.text : "";
  };
  const path = (p = "") => `/v1/sandboxes/${id}/browser${p}`;

  before(async () => {
    s = await serve();
    transport = new StreamableHTTPClientTransport(new URL(`${s.url}/mcp`), {
      requestInit: { headers: { authorization: `Bearer ${s.token}` } },
    });
    client = new Client({ name: "smolvm-browser-test", version: "1" });
    await client.connect(transport);
  });
  after(async () => {
    await client?.close().catch(() => {});
    await s?.stop(); // ends the MCP session: its sandbox is deleted
    if (id && (await SmolVM.list()).some((v) => v.vmId === id)) await (await SmolVM.fromId(id)).delete();
  });

  it("MCP: browser_open, browser_screenshot, browser_text, browser_type, browser_click", async () => {
    const { tools } = await client.listTools();
    for (const name of ["browser_open", "browser_screenshot", "browser_text", "browser_click", "browser_type"]) {
      const t = tools.find((x) => x.name === name);
      assert.ok(t?.outputSchema && (t.description ?? "").length > 40, `${name}: described, with an output schema`);
    }
    const created = await ok("create_sandbox", { image: "browser" });
    id = (created.structuredContent as { sandbox_id: string }).sandbox_id;
    assert.equal((created.structuredContent as { memory_mib: number }).memory_mib, 2048);

    const opened = (await ok("browser_open", { sandbox_id: id, url: FORM_URL })).structuredContent;
    assert.equal(opened?.url, FORM_URL);
    assert.equal(opened?.title, "Form");

    const shot = await ok("browser_screenshot", { sandbox_id: id });
    const image = shot.content.find((c) => c.type === "image");
    assert.ok(image?.type === "image", "an image content block");
    assert.equal(image.mimeType, "image/png");
    const png = Buffer.from(image.data, "base64");
    assert.deepEqual(decodePng(png), { width: 1280, height: 720 });
    assert.deepEqual(shot.structuredContent, { width: 1280, height: 720, bytes: png.length, full_page: false });

    const fresh = (await ok("browser_text", { sandbox_id: id })).structuredContent;
    assert.match(fresh?.text as string, /waiting/);
    await ok("browser_type", { sandbox_id: id, selector: "#name", text: "Lin" });
    await ok("browser_click", { sandbox_id: id, selector: "#go" });
    const text = await ok("browser_text", { sandbox_id: id });
    assert.match(text.structuredContent?.text as string, /Hello, Lin/);
    assert.match((text.content[0] as { text: string }).text, /Hello, Lin/);

    assert.match(await failure("browser_click", { sandbox_id: id, selector: "#nope" }), /^selector: .*#nope/);
    assert.match(await failure("browser_type", { sandbox_id: id, selector: "#nope", text: "x" }), /^selector: /);
    assert.match(await failure("browser_text", { sandbox_id: id, max_chars: 0 }), /max_chars/);
    assert.match(await failure("browser_open", { sandbox_id: id, url: "ftp://x" }), /url/);
    assert.match(await failure("browser_open", { sandbox_id: "vm-other", url: FORM_URL }), /sandbox_id/);
  });

  it("REST: start, open, text, type, click, screenshot, stop; errors name the field", async () => {
    assert.ok(id, "the MCP test made the sandbox");
    const bad = await s.api(path(), { method: "POST", json: { viewport: { width: 10, height: 720 } } });
    assert.equal(bad.status, 400);
    const err = ((await bad.json()) as { error: { field: string; message: string } }).error;
    assert.equal(err.field, "viewport.width");
    assert.match(err.message, /200 to 7680/);
    const badType = await s.api(path(), { method: "POST", json: { viewport: { width: "wide", height: 720 } } });
    assert.equal(badType.status, 400);
    assert.equal(((await badType.json()) as { error: { field: string } }).error.field, "viewport.width");

    const started = await s.api(path(), { method: "POST", json: {} });
    assert.equal(started.status, 200, await started.clone().text());
    const info = (await started.json()) as { running: boolean; cdpUrl: string; pid: number };
    assert.equal(info.running, true);
    assert.match(info.cdpUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    const status = (await (await s.api(path())).json()) as { running: boolean; pid: number; cdpUrl: string };
    assert.equal(status.running, true);
    assert.equal(status.pid, info.pid, "the browser MCP started, kept");

    const open = await s.api(path("/open"), { method: "POST", json: { url: FORM_URL } });
    assert.equal(open.status, 200, await open.clone().text());
    assert.deepEqual(await open.json(), { url: FORM_URL, title: "Form" });
    const typed = await s.api(path("/type"), {
      method: "POST",
      json: { selector: "#name", text: "Grace", submit: true },
    });
    assert.equal(typed.status, 204, await typed.clone().text());
    const text = (await (await s.api(path("/text"))).json()) as { text: string; truncated: boolean };
    assert.match(text.text, /Hello, Grace/, "Enter submitted the form");
    assert.equal(text.truncated, false);
    assert.equal(((await (await s.api(path("/text?maxChars=2"))).json()) as { text: string }).text, "Go");
    const clicked = await s.api(path("/click"), { method: "POST", json: { selector: "#go" } });
    assert.equal(clicked.status, 204);
    const missing = await s.api(path("/click"), { method: "POST", json: { selector: "#nope" } });
    assert.equal(missing.status, 422);
    assert.equal(((await missing.json()) as { error: { field: string } }).error.field, "selector");
    const noSelector = await s.api(path("/click"), { method: "POST", json: {} });
    assert.equal(noSelector.status, 400);
    assert.equal(((await noSelector.json()) as { error: { field: string } }).error.field, "selector");

    for (const q of ["", "?fullPage=true"]) {
      const shot = await s.api(path(`/screenshot${q}`));
      assert.equal(shot.status, 200);
      assert.equal(shot.headers.get("content-type"), "image/png");
      const png = Buffer.from(await shot.arrayBuffer());
      assert.equal(png.subarray(0, 8).toString("hex"), "89504e470d0a1a0a", "PNG magic");
      assert.equal(decodePng(png).width, 1280);
    }

    const stop = await s.api(path(), { method: "DELETE" });
    assert.equal(stop.status, 204);
    assert.equal(((await (await s.api(path())).json()) as { running: boolean }).running, false);
    const notRunning = await s.api(path("/text"));
    assert.equal(notRunning.status, 409);
    assert.match(((await notRunning.json()) as { error: { message: string } }).error.message, /POST \/v1\/sandboxes/);
    assert.match(await failure("browser_text", { sandbox_id: id }), /not running: open a page with browser_open/);

    await transport.terminateSession(); // DELETE /mcp: the session's sandbox is deleted
    assert.equal(
      (await SmolVM.list()).some((v) => v.vmId === id),
      false,
    );
    id = "";
  });
});
