/**
 * E2B compatibility: the stock `e2b` JS SDK against `smolvm serve`'s E2B API (in-process server, one real python VM
 * shared by the subtests), plus the pure parts (metadata ↔ labels, paths, tokens) without a VM.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  NotFoundError,
  Sandbox,
  SandboxNotFoundError,
  TimeoutError,
} from "e2b";
import type { FastifyInstance } from "fastify";
import type { EntryInfo } from "../src/sandbox/files.js";
import { buildServer } from "../src/server/app.js";
import { basicUser, envdAccessToken } from "../src/server/e2b/access.js";
import { permissionString } from "../src/server/e2b/entry.js";
import { labelsToMetadata, metadataToLabels, parseMetadataQuery } from "../src/server/e2b/metadata.js";
import { guestPath } from "../src/server/e2b/paths.js";
import { templateImage } from "../src/server/e2b/templates.js";
import { diff } from "../src/server/e2b/watch.js";
import { SandboxHub } from "../src/server/hub.js";
import { isolatedState } from "./helpers.js";

isolatedState();

describe("E2B API: pure parts", () => {
  it("metadata ↔ labels: plain keys readable, others hex-encoded, round trip, bad values refused", () => {
    const meta = { suite: "e2b", "user id": "42", ключ: "значение", "a.b-c_d": "x" };
    const labels = metadataToLabels(meta);
    assert.equal(labels["e2b.m.suite"], "e2b");
    assert.equal(labels["e2b.m.a.b-c_d"], "x");
    assert.equal(labels[`e2b.x.${Buffer.from("user id").toString("hex")}`], "42");
    assert.deepEqual(labelsToMetadata({ ...labels, owner: "not-metadata", "e2b.template": "base" }), meta);
    assert.throws(() => metadataToLabels({ k: "a\nb" }), /metadata value/);
    assert.throws(() => metadataToLabels({ k: "x".repeat(257) }), /metadata value/);
    assert.throws(() => metadataToLabels({ ["é".repeat(40)]: "v" }), /metadata key/);
    assert.throws(() => metadataToLabels({ "": "v" }), /metadata key/);
    // the SDK's list filter: encodeURIComponent'd pairs in one query string
    const q = new URLSearchParams({ [encodeURIComponent("user id")]: encodeURIComponent("a&b=c") }).toString();
    assert.deepEqual(parseMetadataQuery(q), { "user id": "a&b=c" });
    assert.deepEqual(parseMetadataQuery(undefined), {});
  });

  it("templates, users, paths, permissions, access tokens", () => {
    assert.equal(templateImage("base"), "python");
    assert.equal(templateImage("node"), "node");
    assert.equal(templateImage("../x"), null);
    assert.equal(basicUser(`Basic ${Buffer.from("user:").toString("base64")}`), "user");
    assert.equal(basicUser(`Basic ${Buffer.from("bad user;:").toString("base64")}`), undefined);
    assert.equal(basicUser(undefined), undefined);
    assert.equal(guestPath("a/b", "/root"), "/root/a/b");
    assert.equal(guestPath("~/x/", "/home/u"), "/home/u/x");
    assert.equal(guestPath("/tmp/../etc", "/root"), "/etc");
    assert.throws(() => guestPath("", "/root"), /path/);
    assert.throws(() => guestPath("a\0b", "/root"), /path/);
    assert.equal(permissionString("dir", 0o755), "drwxr-xr-x");
    assert.equal(permissionString("file", 0o640), "-rw-r-----");
    const t = envdAccessToken("server-token-1234567890", "vm-a");
    assert.notEqual(t, envdAccessToken("server-token-1234567890", "vm-b"));
    assert.notEqual(t, envdAccessToken("server-token-0987654321", "vm-a"));
    assert.equal(t, envdAccessToken("server-token-1234567890", "vm-a"));
  });

  it("watch: listing differences become create, write, chmod and remove events", () => {
    const e = (name: string, size: number, mode = 0o644, type: EntryInfo["type"] = "file"): [string, EntryInfo] => [
      name,
      { name, path: `/w/${name}`, type, size, mode, mtime: new Date(1000) },
    ];
    const before = new Map([e("same", 1), e("grows", 1), e("chmod", 1), e("gone", 1), e("kind", 0)]);
    const after = new Map([e("same", 1), e("grows", 2), e("chmod", 1, 0o600), e("new", 0), e("kind", 0, 0o755, "dir")]);
    const events = diff(before, after, true).map((ev) => `${ev.type}:${ev.name}:${ev.entry ? "entry" : "-"}`);
    assert.deepEqual(events.sort(), [
      "1:kind:entry",
      "1:new:entry",
      "2:grows:entry",
      "3:gone:-",
      "3:kind:-",
      "5:chmod:entry",
    ]);
    assert.equal(diff(before, before, false).length, 0);
  });
});

describe("E2B API: routing, auth and error shapes (no VM)", () => {
  const token = "e2b_fedcba9876543210fedcba9876543210";
  let app: FastifyInstance;
  before(async () => {
    app = await buildServer({ token, hub: new SandboxHub() });
  });
  after(() => app?.close());

  it("keeps the REST API, /health and the OpenAPI document as they were; E2B routes answer E2B's shapes", async () => {
    assert.deepEqual((await app.inject({ url: "/health" })).json(), { status: "ok" });
    const paths = Object.keys((await app.inject({ url: "/openapi.json" })).json().paths);
    assert.ok(paths.some((p) => p.startsWith("/v1/")));
    assert.ok(!paths.some((p) => !p.startsWith("/v1/") && p !== "/metrics" && p !== "/health"), paths.join(" "));
    const rest = await app.inject({
      method: "POST",
      url: "/v1/sandboxes",
      headers: { authorization: `Bearer ${token}` },
      payload: { vcpuCount: "x" },
    });
    assert.equal(rest.statusCode, 400);
    assert.equal(rest.json().error.code, "invalid_request");
    const noKey = await app.inject({ method: "POST", url: "/v2/sandboxes", payload: {} });
    assert.deepEqual([noKey.statusCode, noKey.json().code], [401, 401]);
    const bad = await app.inject({
      method: "POST",
      url: "/v2/sandboxes",
      headers: { "x-api-key": token },
      payload: { timeout: "soon" },
    });
    assert.deepEqual([bad.statusCode, bad.json().code], [400, 400]);
    const badMeta = await app.inject({
      method: "POST",
      url: "/v2/sandboxes",
      headers: { "x-api-key": token },
      payload: { metadata: { k: "a\u0001" } },
    });
    assert.equal(badMeta.statusCode, 400);
    assert.match(badMeta.json().message, /metadata value/);
    const list = await app.inject({ url: "/v2/sandboxes", headers: { "x-api-key": token } });
    assert.deepEqual([list.statusCode, list.json()], [200, []]);
    const snap = await app.inject({
      method: "POST",
      url: "/sandboxes/vm-nope/snapshots",
      headers: { "x-api-key": token },
    });
    assert.deepEqual([snap.statusCode, snap.json().code], [501, 501]);
    const missing = await app.inject({ url: "/sandboxes/vm-nope", headers: { "x-api-key": token } });
    assert.deepEqual([missing.statusCode, missing.json().code], [404, 404]);
  });

  it("envd routes: sandbox access token required, unknown sandbox is 502 / Unavailable like E2B's proxy", async () => {
    const envd = (id: string, accessToken: string) => ({ "e2b-sandbox-id": id, "x-access-token": accessToken });
    const good = envd("vm-nope", envdAccessToken(token, "vm-nope"));
    assert.equal((await app.inject({ url: "/health", headers: envd("vm-nope", "x") })).statusCode, 401);
    assert.equal((await app.inject({ url: "/health", headers: good })).statusCode, 502);
    const file = await app.inject({ url: "/files?path=/etc/hostname", headers: good });
    assert.deepEqual([file.statusCode, file.json().code], [502, 502]);
    const rpc = (headers: Record<string, string>) =>
      app.inject({
        method: "POST",
        url: "/filesystem.Filesystem/Stat",
        headers: { ...headers, "content-type": "application/json" },
        payload: { path: "/" },
      });
    const unauth = await rpc(envd("vm-nope", envdAccessToken(token, "vm-other")));
    assert.deepEqual([unauth.statusCode, unauth.json().code], [401, "unauthenticated"]);
    const gone = await rpc(good);
    assert.deepEqual([gone.statusCode, gone.json().code], [503, "unavailable"]);
    // the server token itself does not open envd routes, and envd tokens do not open the control plane
    assert.equal((await rpc({ ...envd("vm-nope", token), authorization: `Bearer ${token}` })).statusCode, 401);
    const ctl = await app.inject({ url: "/v2/sandboxes", headers: { "x-api-key": envdAccessToken(token, "vm-nope") } });
    assert.equal(ctl.statusCode, 401);
  });
});

describe("E2B API: the stock e2b SDK against smolvm serve", () => {
  const token = "e2b_0123456789abcdef0123456789abcdef01234567";
  let app: FastifyInstance;
  let url = "";
  let sbx: Sandbox;

  before(async () => {
    app = await buildServer({ token, hub: new SandboxHub() });
    url = await app.listen({ host: "127.0.0.1", port: 0 });
    process.env.E2B_API_URL = url;
    process.env.E2B_SANDBOX_URL = url;
    process.env.E2B_API_KEY = token;
    sbx = await Sandbox.create({ metadata: { suite: "e2b-test", "run id": "7" }, envs: { GREETING: "hello" } });
  });

  after(async () => {
    await sbx?.kill().catch(() => {});
    await app?.close();
  });

  it("create answers like E2B: the base template, envd version, per-sandbox access token", async () => {
    assert.match(sbx.sandboxId, /^vm-/);
    const info = await sbx.getInfo();
    assert.equal(info.templateId, "base");
    assert.equal(info.state, "running");
    assert.equal(info.envdVersion, "0.5.7");
    assert.deepEqual(info.metadata, { suite: "e2b-test", "run id": "7" });
    assert.ok(await sbx.isRunning());
  });

  it("commands: foreground output and exit code, CommandExitError, env vars, cwd, user", async () => {
    const r = await sbx.commands.run('echo "$GREETING $EXTRA"; pwd; echo oops >&2', { envs: { EXTRA: "world" } });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "hello world\n/root\n");
    assert.equal(r.stderr, "oops\n");
    assert.equal((await sbx.commands.run("pwd", { cwd: "/tmp" })).stdout, "/tmp\n");
    assert.equal((await sbx.commands.run("whoami", { user: "root" })).stdout, "root\n");
    const many = await sbx.commands.run("seq 1 200000");
    assert.equal(many.stdout.length, 1_288_895);
    assert.ok(many.stdout.endsWith("\n199999\n200000\n"));
    const chunks: string[] = [];
    await sbx.commands.run("for i in 1 2 3; do echo $i; done", { onStdout: (d) => void chunks.push(d) });
    assert.equal(chunks.join(""), "1\n2\n3\n");
    await assert.rejects(sbx.commands.run("echo bad >&2; exit 3"), (e: unknown) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, 3);
      assert.equal(e.stderr, "bad\n");
      return true;
    });
  });

  it("commands: background, list, stdin, connect, kill", async () => {
    const sleeper = await sbx.commands.run("sleep 60", { background: true });
    assert.ok(sleeper.pid > 0);
    assert.ok((await sbx.commands.list()).some((p) => p.pid === sleeper.pid && p.args.includes("sleep 60")));
    const cat = await sbx.commands.run("cat", { background: true, stdin: true });
    await sbx.commands.sendStdin(cat.pid, "typed in\n");
    await cat.closeStdin();
    assert.equal((await cat.wait()).stdout, "typed in\n");
    const again = await sbx.commands.connect(sleeper.pid);
    assert.equal(await sleeper.kill(), true);
    await assert.rejects(again.wait(), CommandExitError);
    await assert.rejects(sleeper.wait(), CommandExitError);
    assert.equal(await sbx.commands.kill(999_999), false);
    const quick = await sbx.commands.run("sleep 0.2; echo done", { background: true });
    assert.equal((await quick.wait()).stdout, "done\n");
    // timeoutMs is the command's deadline: it is killed then
    await assert.rejects(sbx.commands.run("sleep 30; echo never", { timeoutMs: 1500 }), TimeoutError);
    const stillThere = async () => (await sbx.commands.list()).some((p) => p.args.includes("sleep 30; echo never"));
    for (let i = 0; i < 30 && (await stillThere()); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await stillThere(), false);
  });

  it("pty: a terminal running bash, input, resize, kill", async () => {
    let screen = "";
    const term = await sbx.pty.create({
      cols: 80,
      rows: 24,
      onData: (d) => {
        screen += Buffer.from(d).toString();
      },
    });
    const seen = async (text: string) => {
      for (let i = 0; i < 100 && !screen.includes(text); i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(screen.includes(text), `terminal output: ${JSON.stringify(screen.slice(-400))}`);
    };
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("echo $((6*7))-$TERM\n"));
    await seen("42-xterm-256color");
    await sbx.pty.resize(term.pid, { cols: 100, rows: 30 });
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode("stty size\n"));
    await seen("30 100");
    assert.equal(await sbx.pty.kill(term.pid), true);
    await assert.rejects(term.wait(), CommandExitError);
  });

  it("files: write, read, list, exists, makeDir, rename, remove; relative paths are under the home directory", async () => {
    const info = await sbx.files.write("/tmp/e2b/a.txt", "first file");
    assert.equal(info.path, "/tmp/e2b/a.txt");
    assert.equal(await sbx.files.read("/tmp/e2b/a.txt"), "first file");
    const bytes = Buffer.alloc(300_000, 7);
    await sbx.files.write("/tmp/e2b/blob.bin", new Blob([bytes]).stream());
    assert.ok(Buffer.from(await sbx.files.read("/tmp/e2b/blob.bin", { format: "bytes" })).equals(bytes));
    await sbx.files.write("/tmp/e2b/gz.txt", "compressed on the way", { gzip: true });
    assert.equal(await sbx.files.read("/tmp/e2b/gz.txt"), "compressed on the way");
    const stream = await sbx.files.read("/tmp/e2b/blob.bin", { format: "stream" });
    let streamed = 0;
    for await (const chunk of stream) streamed += (chunk as Uint8Array).length;
    assert.equal(streamed, bytes.length);
    await sbx.files.remove("/tmp/e2b/gz.txt");
    await sbx.files.write([
      { path: "/tmp/e2b/m1.txt", data: "one" },
      { path: "/tmp/e2b/m2.txt", data: "two" },
    ]);
    const names = (await sbx.files.list("/tmp/e2b")).map((e) => e.name).sort();
    assert.deepEqual(names, ["a.txt", "blob.bin", "m1.txt", "m2.txt"]);
    assert.equal(await sbx.files.read("/tmp/e2b/m2.txt"), "two"); // multipart: each part to its own path
    assert.equal(await sbx.files.makeDir("/tmp/e2b/sub/deeper"), true);
    assert.equal(await sbx.files.makeDir("/tmp/e2b/sub/deeper"), false);
    const moved = await sbx.files.rename("/tmp/e2b/a.txt", "/tmp/e2b/sub/b.txt");
    assert.equal(moved.path, "/tmp/e2b/sub/b.txt");
    assert.equal(moved.type, "file");
    assert.equal(await sbx.files.exists("/tmp/e2b/a.txt"), false);
    assert.equal(await sbx.files.exists("/tmp/e2b/sub/b.txt"), true);
    await sbx.files.write("notes.txt", "in home");
    assert.equal((await sbx.commands.run("cat /root/notes.txt")).stdout, "in home");
    await sbx.files.remove("/tmp/e2b");
    assert.equal(await sbx.files.exists("/tmp/e2b"), false);
    await assert.rejects(sbx.files.read("/tmp/e2b/missing"), FileNotFoundError);
    await assert.rejects(sbx.files.list("/nonexistent"), NotFoundError);
  });

  it("setTimeout, Sandbox.list with metadata filters, connect, pause and resume", async () => {
    await sbx.setTimeout(120_000);
    const end = (await sbx.getInfo()).endAt.getTime();
    assert.ok(Math.abs(end - (Date.now() + 120_000)) < 10_000, `endAt ${new Date(end).toISOString()}`);
    const found = await Sandbox.list({ query: { metadata: { "run id": "7" } } }).nextItems();
    assert.deepEqual(
      found.map((s) => s.sandboxId),
      [sbx.sandboxId],
    );
    assert.equal((await Sandbox.list({ query: { metadata: { "run id": "8" } } }).nextItems()).length, 0);
    await sbx.pause();
    assert.equal((await sbx.getInfo()).state, "paused");
    assert.equal(await sbx.isRunning(), false);
    const resumed = await Sandbox.connect(sbx.sandboxId);
    assert.equal((await resumed.commands.run("echo back")).stdout, "back\n");
  });

  it("watching a directory: WatchDir stream and the CreateWatcher/GetWatcherEvents API", async () => {
    await sbx.files.makeDir("/tmp/watched");
    const seen: string[] = [];
    const handle = await sbx.files.watchDir("/tmp/watched", (ev) => void seen.push(`${ev.type}:${ev.name}`));
    const rpc = async (method: string, body: object) => {
      const res = await fetch(`${url}/filesystem.Filesystem/${method}`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "e2b-sandbox-id": sbx.sandboxId,
          "x-access-token": (sbx as unknown as { envdAccessToken: string }).envdAccessToken,
        },
        body: JSON.stringify(body),
      });
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as Record<string, unknown>;
    };
    const { watcherId } = (await rpc("CreateWatcher", { path: "/tmp/watched" })) as { watcherId: string };
    await sbx.files.write("/tmp/watched/new.txt", "x");
    for (let i = 0; i < 50 && !seen.includes("create:new.txt"); i++) await new Promise((r) => setTimeout(r, 100));
    await handle.stop();
    assert.ok(seen.includes("create:new.txt"), seen.join(" "));
    const { events } = (await rpc("GetWatcherEvents", { watcherId })) as { events: { name: string; type: string }[] };
    assert.deepEqual(events, [{ name: "new.txt", type: "EVENT_TYPE_CREATE" }]);
    await rpc("RemoveWatcher", { watcherId });
  });

  it("hostile uploads (a truncated multipart body, corrupt gzip) fail that request and never the server", async () => {
    const headers = {
      "e2b-sandbox-id": sbx.sandboxId,
      "x-access-token": (sbx as unknown as { envdAccessToken: string }).envdAccessToken,
    };
    const truncated = await fetch(`${url}/files?path=/tmp/trunc`, {
      method: "POST",
      headers: { ...headers, "content-type": "multipart/form-data; boundary=XYZ" },
      body: '--XYZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nhello',
    });
    assert.ok(truncated.status >= 400, String(truncated.status));
    for (const path of ["/tmp/gz", "/"]) {
      const gz = await fetch(`${url}/files?path=${path}`, {
        method: "POST",
        headers: { ...headers, "content-type": "application/octet-stream", "content-encoding": "gzip" },
        body: Buffer.from("this is not gzip at all"),
      });
      assert.ok(gz.status >= 400, String(gz.status));
    }
    await new Promise((r) => setTimeout(r, 200)); // an unhandled 'error' event would have ended this process by now
    assert.equal((await sbx.commands.run("echo still")).stdout, "still\n");
    // no token: refused before the body is read
    const noToken = await fetch(`${url}/process.Process/List`, {
      method: "POST",
      headers: { "content-type": "application/json", "e2b-sandbox-id": sbx.sandboxId },
      body: "{}",
    });
    assert.equal(noToken.status, 401);
  });

  it("fork: a copy of the running sandbox with its files and metadata", async () => {
    await sbx.files.write("/root/before-fork.txt", "forked state");
    const [clone] = await Sandbox.fork(sbx.sandboxId, { count: 1 });
    assert.ok(clone instanceof Sandbox, String(clone));
    try {
      assert.notEqual(clone.sandboxId, sbx.sandboxId);
      assert.equal((await clone.commands.run("cat /root/before-fork.txt")).stdout, "forked state");
      assert.deepEqual((await clone.getInfo()).metadata, { suite: "e2b-test", "run id": "7" });
    } finally {
      await clone.kill();
    }
  });

  it("refuses a wrong API key, a wrong envd access token, an unknown template and an unknown sandbox", async () => {
    await assert.rejects(Sandbox.list({ apiKey: "e2b_wrong" }).nextItems(), AuthenticationError);
    await assert.rejects(Sandbox.create({ apiKey: "e2b_wrong" }), AuthenticationError);
    const res = await fetch(`${url}/files?path=/etc/hostname`, {
      headers: { "E2b-Sandbox-Id": sbx.sandboxId, "X-Access-Token": "forged" },
    });
    assert.equal(res.status, 401);
    assert.equal(((await res.json()) as { code: number }).code, 401);
    await assert.rejects(Sandbox.create("no-such-template-xyz"), /404/);
    await assert.rejects(Sandbox.connect("vm-doesnotexist"), SandboxNotFoundError);
    assert.equal(await Sandbox.kill("vm-doesnotexist"), false);
  });

  it("kill deletes the sandbox", async () => {
    const id = sbx.sandboxId;
    assert.equal(await sbx.kill(), true);
    assert.equal((await Sandbox.list().nextItems()).filter((s) => s.sandboxId === id).length, 0);
    await assert.rejects(Sandbox.getInfo(id), SandboxNotFoundError);
  });
});
