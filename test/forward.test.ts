/**
 * Networking pieces of the agent, on the host: NETCFG (checked, not applied, outside a guest), TCPCONNECT, and the
 * `forward` daemon relaying host TCP connections through the real proxy and agent to a TCP server (here a local
 * echo server standing in for a port inside the guest).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Duplex } from "node:stream";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import { encodeFields, encodeFrame, FrameDecoder, PROTOCOL_VERSION, ST, T, u32 } from "../src/agent/codec.js";
import { AgentError } from "../src/errors.js";
import { ensureAgent } from "../src/images/agent-build.js";
import { processAlive, sleep, waitFor } from "../src/util/proc.js";

let bin: string;
const dir = mkdtempSync(join(tmpdir(), "smolvm-forward-test-"));
const children: ChildProcess[] = [];
const servers: Server[] = [];
const agentSock = join(dir, "agent.sock");
const proxySock = join(dir, "proxy.sock");
let echoPort = 0;
let echoOpen = 0; // connections the echo server holds open
let sourcePort = 0;
let sourceSent = 0; // bytes the source server handed to the kernel on its latest connection
const SOURCE_BYTES = 48 << 20;

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

function listen(server: Server, host = "127.0.0.1"): Promise<number> {
  servers.push(server);
  return new Promise((resolve) => server.listen(0, host, () => resolve((server.address() as { port: number }).port)));
}

/** A port nobody listens on. */
async function closedPort(): Promise<number> {
  const s = createServer();
  const port = await new Promise<number>((r) =>
    s.listen(0, "127.0.0.1", () => r((s.address() as { port: number }).port)),
  );
  await new Promise((r) => s.close(r));
  return port;
}

function serveStdio(): AgentClient {
  const child = spawn(bin, ["serve", "--stdio"], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(child);
  return new AgentClient(Duplex.from({ readable: child.stdout, writable: child.stdin }) as never, false);
}

/** Start `forward`; resolves with the process and the port it printed. */
function startForward(args: string[]): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(bin, ["forward", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    child.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^(\d+)\n/.exec(out);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.once("exit", (code) => reject(new Error(`forward exited with ${code}: ${err}`)));
  });
}

interface Exchange {
  data: Buffer;
  error?: string;
  ms: number;
}

/** Connect, send `data`, half-close, and collect everything until the connection closes. */
function exchange(port: number, data: Buffer, host = "127.0.0.1"): Promise<Exchange> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ port, host });
    let error: string | undefined;
    s.on("connect", () => s.end(data));
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("error", (e: NodeJS.ErrnoException) => {
      error = e.code ?? e.message;
    });
    s.on("close", () => resolve({ data: Buffer.concat(chunks), error, ms: Date.now() - t0 }));
  });
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : 0;
}

before(async () => {
  bin = await ensureAgent();
  echoPort = await listen(
    createServer({ allowHalfOpen: true }, (s) => {
      echoOpen++;
      s.on("close", () => echoOpen--);
      s.on("error", () => {});
      s.pipe(s);
    }),
  );
  sourcePort = await listen(
    createServer((s) => {
      sourceSent = 0;
      s.on("error", () => {});
      const chunk = randomBytes(64 << 10);
      const pump = () => {
        while (sourceSent < SOURCE_BYTES) {
          sourceSent += chunk.length;
          if (!s.write(chunk)) return void s.once("drain", pump);
        }
        s.end();
      };
      pump();
    }),
  );
  const agent = spawn(bin, ["serve", "--listen", agentSock], { stdio: "inherit" });
  children.push(agent);
  await waitFor(() => existsSync(agentSock), 3000);
  const proxy = spawn(bin, ["proxy", "--upstream", agentSock, "--listen", proxySock], { stdio: "inherit" });
  children.push(proxy);
  await waitFor(() => existsSync(proxySock), 3000);
});

after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  for (const s of servers) s.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("NETCFG and TCPCONNECT, agent on the host", () => {
  it("NETCFG outside a guest answers DONE and changes nothing; a bad request is refused", async () => {
    const c = serveStdio();
    await c.netConfig({ addr: "10.0.2.15/24", gateway: "10.0.2.2", mac: "02:00:00:00:00:01", dns: ["10.0.2.3"] });
    await c.netConfig({ addr: "10.0.2.15/24", gateway: "10.0.2.2", mac: "02:00:00:00:00:01", dns: [], mtu: 1400 });
    await c.netConfig({ down: true });
    const bad = async (cfg: Parameters<AgentClient["netConfig"]>[0], re: RegExp) =>
      assert.rejects(c.netConfig(cfg), (e: unknown) => e instanceof AgentError && e.code === 22 && re.test(e.message));
    const ok = { addr: "10.0.2.15/24", gateway: "10.0.2.2", mac: "02:00:00:00:00:01", dns: ["1.1.1.1"] };
    await bad({ ...ok, addr: "10.0.2.15" }, /address/);
    await bad({ ...ok, addr: "10.0.2.15/33" }, /address/);
    await bad({ ...ok, addr: "10.0.2.300/24" }, /address/);
    await bad({ ...ok, gateway: "gw" }, /gateway/);
    await bad({ ...ok, mac: "01:00:00:00:00:01" }, /MAC/); // multicast
    await bad({ ...ok, mac: "02:00:00:00:00:01:02" }, /MAC/);
    await bad({ ...ok, dns: ["1.1.1.1\nnameserver 6.6.6.6"] }, /DNS/);
    // a raw frame: DONE on the request's stream
    const raw = spawn(bin, ["serve", "--stdio"], { stdio: ["pipe", "pipe", "inherit"] });
    children.push(raw);
    const dec = new FrameDecoder();
    const got = new Promise<number[]>((resolve) => {
      const types: number[] = [];
      raw.stdout.on("data", (d: Buffer) => {
        for (const f of dec.push(d)) {
          if (f.stream === 7) types.push(f.type);
          if (f.type === T.HELLO) assert.equal(f.payload.readUInt32BE(5), PROTOCOL_VERSION);
          if (f.stream === 7) resolve(types);
        }
      });
    });
    raw.stdin.write(encodeFrame(T.NETCFG, 7, encodeFields([[1, "192.168.1.2/24"]])));
    assert.deepEqual(await got, [T.DONE]);
    raw.kill();
    c.close();
  });

  it("TCPCONNECT relays a TCP connection with flow control; a refused port is an ERROR", async () => {
    const c = serveStdio();
    const s = await c.tcpConnect(echoPort);
    const data = randomBytes(3 << 20);
    const chunks: Buffer[] = [];
    s.on("data", (d: Buffer) => chunks.push(d));
    const ended = new Promise((r) => s.on("end", r));
    s.end(data);
    await ended;
    assert.equal(sha(Buffer.concat(chunks)), sha(data));
    const port = await closedPort();
    await assert.rejects(c.tcpConnect(port), (e: unknown) => e instanceof AgentError && e.code === 111);
    await assert.rejects(c.tcpConnect(port, "not-an-ip"), (e: unknown) => e instanceof AgentError && e.code === 22);
    // destroying the duplex closes the guest side
    const open = await c.tcpConnect(echoPort);
    await waitFor(() => echoOpen === 1, 2000);
    open.destroy();
    assert.ok(await waitFor(() => echoOpen === 0, 3000), "the guest side stayed open");
    c.close();
  });
});

describe("forward: host TCP port -> proxy -> agent -> TCP server", () => {
  let fwd: { child: ChildProcess; port: number };
  const pidFile = join(dir, "forward.pid");

  before(async () => {
    fwd = await startForward([
      "--agent",
      proxySock,
      "--listen",
      "127.0.0.1:0",
      "--port",
      String(echoPort),
      "--pid-file",
      pidFile,
    ]);
  });

  it("prints its port, writes its pid file and round-trips bytes", async () => {
    assert.ok(fwd.port > 0);
    assert.equal(readFileSync(pidFile, "utf8"), `${fwd.child.pid}\n`);
    const r = await exchange(fwd.port, Buffer.from("hello through the guest\n"));
    assert.equal(r.error, undefined);
    assert.equal(r.data.toString(), "hello through the guest\n");
  });

  it("carries 8 MiB both ways intact", async () => {
    const data = randomBytes(8 << 20);
    const r = await exchange(fwd.port, data);
    assert.equal(r.error, undefined);
    assert.equal(r.data.length, data.length);
    assert.equal(sha(r.data), sha(data));
  });

  it("serves 50 connections at once", async () => {
    const inputs = Array.from({ length: 50 }, () => randomBytes(256 << 10));
    const results = await Promise.all(inputs.map((d) => exchange(fwd.port, d)));
    results.forEach((r, i) => {
      assert.equal(r.error, undefined, `connection ${i}`);
      assert.equal(sha(r.data), sha(inputs[i] as Buffer), `connection ${i}`);
    });
  });

  it("a client that does not read stops the guest's sender; memory stays bounded", async () => {
    const src = await startForward(["--agent", proxySock, "--listen", "127.0.0.1:0", "--port", String(sourcePort)]);
    const s = connect({ port: src.port, host: "127.0.0.1" });
    s.pause();
    await sleep(1500);
    const stalledAt = sourceSent;
    assert.ok(stalledAt < SOURCE_BYTES, `the sender was not held back (${stalledAt} bytes sent)`);
    assert.ok(rssKiB(src.child.pid as number) < 24 << 10, `forward RSS ${rssKiB(src.child.pid as number)} KiB`);
    const hash = createHash("sha256");
    let n = 0;
    s.on("data", (d: Buffer) => {
      n += d.length;
      hash.update(d);
    });
    const closed = new Promise((r) => s.on("close", r));
    s.resume();
    await closed;
    console.log(
      `sender held at ${stalledAt} of ${SOURCE_BYTES} bytes; forward RSS ${rssKiB(src.child.pid as number)} KiB`,
    );
    assert.equal(n, SOURCE_BYTES);
    src.child.kill("SIGTERM");
  });

  it("a refused guest port closes the client at once", async () => {
    const refused = await startForward([
      "--agent",
      proxySock,
      "--listen",
      "127.0.0.1:0",
      "--port",
      String(await closedPort()),
    ]);
    const r = await exchange(refused.port, Buffer.from("anyone?"));
    assert.equal(r.data.length, 0);
    assert.ok(r.ms < 2000, `took ${r.ms} ms`);
    refused.child.kill("SIGTERM");
  });

  it("a stopped VM (no agent socket) fails at start, clearly", async () => {
    const t0 = Date.now();
    await assert.rejects(
      startForward(["--agent", join(dir, "no-such.sock"), "--listen", "127.0.0.1:0", "--port", String(echoPort)]),
      /exited with 1: forward: cannot reach the VM's agent at .*no-such\.sock: No such file or directory/,
    );
    assert.ok(Date.now() - t0 < 3000);
    // a socket nobody accepts on says so too (no greeting: given up after 5 s)
    const mute = createServer(() => {});
    servers.push(mute);
    const mutePath = join(dir, "mute.sock");
    await new Promise<void>((r) => mute.listen(mutePath, r));
    await assert.rejects(
      startForward(["--agent", mutePath, "--listen", "127.0.0.1:0", "--port", String(echoPort)]),
      /exited with 1: forward: cannot reach the VM's agent at .*mute\.sock: no greeting/,
    );
  });

  it("listens only on the address it was given", async () => {
    const other = await exchange(fwd.port, Buffer.from("x"), "127.0.0.2");
    assert.equal(other.error, "ECONNREFUSED");
    const v6 = await startForward(["--agent", proxySock, "--listen", "[::1]:0", "--port", String(echoPort)]).catch(
      () => null,
    );
    if (v6) {
      // a host without IPv6 cannot listen on ::1 at all
      const r = await exchange(v6.port, Buffer.from("six"), "::1");
      assert.equal(r.data.toString(), "six");
      assert.equal((await exchange(v6.port, Buffer.from("x"), "127.0.0.1")).error, "ECONNREFUSED");
      v6.child.kill("SIGTERM");
    }
  });

  it("refuses bad arguments before it prints anything", async () => {
    for (const args of [
      ["--agent", proxySock, "--listen", "localhost:0", "--port", "80"],
      ["--agent", proxySock, "--listen", "127.0.0.1:0", "--port", "0"],
      ["--agent", proxySock, "--listen", "127.0.0.1:0", "--port", "80", "--guest-host", "::1"],
      ["--agent", proxySock, "--listen", "127.0.0.1:99999", "--port", "80"],
    ])
      await assert.rejects(startForward(args), /exited with 2/);
  });

  it("drops a connection whose stream breaks the protocol, and keeps serving", async () => {
    const fakePath = join(dir, "fake-agent.sock");
    let n = 0;
    let conns = 0;
    const ids = new Set<number>();
    const bad = new Set<number>();
    const signaled = new Set<number>();
    const fake = createServer((s: Socket) => {
      conns++;
      const dec = new FrameDecoder();
      s.on("error", () => {});
      s.write(
        encodeFrame(
          T.WELCOME,
          0,
          encodeFields([
            [1, u32(0x05000000)],
            [2, u32(PROTOCOL_VERSION)],
          ]),
        ),
      );
      s.on("data", (d: Buffer) => {
        for (const f of dec.push(d)) {
          if (f.type === T.SIGNAL) {
            signaled.add(f.stream);
            s.write(encodeFrame(T.EXIT, f.stream, Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9])));
          }
          if (f.type !== T.TCPCONNECT) continue;
          // every client its own stream id in our slot's range
          assert.equal(f.stream >>> 24, 5);
          assert.notEqual(f.stream & 0xffffff, 0);
          assert.ok(!ids.has(f.stream), `stream id ${f.stream} reused`);
          ids.add(f.stream);
          const mode = n++;
          const started = encodeFrame(T.STARTED, f.stream, encodeFields([[ST.OUTWIN, u32(65536)]]));
          if (mode < 3) bad.add(f.stream);
          if (mode === 0) {
            s.write(encodeFrame(T.STDOUT, f.stream, Buffer.alloc(65536))); // output before STARTED
          } else if (mode === 1) {
            s.write(started);
            s.write(encodeFrame(T.EXIT, f.stream, Buffer.from([0, 0]))); // malformed EXIT
          } else if (mode === 2) {
            // a window larger than asked for: what it may send could not be bounded
            s.write(encodeFrame(T.STARTED, f.stream, encodeFields([[ST.OUTWIN, u32(64 << 20)]])));
          } else if (mode === 3) {
            s.write(encodeFrame(T.ERROR, f.stream, encodeFields([[1, u32(111)]]))); // the guest port refused
          } else {
            s.write(started);
            s.write(encodeFrame(T.STDOUT, f.stream, Buffer.from("fine")));
            s.write(encodeFrame(T.EXIT, f.stream, Buffer.alloc(8)));
          }
        }
      });
    });
    servers.push(fake);
    await new Promise<void>((r) => fake.listen(fakePath, r));
    const f = await startForward(["--agent", fakePath, "--listen", "127.0.0.1:0", "--port", "80"]);
    for (let i = 0; i < 4; i++) {
      const r = await exchange(f.port, Buffer.alloc(0));
      assert.equal(r.data.length, 0, `case ${i}`);
      assert.equal(r.error, "ECONNRESET", `case ${i}`);
      assert.ok(processAlive(f.child.pid), `forward died on case ${i}`);
    }
    const good = await Promise.all([1, 2, 3].map(() => exchange(f.port, Buffer.alloc(0))));
    for (const g of good) assert.equal(g.data.toString(), "fine");
    assert.equal(conns, 1, "forward connected to the agent socket more than once");
    // the broken streams (still alive as far as the agent knows) were ended with SIGNAL; the others were not
    assert.ok(await waitFor(() => bad.size === 3 && [...bad].every((id) => signaled.has(id)), 2000));
    assert.equal(signaled.size, 3);
    f.child.kill("SIGTERM");
  });

  it("a framing error on the agent connection resets every client and ends the forwarder", async () => {
    const fakePath = join(dir, "fake-agent-2.sock");
    let n = 0;
    const fake = createServer((s: Socket) => {
      const dec = new FrameDecoder();
      s.on("error", () => {});
      s.write(encodeFrame(T.WELCOME, 0, encodeFields([[1, u32(0x07000000)]])));
      s.on("data", (d: Buffer) => {
        for (const f of dec.push(d)) {
          if (f.type !== T.TCPCONNECT) continue;
          if (n++ === 0) s.write(encodeFrame(T.STARTED, f.stream, encodeFields([[ST.OUTWIN, u32(65536)]])));
          else s.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0])); // an impossible frame length
        }
      });
    });
    servers.push(fake);
    await new Promise<void>((r) => fake.listen(fakePath, r));
    const f = await startForward(["--agent", fakePath, "--listen", "127.0.0.1:0", "--port", "80"]);
    const exited = new Promise<number | null>((r) => f.child.once("exit", (code) => r(code)));
    const held = connect({ port: f.port, host: "127.0.0.1" });
    held.on("error", () => {});
    const heldClosed = new Promise((r) => held.on("close", r));
    await waitFor(() => n === 1, 2000);
    const r = await exchange(f.port, Buffer.from("x"));
    assert.equal(r.data.length, 0);
    assert.equal(await exited, 1);
    await heldClosed;
  });

  it("relays 20 clients at once over its one agent connection while another client reads nothing", async () => {
    const mux = await startForward(["--agent", proxySock, "--listen", "127.0.0.1:0", "--port", String(echoPort)]);
    // the stuck client: sends a lot, never reads; its stream fills its own windows and stops there
    const stuck = connect({ port: mux.port, host: "127.0.0.1" });
    stuck.on("error", () => {});
    stuck.pause();
    await new Promise((r) => stuck.on("connect", r));
    stuck.write(Buffer.alloc(64 << 20)); // more than every buffer on the way can hold
    await sleep(500);
    const inputs = Array.from({ length: 20 }, () => randomBytes(1 << 20));
    const t0 = Date.now();
    const results = await Promise.all(inputs.map((d) => exchange(mux.port, d)));
    results.forEach((r, i) => {
      assert.equal(r.error, undefined, `connection ${i}`);
      assert.equal(r.data.length, 1 << 20, `connection ${i}`);
      assert.equal(sha(r.data), sha(inputs[i] as Buffer), `connection ${i}`);
    });
    console.log(`20 x 1 MiB echoed in ${Date.now() - t0} ms beside a stuck client`);
    assert.ok(stuck.writableLength > 0, "the stuck client was not held back");
    assert.ok(!stuck.destroyed);
    assert.ok(rssKiB(mux.child.pid as number) < 48 << 10, `forward RSS ${rssKiB(mux.child.pid as number)} KiB`);
    const stuckClosed = new Promise((r) => stuck.on("close", r));
    stuck.destroy();
    await stuckClosed;
    // it keeps serving
    const after = await exchange(mux.port, Buffer.from("still here"));
    assert.equal(after.data.toString(), "still here");
    mux.child.kill("SIGTERM");
  });

  it("ends, closing its clients, when the proxy goes away", async () => {
    const sock2 = join(dir, "proxy2.sock");
    const proxy2 = spawn(bin, ["proxy", "--upstream", agentSock, "--listen", sock2], { stdio: "inherit" });
    children.push(proxy2);
    await waitFor(() => existsSync(sock2), 3000);
    const f = await startForward(["--agent", sock2, "--listen", "127.0.0.1:0", "--port", String(echoPort)]);
    const exited = new Promise<number | null>((r) => f.child.once("exit", (code) => r(code)));
    assert.ok(await waitFor(() => echoOpen === 0, 3000), "earlier connections still open");
    const held = Array.from({ length: 3 }, () => {
      const s = connect({ port: f.port, host: "127.0.0.1" });
      s.on("error", () => {});
      return { s, closed: new Promise((r) => s.on("close", r)), got: [] as Buffer[] };
    });
    for (const h of held) {
      h.s.on("data", (d: Buffer) => h.got.push(d));
      h.s.write("ping");
    }
    assert.ok(await waitFor(() => held.every((h) => Buffer.concat(h.got).toString() === "ping"), 3000));
    assert.equal(echoOpen, 3);
    proxy2.kill("SIGKILL");
    assert.equal(await exited, 0);
    await Promise.all(held.map((h) => h.closed));
    assert.ok(!processAlive(f.child.pid));
    // the agent lost that channel: it closed the guest-side connections
    assert.ok(await waitFor(() => echoOpen === 0, 3000), "the guest-side connections stayed open");
  });

  it("--runas drops to the given identity after connecting, and still relays", async (t) => {
    if (process.getuid?.() !== 0) return t.skip("needs root");
    const f = await startForward([
      "--agent",
      proxySock,
      "--listen",
      "127.0.0.1:0",
      "--port",
      String(echoPort),
      "--runas",
      "65534:65534",
    ]);
    const status = readFileSync(`/proc/${f.child.pid}/status`, "utf8");
    assert.match(status, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
    assert.match(status, /^Gid:\s+65534\s+65534\s+65534\s+65534$/m);
    assert.match(status, /^Groups:\s*$/m);
    const data = randomBytes(2 << 20);
    const results = await Promise.all([0, 1, 2].map(() => exchange(f.port, data)));
    for (const r of results) assert.equal(sha(r.data), sha(data));
    const exited = new Promise<number | null>((r) => f.child.once("exit", (code) => r(code)));
    f.child.kill("SIGTERM");
    assert.equal(await exited, 0);
  });

  it("ends on SIGTERM, closing its connections and leaving no process or pid file", async () => {
    const held = connect({ port: fwd.port, host: "127.0.0.1" });
    held.on("error", () => {});
    const heldClosed = new Promise((r) => held.on("close", r));
    await new Promise((r) => held.on("connect", r));
    held.write("x");
    assert.ok(await waitFor(() => echoOpen > 0, 3000));
    const exited = new Promise<number | null>((r) => fwd.child.once("exit", (code) => r(code)));
    fwd.child.kill("SIGTERM");
    assert.equal(await exited, 0);
    await heldClosed;
    assert.ok(!processAlive(fwd.child.pid));
    assert.ok(!existsSync(pidFile), "pid file left behind");
    // the proxy released the stream: the agent closed its side of the relayed connection
    assert.ok(await waitFor(() => echoOpen === 0, 3000), "the guest-side connection stayed open");
  });
});

describe("launch --tap", () => {
  const tap = `smvtt${process.pid % 100000}`;
  let made = false;

  before(() => {
    if (process.getuid?.() !== 0) return;
    made = spawnSync("ip", ["tuntap", "add", "dev", tap, "mode", "tap"], { stdio: "ignore" }).status === 0;
  });
  after(() => {
    if (made) spawnSync("ip", ["tuntap", "del", "dev", tap, "mode", "tap"], { stdio: "ignore" });
  });

  const launch = (tapArg: string, script: string) =>
    spawnSync(
      bin,
      [
        "launch",
        "--log",
        join(dir, "launch.log"),
        "--qmp",
        join(dir, "no-qmp.sock"),
        "--timeout",
        "3000",
        "--tap",
        tapArg,
        "--isolate",
        "--",
        "sh",
        "-c",
        script,
      ],
      { encoding: "utf8" },
    );

  it("hands the VMM the existing tap device as the given descriptor", (t) => {
    if (!made) return t.skip("needs root and /dev/net/tun");
    // the stand-in VMM shows what it inherited, then exits (so launch fails, printing its log)
    const r = launch(`${tap}:9`, "cat /proc/self/fdinfo/9; readlink /proc/self/fd/9");
    assert.match(r.stderr, new RegExp(`iff:\\s+${tap}`));
    assert.match(r.stderr, /\/dev\/net\/tun/);
  });

  it("fails clearly when the device cannot be opened", () => {
    const r = launch("smvt-missing0:9", "true");
    assert.equal(r.status, 125);
    assert.match(r.stderr, /launch: tap smvt-missing0: /);
    const bad = launch("smvt0:2", "true");
    assert.equal(bad.status, 2);
  });
});
