/**
 * The C agent and proxy run on the host here (same protocol, same binary as in the guest), so protocol behaviour is
 * tested in milliseconds. The VM tests check the same paths through a real guest.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import { encodeFields, encodeFrame, T } from "../src/agent/codec.js";
import { AgentError, CommandTimeoutError, VMDiedError } from "../src/errors.js";
import { ensureAgent } from "../src/images/agent-build.js";
import { runCommand } from "../src/sandbox/commands.js";
import { Env } from "../src/sandbox/env.js";
import { processAlive, sleep, waitFor } from "../src/util/proc.js";

let bin: string;
const dir = mkdtempSync(join(tmpdir(), "smolvm-agent-test-"));
const children: ChildProcess[] = [];

function serveStdio(): AgentClient {
  const child = spawn(bin, ["serve", "--stdio"], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  const duplex = Duplex.from({ readable: child.stdout, writable: child.stdin });
  return new AgentClient(duplex as never, false);
}

before(async () => {
  bin = await ensureAgent();
});
after(() => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

describe("agent on the host over stdio", () => {
  it("reports stdout, stderr and exit codes", async () => {
    const c = serveStdio();
    const r = await runCommand(c, "echo out; echo err >&2; exit 7", {}, {});
    assert.deepEqual([r.stdout, r.stderr, r.exitCode, r.ok], ["out\n", "err\n", 7, false]);
    const argv = await runCommand(c, ["printf", "%s|", "a b", "c"], {}, {});
    assert.equal(argv.stdout, "a b|c|");
    const missing = await runCommand(c, ["/nonexistent-program"], {}, {});
    assert.equal(missing.exitCode, 127);
    assert.match(missing.stderr, /nonexistent-program/);
    const env = await runCommand(c, "echo $A-$B; pwd", {}, { env: { B: "2" }, cwd: "/tmp" }).then((x) => x.stdout);
    assert.equal(env, "-2\n/tmp\n");
    c.close();
  });

  it("runs 20 commands at once on one channel", async () => {
    const c = serveStdio();
    const barrier = mkdtempSync(join(dir, "barrier-"));
    // each command finishes only once all 20 have started: proof that they run concurrently
    const script = (i: number) =>
      `touch ${barrier}/${i}; n=0; while [ $(ls ${barrier} | wc -l) -lt 20 ]; do sleep 0.02; n=$((n+1)); [ $n -gt 1000 ] && exit 9; done; echo ${i}`;
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => runCommand(c, script(i), {}, {})));
    assert.deepEqual(
      results.map((r) => r.stdout.trim()),
      Array.from({ length: 20 }, (_, i) => String(i)),
    );
    c.close();
  });

  it("passes 4 MiB of stdin through intact", async () => {
    const c = serveStdio();
    const data = Buffer.alloc(4 << 20);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 13)) & 0xff;
    const r = await runCommand(c, "sha256sum", {}, { stdin: data });
    assert.equal(r.stdout.split(" ")[0], createHash("sha256").update(data).digest("hex"));
    c.close();
  });

  it("a command that never reads its stdin stalls nobody else (per-stream stdin window)", async () => {
    const c = serveStdio();
    const h = c.exec({ shell: "sleep 300", stdin: true });
    await h.started;
    const flood = h.writeStdin(Buffer.alloc(32 << 20)); // far more than the pipe and the window hold
    const r = await runCommand(c, "echo still-served", {}, {});
    assert.equal(r.stdout, "still-served\n");
    await h.kill(9);
    assert.equal((await h.exited).signal, 9);
    await flood; // the writer gives up once the command is gone
    c.close();
  });

  it("a timeout kills the whole process group, grandchildren too", async () => {
    const c = serveStdio();
    let grandchild = 0;
    await assert.rejects(
      runCommand(
        c,
        "sleep 300 & echo $!; wait",
        {},
        {
          timeoutMs: 500,
          onStdout: (b: Buffer) => {
            grandchild = Number.parseInt(b.toString(), 10);
          },
        },
      ),
      (e: unknown) => e instanceof CommandTimeoutError && /^\d+\n$/.test(e.stdout),
    );
    assert.ok(grandchild > 0);
    assert.ok(await waitFor(() => !processAlive(grandchild), 3000), "grandchild still alive");
    c.close();
  });

  it("caps output kept in memory and flags truncation", async () => {
    const c = serveStdio();
    let streamed = 0;
    const r = await runCommand(
      c,
      "head -c 3000000 /dev/zero",
      {},
      {
        maxOutputBytes: 100_000,
        onStdout: (b: Buffer) => {
          streamed += b.length;
        },
      },
    );
    assert.equal(r.stdout.length, 100_000);
    assert.equal(streamed, 3_000_000);
    assert.equal(r.truncated, true);
    c.close();
  });
});

describe("proxy: many host clients on one agent channel", () => {
  const agentSock = join(dir, "agent.sock");
  const proxySock = join(dir, "proxy.sock");

  before(async () => {
    const agent = spawn(bin, ["serve", "--listen", agentSock], { stdio: "inherit" });
    children.push(agent);
    await sleep(100);
    const proxy = spawn(bin, ["proxy", "--upstream", agentSock, "--listen", proxySock], { stdio: "inherit" });
    children.push(proxy);
    await sleep(100);
  });

  it("serves two clients at once and routes each its own output", async () => {
    const [a, b] = await Promise.all([AgentClient.connect(proxySock), AgentClient.connect(proxySock)]);
    const [ra, rb] = await Promise.all([
      runCommand(a, "for i in 1 2 3; do echo a$i; sleep 0.05; done", {}, {}),
      runCommand(b, "for i in 1 2 3; do echo b$i; sleep 0.05; done", {}, {}),
    ]);
    assert.equal(ra.stdout, "a1\na2\na3\n");
    assert.equal(rb.stdout, "b1\nb2\nb3\n");
    a.close();
    b.close();
  });

  it("kills a client's processes when the client goes away", async () => {
    const a = await AgentClient.connect(proxySock);
    const h = a.exec({ shell: "sleep 300" });
    const pid = await h.started;
    assert.ok(processAlive(pid));
    a.close();
    assert.ok(await waitFor(() => !processAlive(pid), 3000), "process of a departed client still alive");
  });

  it("drops a client that uses another client's stream ids", async () => {
    const a = await AgentClient.connect(proxySock);
    await a.send(T.PING, 0x7f000000, Buffer.alloc(4)); // not this client's slot
    await assert.rejects(a.ping(2000), VMDiedError);
  });
});

describe("a hostile peer", () => {
  function fakePeer(script: (sock: import("node:net").Socket) => void): Promise<string> {
    const path = join(dir, `fake-${Math.random().toString(36).slice(2)}.sock`);
    const server = createServer(script);
    after(() => server.close());
    return new Promise((r) => server.listen(path, () => r(path)));
  }

  it("an oversized frame fails pending commands at once instead of buffering", async () => {
    const path = await fakePeer((s) => {
      s.write(encodeFrame(T.WELCOME, 0, encodeFields([[1, Buffer.from([1, 0, 0, 0])]])));
      s.on("data", () => {
        const h = Buffer.alloc(9);
        h.writeUInt32BE(0xfffffff0, 0);
        s.write(h);
      });
    });
    const c = await AgentClient.connect(path);
    await assert.rejects(runCommand(c, "true", {}, {}), (e: unknown) => e instanceof AgentError);
  });

  it("a malformed data frame fails only its own request, it does not crash the host", async () => {
    const path = await fakePeer((s) => {
      s.write(encodeFrame(T.WELCOME, 0, encodeFields([[1, Buffer.from([1, 0, 0, 0])]])));
      s.on("data", (d: Buffer) => {
        const stream = d.readUInt32BE(5);
        if (d.readUInt8(4) === T.ENV_LIST)
          s.write(encodeFrame(T.STDOUT, stream, Buffer.from([3, 0xff, 0xff, 0xff, 0xff])));
        if (d.readUInt8(4) === T.PING) s.write(encodeFrame(T.PONG, stream, d.subarray(9, 13)));
      });
    });
    const c = await AgentClient.connect(path);
    await assert.rejects(new Env(async () => c).list(), AgentError);
    assert.ok((await c.ping(2000)) >= 0, "the connection should still work");
    c.close();
  });

  it("a peer that hangs up mid-command rejects with VMDiedError", async () => {
    const path = await fakePeer((s) => {
      s.write(encodeFrame(T.WELCOME, 0, encodeFields([[1, Buffer.from([1, 0, 0, 0])]])));
      s.on("data", () => s.destroy());
    });
    const c = await AgentClient.connect(path);
    await assert.rejects(runCommand(c, "true", {}, {}), VMDiedError);
  });

  it("the proxy cuts clients off when the guest breaks the framing", async () => {
    const up = await fakePeer((s) => {
      s.on("data", () => s.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0])));
    });
    const front = join(dir, "front.sock");
    const proxy = spawn(bin, ["proxy", "--upstream", up, "--listen", front], { stdio: "ignore" });
    children.push(proxy);
    await sleep(100);
    const c = await AgentClient.connect(front);
    await assert.rejects(runCommand(c, "true", {}, {}), VMDiedError);
    assert.ok(await waitFor(() => proxy.exitCode !== null, 3000), "proxy did not exit");
  });
});
