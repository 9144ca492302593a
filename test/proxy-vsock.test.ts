/**
 * The agent binary's Firecracker roles, on the host, against honest fakes below the VMM boundary (no Firecracker, no
 * KVM here): the proxy over Firecracker's vsock socket (a fake muxer in front of a real `smolvm-agent serve`), the
 * proxy reading the console from a FIFO, and `launch` with --ready-connect, --chdir and --stdout-fifo.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  chownSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AgentClient } from "../src/agent/client.js";
import { T } from "../src/agent/codec.js";
import { ensureAgent } from "../src/images/agent-build.js";
import { runCommand } from "../src/sandbox/commands.js";
import { processAlive, sleep, waitFor } from "../src/util/proc.js";
import { type FakeVsockMuxer, startFakeVsockMuxer } from "./support/fake-vsock-muxer.js";

let bin: string;
const dir = mkdtempSync(join(tmpdir(), "smolvm-proxy-vsock-"));
const children: ChildProcess[] = [];
const pids: number[] = []; // daemons and VMMs that are not our children
const muxers: FakeVsockMuxer[] = [];
const clients: AgentClient[] = [];
let seq = 0;
const fresh = (name: string) => join(dir, `${++seq}-${name}`);

before(async () => {
  bin = await ensureAgent();
});
after(async () => {
  for (const c of clients) c.close();
  for (const c of children) c.kill("SIGKILL");
  for (const p of pids) if (processAlive(p)) process.kill(p, "SIGKILL");
  for (const m of muxers) await m.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Run the agent binary to its end (asynchronously: the fakes answer meanwhile). */
function runAgent(
  args: string[],
  timeoutMs = 20_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(p);
  let stdout = "";
  let stderr = "";
  p.stdout.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  p.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      p.kill("SIGKILL");
      reject(new Error(`${args[0]} did not end within ${timeoutMs} ms; stderr: ${stderr}`));
    }, timeoutMs);
    p.on("close", (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A real agent server on the host: the guest agent. */
async function startAgent(): Promise<string> {
  const sock = fresh("agent.sock");
  children.push(spawn(bin, ["serve", "--listen", sock], { stdio: "inherit" }));
  assert.ok(await waitFor(() => existsSync(sock), 5000), "the agent server did not listen");
  return sock;
}

async function muxer(opts: Parameters<typeof startFakeVsockMuxer>[1]): Promise<FakeVsockMuxer> {
  const m = await startFakeVsockMuxer(fresh("v.sock"), opts);
  muxers.push(m);
  return m;
}

const exitReason = (file: string) => (JSON.parse(readFileSync(file, "utf8")) as { reason: string }).reason;

/** utime + stime of a process, in clock ticks. */
/** The proxy in vsock mode, daemonized, dropping to the VM's identity (1234567): its socket and pid. */
async function daemonProxyAsVm(upstream: string): Promise<{ listen: string; pid: number }> {
  const listen = fresh("proxy.sock");
  const pidfile = fresh("proxy.pid");
  const r = await runAgent([
    "proxy",
    ...["--upstream", upstream, "--vsock-port", "1024", "--listen", listen, "--runas", "1234567:1234567"],
    ...["--daemon", "--pidfile", pidfile, "--log", fresh("proxy.log")],
  ]);
  assert.equal(r.code, 0, r.stderr);
  const pid = Number(readFileSync(pidfile, "utf8"));
  pids.push(pid);
  return { listen, pid };
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

describe("proxy --vsock-port: Firecracker's host-initiated vsock", () => {
  it("listens before the guest does, queues commands, and serves them once the guest's agent answers", async () => {
    const agent = await startAgent();
    const mux = await muxer({ target: agent, guestListening: false, closeFirst: 2 });
    const listen = fresh("proxy.sock");
    const pidfile = fresh("proxy.pid");
    const exitFile = fresh("exit.json");
    const started = Date.now();
    const r = await runAgent([
      "proxy",
      ...["--upstream", mux.path, "--vsock-port", "1024", "--listen", listen, "--release-all"],
      ...["--daemon", "--pidfile", pidfile, "--log", fresh("proxy.log"), "--exit-file", exitFile],
    ]);
    assert.equal(r.code, 0, r.stderr);
    const pid = Number(readFileSync(pidfile, "utf8"));
    pids.push(pid);
    assert.ok(processAlive(pid), "the proxy daemon is not running");
    assert.ok(existsSync(listen), "the proxy does not listen");
    assert.equal(mux.answered(), 0, "the guest answered before the proxy listened");
    assert.ok(Date.now() - started < 5000, "the proxy waited for the guest before daemonizing");

    const c = await AgentClient.connect(listen);
    clients.push(c);
    let done = false;
    const run = runCommand(c, "echo through-vsock; pwd", {}, { cwd: "/" }).finally(() => {
      done = true;
    });
    assert.ok(await waitFor(() => mux.connections() >= 4, 5000), "the proxy does not retry");
    assert.equal(done, false, "a command finished with no guest to run it");
    mux.setGuestListening(true);
    const res = await run;
    assert.deepEqual([res.stdout, res.exitCode], ["through-vsock\n/\n", 0]);
    assert.ok(
      mux.lines.every((l) => l === "CONNECT 1024"),
      `unexpected lines ${JSON.stringify(mux.lines)}`,
    );
    assert.equal(mux.answered(), 1);
    // --release-all: the snapshot's clients' commands are released, first thing on the new connection
    const first = mux.fromHost();
    assert.ok(first.length >= 9);
    assert.equal(first.readUInt8(4), T.RELEASE);

    // more commands on the same connection, from a second client too
    const c2 = await AgentClient.connect(listen);
    clients.push(c2);
    const [a, b] = await Promise.all([runCommand(c, "echo a", {}, {}), runCommand(c2, "echo b", {}, {})]);
    assert.deepEqual([a.stdout, b.stdout], ["a\n", "b\n"]);
    assert.equal(mux.connections(), mux.lines.length);

    // the guest going away (the vsock connection closes) is the VM's end, as over QEMU's channel
    await mux.close();
    assert.ok(await waitFor(() => !processAlive(pid), 5000), "the proxy outlived its upstream");
    assert.equal(exitReason(exitFile), "vmm-exited");
    assert.equal(existsSync(listen), false);
  });

  it("with --runas, connects before dropping privileges (the socket is in root's private folder), then serves", {
    skip: process.getuid?.() === 0 ? false : "needs root to drop privileges",
  }, async () => {
    const agent = await startAgent();
    const mux = await muxer({ target: agent, guestListening: false, closeFirst: 3 });
    setTimeout(() => mux.setGuestListening(true), 300); // the guest agent comes up while the proxy is starting
    const { listen, pid } = await daemonProxyAsVm(mux.path);
    assert.equal(mux.answered(), 1, "connected before it daemonized");
    const uid = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    assert.equal(uid, "1234567", "the proxy did not drop privileges");
    const c = await AgentClient.connect(listen);
    clients.push(c);
    assert.equal((await runCommand(c, "echo as-root-first", {}, {})).stdout, "as-root-first\n");
  });

  it("with --runas and no guest, fails the start within --connect-timeout (nothing left running)", {
    skip: process.getuid?.() === 0 ? false : "needs root to drop privileges",
  }, async () => {
    const mux = await muxer({ guestListening: false });
    const pidfile = fresh("proxy.pid");
    const r = await runAgent([
      "proxy",
      ...["--upstream", mux.path, "--vsock-port", "1024", "--listen", fresh("p.sock"), "--runas", "1234567:1234567"],
      ...["--daemon", "--pidfile", pidfile, "--connect-timeout", "300"],
    ]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /no agent on vsock port 1024/);
    assert.equal(existsSync(pidfile), false);
  });

  it("a reset connection (a snapshot) is made again; clients are closed and come back", async () => {
    const agent = await startAgent();
    const mux = await muxer({ target: agent });
    const listen = fresh("proxy.sock");
    const pidfile = fresh("proxy.pid");
    const exitFile = fresh("exit.json");
    const r = await runAgent([
      "proxy",
      ...["--upstream", mux.path, "--vsock-port", "1024", "--listen", listen, "--exit-file", exitFile],
      ...["--daemon", "--pidfile", pidfile, "--log", fresh("proxy.log")],
    ]);
    assert.equal(r.code, 0, r.stderr);
    const pid = Number(readFileSync(pidfile, "utf8"));
    pids.push(pid);
    const c = await AgentClient.connect(listen);
    clients.push(c);
    assert.equal((await runCommand(c, "echo before", {}, {})).stdout, "before\n");
    mux.resetConnections();
    assert.ok(await waitFor(() => c.closed, 5000), "the client was not told its streams are gone");
    assert.ok(await waitFor(() => mux.answered() === 2, 5000), "the proxy did not connect again");
    assert.ok(processAlive(pid), "the proxy ended on a reset");
    const c2 = await AgentClient.connect(listen);
    clients.push(c2);
    assert.equal((await runCommand(c2, "echo after", {}, {})).stdout, "after\n");
    // and a VMM that is gone (its socket with it) ends the proxy, as before
    await mux.close();
    rmSync(mux.path, { force: true });
    assert.ok(await waitFor(() => !processAlive(pid), 5000), "the proxy outlived its VMM");
    assert.equal(exitReason(exitFile), "vmm-exited");
  });

  it("with --runas, reconnects after a reset through the descriptor it kept (its run folder is closed to it)", {
    skip: process.getuid?.() === 0 ? false : "needs root to drop privileges",
  }, async () => {
    const agent = await startAgent();
    const mux = await muxer({ target: agent });
    chownSync(mux.path, 1234567, 1234567); // as Firecracker, run as the VM's identity, makes it
    const { listen } = await daemonProxyAsVm(mux.path);
    mux.resetConnections();
    assert.ok(await waitFor(() => mux.answered() === 2, 5000), "no reconnection after dropping privileges");
    const c = await AgentClient.connect(listen);
    clients.push(c);
    assert.equal((await runCommand(c, "echo again", {}, {})).stdout, "again\n");
  });

  it("keeps the guest's bytes that come with the answer line (here a frame no guest may send)", async () => {
    const bad = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x14, 0, 0, 0, 1]); // a length no frame can have
    const mux = await muxer({ answer: "OK 5\n", behind: bad, closeFirst: 1 });
    const exitFile = fresh("exit.json");
    const r = await runAgent(
      ["proxy", "--upstream", mux.path, "--vsock-port", "1024", "--listen", fresh("p.sock"), "--exit-file", exitFile],
      10_000,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(exitReason(exitFile), "guest-protocol");
    assert.equal(mux.answered(), 1);
  });

  it("retries a wrong answer and gives up after --connect-timeout: agent-unreachable", async () => {
    const mux = await muxer({ answer: "NO\n" });
    const exitFile = fresh("exit.json");
    const listen = fresh("p.sock");
    const started = Date.now();
    const r = await runAgent(
      [
        "proxy",
        ...["--upstream", mux.path, "--vsock-port", "1024", "--listen", listen],
        ...["--connect-timeout", "700", "--exit-file", exitFile],
      ],
      10_000,
    );
    const took = Date.now() - started;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(exitReason(exitFile), "agent-unreachable");
    assert.ok(took >= 650 && took < 5000, `gave up after ${took} ms`);
    assert.ok(mux.connections() >= 3, `only ${mux.connections()} attempts`);
    assert.match(r.stderr, /answered "NO"/);
    assert.equal(existsSync(listen), false);
  });

  it("a guest that never listens: agent-unreachable too", async () => {
    const mux = await muxer({ guestListening: false });
    const exitFile = fresh("exit.json");
    const r = await runAgent(
      ["proxy", "--upstream", mux.path, "--vsock-port", "1024", "--listen", fresh("p.sock")].concat([
        "--connect-timeout",
        "300",
        "--exit-file",
        exitFile,
      ]),
      10_000,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(exitReason(exitFile), "agent-unreachable");
    assert.match(r.stderr, /closed without an answer/);
  });

  it("rejects a bad port or timeout", () => {
    for (const extra of [
      ["--vsock-port", "x"],
      ["--vsock-port", "-1"],
      ["--vsock-port", "4294967296"],
      ["--vsock-port", "1024", "--connect-timeout", "0"],
    ]) {
      const r = spawnSync(bin, ["proxy", "--upstream", "u", "--listen", fresh("p.sock"), ...extra], {
        encoding: "utf8",
      });
      assert.equal(r.status, 2, extra.join(" "));
      assert.match(r.stderr, /usage/);
    }
  });
});

describe("proxy --console-fifo", () => {
  it("copies the console from a FIFO to the log, and idles once the writer is gone", async () => {
    const agent = await startAgent();
    const mux = await muxer({ target: agent });
    const fifo = fresh("console.fifo");
    assert.equal(spawnSync("mkfifo", ["-m", "600", fifo]).status, 0);
    const conlog = fresh("console.log");
    const listen = fresh("p.sock");
    const proxy = spawn(
      bin,
      ["proxy", "--upstream", mux.path, "--vsock-port", "1024", "--listen", listen].concat([
        "--console-fifo",
        fifo,
        "--console-log",
        conlog,
      ]),
      { stdio: "inherit" },
    );
    children.push(proxy);
    assert.ok(await waitFor(() => existsSync(listen), 5000), "the proxy does not listen");
    const w = openSync(fifo, "w"); // the proxy has it open for reading: this does not wait
    writeSync(w, "boot line 1\nboot line 2\n");
    assert.ok(
      await waitFor(() => existsSync(conlog) && readFileSync(conlog, "utf8") === "boot line 1\nboot line 2\n", 3000),
    );
    writeSync(w, "more\n");
    closeSync(w); // the VMM is gone: the FIFO reads end-of-file from now on
    assert.ok(await waitFor(() => readFileSync(conlog, "utf8").endsWith("more\n"), 3000));
    await sleep(100);
    const pid = proxy.pid as number;
    const before = cpuTicks(pid);
    await sleep(1000);
    const used = cpuTicks(pid) - before;
    assert.ok(used < 20, `the proxy used ${used} ticks of CPU in a second after the console's end`);
    assert.ok(processAlive(pid), "the proxy ended with the console");
    // and it still serves
    const c = await AgentClient.connect(listen);
    clients.push(c);
    assert.equal((await runCommand(c, "echo still", {}, {})).stdout, "still\n");
  });

  it("refuses --console with --console-fifo", () => {
    const r = spawnSync(bin, ["proxy", "--upstream", "u", "--listen", "l", "--console", "a", "--console-fifo", "b"], {
      encoding: "utf8",
    });
    assert.equal(r.status, 2);
  });
});

describe("launch --ready-connect, --chdir, --stdout-fifo", () => {
  /** Processes that hold `path` open. */
  function holders(path: string): number[] {
    const out: number[] = [];
    for (const name of readdirSync("/proc")) {
      const pid = Number(name);
      if (!Number.isInteger(pid)) continue;
      try {
        for (const fd of readdirSync(`/proc/${pid}/fd`)) {
          if (readlinkSync(`/proc/${pid}/fd/${fd}`) === path) {
            out.push(pid);
            break;
          }
        }
      } catch {
        // gone, or not ours to read
      }
    }
    return out;
  }

  it("returns the VMM's pid once its socket accepts; stdout to the FIFO, stderr to the log, run in --chdir", async () => {
    const vmDir = fresh("vm");
    mkdirSync(vmDir);
    const api = fresh("api.sock");
    const fifo = fresh("console.fifo");
    const log = fresh("vmm.log");
    const pidfile = fresh("vmm.pid");
    const status = fresh("status.json");
    // the stand-in VMM: says where it runs, complains on stderr, and listens (late) where Firecracker's API would
    const script = `pwd; echo on-stderr >&2; sleep 0.4; exec "$0" serve --listen "$1"`;
    const started = Date.now();
    const r = await runAgent([
      "launch",
      ...["--ready-connect", api, "--chdir", vmDir, "--stdout-fifo", fifo],
      ...["--log", log, "--pidfile", pidfile, "--status-file", status, "--timeout", "10000"],
      ...["--", "/bin/sh", "-c", script, bin, api],
    ]);
    assert.equal(r.code, 0, r.stderr);
    const pid = Number(r.stdout.trim());
    pids.push(pid);
    assert.equal(Number(readFileSync(pidfile, "utf8")), pid);
    assert.ok(Date.now() - started >= 350, "launch returned before the VMM listened");
    assert.ok(existsSync(api));
    assert.ok(processAlive(pid));
    // the FIFO: held by the VMM alone (not the launcher, long gone, nor the supervisor), its stdout
    assert.deepEqual(holders(fifo), [pid]);
    assert.equal(readlinkSync(`/proc/${pid}/fd/1`), fifo);
    const fd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const buf = Buffer.alloc(4096);
    const n = readSync(fd, buf, 0, buf.length, null);
    closeSync(fd);
    assert.equal(buf.subarray(0, n).toString(), `${vmDir}\n`);
    const logText = readFileSync(log, "utf8");
    assert.match(logText, /on-stderr/);
    assert.ok(!logText.includes(vmDir), "stdout went to the log");
    // the supervisor reports its end
    process.kill(pid, "SIGTERM");
    assert.ok(await waitFor(() => existsSync(status), 5000), "no status file");
    assert.match(readFileSync(status, "utf8"), /"signal":15/);
  });

  it("--qmp and --ready-connect: exactly one", () => {
    const base = ["launch", "--log", fresh("l.log")];
    for (const extra of [[], ["--qmp", "a", "--ready-connect", "b"]]) {
      const r = spawnSync(bin, [...base, ...extra, "--", "true"], { encoding: "utf8" });
      assert.equal(r.status, 2, extra.join(" "));
      assert.match(r.stderr, /usage: smolvm-agent launch --log FILE \(--qmp SOCK \| --ready-connect SOCK\)/);
    }
  });

  it("fails clearly when --chdir cannot be entered", () => {
    const r = spawnSync(
      bin,
      ["launch", "--log", fresh("l.log"), "--ready-connect", fresh("none.sock"), "--chdir", fresh("missing")].concat([
        "--timeout",
        "5000",
        "--",
        "true",
      ]),
      { encoding: "utf8" },
    );
    assert.equal(r.status, 125);
    assert.match(r.stderr, /launch: cannot change the VMM's directory to .*missing: No such file or directory/);
  });
});
