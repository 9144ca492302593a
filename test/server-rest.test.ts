/**
 * `smolvm serve`'s REST API against real VMs: authentication, validation, the OpenAPI document, streamed commands,
 * background commands, files (large, streamed, bounded server memory), folders as tar, the terminal over WebSocket.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { Validator } from "@seriousme/openapi-schema-validator";
import WebSocket from "ws";
import { buildServer, routesOf } from "../src/server/app.js";
import { SandboxHub } from "../src/server/hub.js";
import { newTokenFile, type Served, serve } from "./support/serve.js";

const peakRssMib = (pid: number) =>
  Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024;

/** Read an NDJSON response as events, noting when each arrived. */
async function events(res: Response): Promise<{ ev: Record<string, unknown>; at: number }[]> {
  const out: { ev: Record<string, unknown>; at: number }[] = [];
  let buf = "";
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += Buffer.from(chunk).toString("utf8");
    let nl = buf.indexOf("\n");
    while (nl >= 0) {
      out.push({ ev: JSON.parse(buf.slice(0, nl)), at: performance.now() });
      buf = buf.slice(nl + 1);
      nl = buf.indexOf("\n");
    }
  }
  return out;
}

describe("REST API", () => {
  let s: Served;
  let id = "";
  const work = mkdtempSync(join(tmpdir(), "smolvm-rest-"));

  before(async () => {
    s = await serve();
    const res = await s.api("/v1/sandboxes", { method: "POST", json: { labels: { suite: "rest" } } });
    assert.equal(res.status, 201, await res.clone().text());
    id = ((await res.json()) as { vmId: string }).vmId;
  });
  after(async () => {
    if (id) await s.api(`/v1/sandboxes/${id}`, { method: "DELETE" });
    await s.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("no token, a wrong token and another listener's token are 401 and say nothing about sandboxes", async () => {
    const other = await serve([], newTokenFile());
    try {
      const bodies = new Set<string>();
      for (const headers of [
        {} as Record<string, string>,
        { authorization: "Bearer nope-nope-nope-nope" },
        { authorization: `Bearer ${other.token}` },
      ]) {
        for (const path of [`/v1/sandboxes/${id}`, "/v1/sandboxes/vm-doesnotexist", "/v1/sandboxes"]) {
          const res = await fetch(`${s.url}${path}`, { headers });
          assert.equal(res.status, 401, path);
          bodies.add(await res.text());
        }
      }
      assert.equal(bodies.size, 1, "every 401 is the same, whether the sandbox exists or not");
      // the other listener accepts its own token, not ours
      assert.equal((await other.api("/v1/sandboxes")).status, 200);
      assert.equal((await fetch(`${other.url}/v1/sandboxes`, { headers: s.auth })).status, 401);
    } finally {
      await other.stop();
    }
  });

  test("validation errors name the field", async () => {
    const bad = async (json: unknown) => {
      const res = await s.api("/v1/sandboxes", { method: "POST", json });
      assert.equal(res.status, 400);
      return ((await res.json()) as { error: { field: string; message: string } }).error;
    };
    assert.equal((await bad({ memSizeMib: 5 })).field, "memSizeMib");
    assert.equal((await bad({ network: { mode: "bogus" } })).field.split(".")[0], "network");
    assert.match((await bad({ colour: "blue" })).message, /colour/);
    const run = await s.api(`/v1/sandboxes/${id}/commands`, { method: "POST", json: { cmd: "true", timeoutMs: -1 } });
    assert.equal(run.status, 400);
    assert.equal(((await run.json()) as { error: { field: string } }).error.field, "timeoutMs");
    assert.equal((await s.api("/v1/sandboxes/vm-nosuchthing")).status, 404);
    // a client may open the internet to its guest, never the host's networks
    for (const cidr of ["169.254.169.254/32", "10.1.2.0/24", "0.0.0.0/0"]) {
      const e = await bad({ network: { mode: "user", internet: { allowCidrs: [cidr] } } });
      assert.equal(e.field, "network.internet.allowCidrs", cidr);
      assert.match(e.message, /--allow-private-cidrs/);
    }
  });

  test("the OpenAPI document is valid OpenAPI 3.1 and lists every route", async () => {
    const doc = (await (await fetch(`${s.url}/openapi.json`)).json()) as {
      openapi: string;
      paths: Record<string, object>;
    };
    assert.equal(doc.openapi, "3.1.0");
    const v = await new Validator().validate(doc as never);
    assert.ok(v.valid, JSON.stringify(v.errors)?.slice(0, 2000));
    const want = [
      "post /v1/sandboxes",
      "get /v1/sandboxes",
      "get /v1/sandboxes/{id}",
      "delete /v1/sandboxes/{id}",
      "post /v1/sandboxes/{id}/pause",
      "post /v1/sandboxes/{id}/resume",
      "post /v1/sandboxes/{id}/timeout",
      "post /v1/sandboxes/{id}/snapshots",
      "post /v1/sandboxes/{id}/fork",
      "post /v1/sandboxes/{id}/commands",
      "get /v1/sandboxes/{id}/commands",
      "get /v1/sandboxes/{id}/commands/{pid}",
      "post /v1/sandboxes/{id}/commands/{pid}/stdin",
      "post /v1/sandboxes/{id}/commands/{pid}/signal",
      "get /v1/sandboxes/{id}/files/content",
      "put /v1/sandboxes/{id}/files/content",
      "get /v1/sandboxes/{id}/files",
      "get /v1/sandboxes/{id}/files/stat",
      "post /v1/sandboxes/{id}/files/mkdir",
      "delete /v1/sandboxes/{id}/files",
      "post /v1/sandboxes/{id}/files/rename",
      "get /v1/sandboxes/{id}/files/tar",
      "put /v1/sandboxes/{id}/files/tar",
      "get /v1/sandboxes/{id}/terminal",
      "get /v1/sandboxes/{id}/ports",
      "post /v1/sandboxes/{id}/ports",
      "post /v1/sandboxes/{id}/browser",
      "get /v1/sandboxes/{id}/browser",
      "delete /v1/sandboxes/{id}/browser",
      "get /v1/sandboxes/{id}/browser/screenshot",
      "post /v1/sandboxes/{id}/browser/open",
      "get /v1/sandboxes/{id}/browser/text",
      "post /v1/sandboxes/{id}/browser/click",
      "post /v1/sandboxes/{id}/browser/type",
      "get /v1/snapshots",
      "get /v1/images",
      "get /health",
      "get /metrics",
    ];
    const have = new Set(Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m} ${p}`)));
    for (const r of want) assert.ok(have.has(r), `${r} is in /openapi.json`);
    // every route the application serves under /v1, /health and /metrics, as Fastify registered it
    const app = await buildServer({ token: "t".repeat(20), hub: new SandboxHub() });
    await app.ready();
    const served = routesOf(app).filter((r) => /^\S+ (\/v1\/|\/health$|\/metrics$)/.test(r) && !r.startsWith("head "));
    await app.close();
    assert.ok(served.length >= want.length);
    for (const r of served) assert.ok(have.has(r), `served route ${r} is in /openapi.json`);
  });

  test("output streams as NDJSON while the command runs, and as SSE", async () => {
    const res = await s.api(`/v1/sandboxes/${id}/commands`, {
      method: "POST",
      headers: { accept: "application/x-ndjson" },
      json: { cmd: "echo first; sleep 3; echo second >&2; exit 7" },
    });
    assert.equal(res.status, 200);
    const evs = await events(res);
    const first = evs.find((e) => e.ev.type === "stdout");
    const end = evs.at(-1);
    assert.deepEqual(first?.ev, { type: "stdout", data: "first\n" });
    assert.deepEqual(evs.find((e) => e.ev.type === "stderr")?.ev, { type: "stderr", data: "second\n" });
    assert.equal(end?.ev.type, "exit");
    assert.equal(end?.ev.exitCode, 7);
    assert.ok((end?.at ?? 0) - (first?.at ?? 0) > 1500, "the first bytes arrived before the command ended");

    const sse = await s.api(`/v1/sandboxes/${id}/commands?stream=sse`, {
      method: "POST",
      json: { cmd: ["echo", "sse"] },
    });
    assert.match(sse.headers.get("content-type") ?? "", /text\/event-stream/);
    const text = await sse.text();
    assert.match(text, /event: stdout\ndata: \{"type":"stdout","data":"sse\\n"\}/);
    assert.match(text, /event: exit\ndata: \{"type":"exit","exitCode":0/);

    const plain = (await (
      await s.api(`/v1/sandboxes/${id}/commands`, {
        method: "POST",
        json: { cmd: "echo $X; pwd", env: { X: "y" }, cwd: "/tmp" },
      })
    ).json()) as { stdout: string; exitCode: number };
    assert.deepEqual(plain.stdout.split("\n"), ["y", "/tmp", ""]);
  });

  test("background commands: follow, stdin, list, signal", async () => {
    const start = await s.api(`/v1/sandboxes/${id}/commands`, {
      method: "POST",
      json: { cmd: "read line; echo got:$line; sleep 600", background: true },
    });
    assert.equal(start.status, 201);
    const { pid } = (await start.json()) as { pid: number };
    const follow = s.api(`/v1/sandboxes/${id}/commands/${pid}`).then(events);
    await new Promise((r) => setTimeout(r, 300));
    const wrote = await s.api(`/v1/sandboxes/${id}/commands/${pid}/stdin`, {
      method: "POST",
      json: { data: "hello\n" },
    });
    assert.equal(wrote.status, 204);
    const listed = (await (await s.api(`/v1/sandboxes/${id}/commands`)).json()) as {
      commands: { pid: number; running: boolean }[];
    };
    assert.ok(listed.commands.some((c) => c.pid === pid && c.running));
    await new Promise((r) => setTimeout(r, 500));
    const sig = await s.api(`/v1/sandboxes/${id}/commands/${pid}/signal`, { method: "POST", json: { signal: "TERM" } });
    assert.equal(sig.status, 204);
    const evs = (await follow).map((e) => e.ev);
    assert.deepEqual(evs[0], { type: "start", pid });
    assert.ok(
      evs.some((e) => e.type === "stdout" && e.data === "got:hello\n"),
      JSON.stringify(evs),
    );
    assert.equal(evs.at(-1)?.type, "exit");
    assert.equal(evs.at(-1)?.signal, 15);
  });

  test("a large file goes up and down intact, streamed, and the server's memory stays bounded", async () => {
    const file = join(work, "big");
    const size = 96 << 20;
    writeFileSync(file, randomBytes(size));
    const want = createHash("sha256").update(readFileSync(file)).digest("hex");
    // warm up first (buffers, JIT, heap): the first transfer grows any process by some tens of MiB once
    await s.api(`/v1/sandboxes/${id}/files/content?path=/root/warm`, { method: "PUT", body: randomBytes(16 << 20) });
    await (await s.api(`/v1/sandboxes/${id}/files/content?path=/root/warm`)).arrayBuffer();
    const before = peakRssMib(s.proc.pid as number);
    const up = await s.api(`/v1/sandboxes/${id}/files/content?path=/root/big.bin`, {
      method: "PUT",
      headers: { "content-type": "application/octet-stream" },
      body: Readable.toWeb(createReadStream(file)) as ReadableStream,
      duplex: "half",
    } as RequestInit);
    assert.equal(up.status, 201, await up.clone().text());
    assert.equal(((await up.json()) as { bytesWritten: number }).bytesWritten, size);
    const down = await s.api(`/v1/sandboxes/${id}/files/content?path=/root/big.bin`);
    assert.equal(down.status, 200);
    const h = createHash("sha256");
    let n = 0;
    for await (const c of down.body as unknown as AsyncIterable<Uint8Array>) {
      h.update(c);
      n += c.length;
    }
    assert.equal(n, size);
    assert.equal(h.digest("hex"), want);
    const grew = peakRssMib(s.proc.pid as number) - before;
    assert.ok(grew < 48, `the server's peak memory grew by ${grew.toFixed(0)} MiB moving 2 x 96 MiB`);
    await s.api(`/v1/sandboxes/${id}/files?path=/root/big.bin`, { method: "DELETE" });
  });

  test("files: list, stat, mkdir, rename, remove, folders as tar, errors", async () => {
    assert.equal(
      (await s.api(`/v1/sandboxes/${id}/files/mkdir`, { method: "POST", json: { path: "/root/d/e" } })).status,
      204,
    );
    const put = await s.api(`/v1/sandboxes/${id}/files/content?path=/root/d/e/f.txt&mode=0640`, {
      method: "PUT",
      body: "contents",
    });
    assert.equal(put.status, 201);
    const st = (await (await s.api(`/v1/sandboxes/${id}/files/stat?path=/root/d/e/f.txt`)).json()) as {
      size: number;
      mode: number;
      type: string;
    };
    assert.deepEqual([st.type, st.size, st.mode], ["file", 8, 0o640]);
    assert.equal(
      (
        await s.api(`/v1/sandboxes/${id}/files/rename`, {
          method: "POST",
          json: { from: "/root/d/e/f.txt", to: "/root/d/g.txt" },
        })
      ).status,
      204,
    );
    const list = (await (await s.api(`/v1/sandboxes/${id}/files?path=/root/d`)).json()) as {
      entries: { name: string }[];
    };
    assert.deepEqual(list.entries.map((e) => e.name).sort(), ["e", "g.txt"]);
    const tar = Buffer.from(await (await s.api(`/v1/sandboxes/${id}/files/tar?path=/root/d`)).arrayBuffer());
    assert.ok(tar.includes(Buffer.from("g.txt")) && tar.includes(Buffer.from("contents")));
    const back = await s.api(`/v1/sandboxes/${id}/files/tar?path=/root/copy`, { method: "PUT", body: tar });
    assert.equal(back.status, 201);
    const got = await (await s.api(`/v1/sandboxes/${id}/files/content?path=/root/copy/g.txt`)).text();
    assert.equal(got, "contents");
    const missing = await s.api(`/v1/sandboxes/${id}/files/content?path=/root/nope`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, "file_not_found");
    assert.equal(
      (await s.api(`/v1/sandboxes/${id}/files?path=/root/d&recursive=true`, { method: "DELETE" })).status,
      204,
    );
    assert.equal((await s.api(`/v1/sandboxes/${id}/files/stat?path=/root/d`)).status, 404);
  });

  test("a terminal over WebSocket", async () => {
    const ws = new WebSocket(`${s.url.replace("http", "ws")}/v1/sandboxes/${id}/terminal?cols=100&rows=30`, {
      headers: s.auth,
    });
    let screen = "";
    const exit = new Promise<Record<string, unknown>>((resolve, reject) => {
      ws.on("message", (data: Buffer, binary: boolean) => {
        if (binary) screen += data.toString("utf8");
        else {
          const m = JSON.parse(data.toString()) as Record<string, unknown>;
          if (m.type === "exit") resolve(m);
          if (m.type === "error") reject(new Error(String(m.message)));
        }
      });
      ws.on("error", reject);
    });
    await new Promise((r) => ws.once("open", r));
    ws.send(JSON.stringify({ type: "resize", cols: 123, rows: 45 }));
    ws.send(Buffer.from("stty size; echo sum-$((40+2)); exit 5\n"), { binary: true });
    const m = await exit;
    assert.equal(m.exitCode, 5);
    assert.match(screen, /45 123/);
    assert.match(screen, /sum-42/);
    const unauth = new WebSocket(`${s.url.replace("http", "ws")}/v1/sandboxes/${id}/terminal`);
    const status = await new Promise<number>((resolve) =>
      unauth.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0)),
    );
    assert.equal(status, 401);
  });

  test("limits: a full server answers 429 or 507 naming the limit, and /metrics counts", async () => {
    const full = await serve(["--max-sandboxes", "1", "--max-memory", "256"]);
    try {
      const r = await full.api("/v1/sandboxes", { method: "POST", json: {} });
      const e = ((await r.json()) as { error: { limit: string; message: string } }).error;
      assert.ok([429, 507].includes(r.status));
      assert.match(e.message, /maxSandboxes|maxMemoryMib/);
      const mem = await full.api("/v1/sandboxes", { method: "POST", json: { memSizeMib: 1024 } });
      assert.ok([429, 507].includes(mem.status));
    } finally {
      await full.stop();
    }
    const metrics = await (await s.api("/metrics")).text();
    assert.match(metrics, /smolvm_sandboxes\{state="running"\} [1-9]/);
    assert.match(metrics, /smolvm_exec_seconds_count\{api="rest"\} [1-9]/);
    assert.match(
      metrics,
      /smolvm_http_requests_total\{method="POST",route="\/v1\/sandboxes\/:id\/commands",status="200"\}/,
    );
  });

  test("pause and resume: a resumed sandbox runs for a new lifetime", async () => {
    assert.equal((await s.api(`/v1/sandboxes/${id}/pause`, { method: "POST" })).status, 200);
    const r = await s.api(`/v1/sandboxes/${id}/resume`, { method: "POST", json: { timeoutMs: 600_000 } });
    const info = (await r.json()) as { status: string; timeLeftMs: number };
    assert.equal(info.status, "running");
    assert.ok(info.timeLeftMs > 590_000 && info.timeLeftMs <= 600_000, String(info.timeLeftMs));
    const run = await s.api(`/v1/sandboxes/${id}/commands`, { method: "POST", json: { cmd: "echo awake" } });
    assert.equal(((await run.json()) as { stdout: string }).stdout, "awake\n");
  });

  test("delete: the sandbox is gone", async () => {
    const res = await s.api(`/v1/sandboxes/${id}`, { method: "DELETE" });
    assert.equal(res.status, 204);
    assert.equal((await s.api(`/v1/sandboxes/${id}`)).status, 404);
    id = "";
  });
});
