/**
 * A fake host and a fake internet for networking tests, in two fresh network namespaces joined by a veth pair.
 * No packet of ours ever touches the real (root) namespace: the veth ends are created directly inside the namespaces,
 * and every process we start runs inside one of them (`ip netns exec`).
 *
 *   host ns  "smvt-h-XXXXXX"                              internet ns  "smvt-i-XXXXXX"
 *     lo    127.0.0.1      http :8088 "host-loopback"       lo    198.51.100.10/20/30, 169.254.169.254 (/32 each)
 *     eth0  203.0.113.2/24 http :8089 "host-veth"  <-veth->  isp0  203.0.113.1/24  dnsmasq :53 (a/b/c.test)
 *     lan0  10.99.0.1/24   http :8090 "host-lan"                    http :80 on every peer, iperf3 :5201 on .10
 *     default via 203.0.113.1, /etc/netns/<host ns>/resolv.conf -> nameserver 203.0.113.1
 *
 * Every peer answers `GET /` (and any other path) with `peer <addr>\n`, `GET /big` with 64 MiB of zeros (streamed;
 * `/big?bytes=N` for another size) and `GET /whoami` with the client's address as the peer saw it.
 *
 * This file is compiled into dist/test/support and `node --test dist/test/` runs every .js under dist/test, so it
 * must have no side effect at import time; the server scripts are therefore embedded as strings.
 */
import { type ChildProcess, spawn as nodeSpawn, type SpawnOptions, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";

export const FAKENET = {
  hostAddr: "203.0.113.2",
  gateway: "203.0.113.1",
  dns: "203.0.113.1",
  prefixLen: 24,
  hostIf: "eth0",
  inetIf: "isp0",
  lanIf: "lan0",
  lanAddr: "10.99.0.1",
  peers: ["198.51.100.10", "198.51.100.20", "198.51.100.30"] as readonly string[],
  metadata: "169.254.169.254",
  peerPort: 80,
  loopbackPort: 8088,
  vethPort: 8089,
  lanPort: 8090,
  iperfPort: 5201,
  records: { "a.test": "198.51.100.10", "b.test": "198.51.100.20", "c.test": "198.51.100.30" } as Readonly<
    Record<string, string>
  >,
} as const;

export interface FakeNetOptions {
  /** Size of `/big` on the peers (default 64 MiB). */
  bigBytes?: number;
  /** Start `iperf3 -s` on the first peer if iperf3 is installed (default true). */
  iperf?: boolean;
  /** How long to wait for every server to answer (default 8 s). */
  readyTimeoutMs?: number;
}

export interface ExecOptions {
  /** Added to (not replacing) this process's environment. */
  env?: Record<string, string>;
  /** Kill (SIGKILL) and reject after this long (default 30 s). */
  timeoutMs?: number;
  /** Written to stdin, which is then closed (stdin is empty otherwise). */
  input?: string | Buffer;
  cwd?: string;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The host namespace's state, normalised so that before/after comparisons ignore counters and ifindexes. */
export interface NetSnapshot {
  /** `nft list ruleset`, counters/quota usage/expiry times removed. */
  ruleset: string;
  /** `ip -o link`, one sorted line per device, `name: flags ...`, without ifindex or the `@peer` suffix. */
  links: string;
  /** `ip -o addr`, sorted, without ifindex, lifetimes or the DAD `tentative` flag. */
  addresses: string;
  /** `ip route show table all` plus `ip -6 route show table all`, sorted. */
  routes: string;
}

export interface FetchResult {
  status: number;
  /** The body's first 256 KiB, as UTF-8. */
  body: string;
  /** Total body length received. */
  bytes: number;
}

export interface FakeNet {
  readonly hostNs: string;
  readonly inetNs: string;
  /** The three peers (198.51.100.10/20/30); the metadata address is in `metadata`, not here. */
  readonly peers: readonly string[];
  readonly metadata: string;
  readonly hostAddr: string;
  readonly gateway: string;
  readonly dns: string;
  readonly lanAddr: string;
  /** `{host, port}` of the iperf3 server, or null when iperf3 is not installed or was not asked for. */
  readonly iperf: { host: string; port: number } | null;
  /** Private scratch dir (hosts file, pid files); removed by destroy(). */
  readonly dir: string;

  /** Run a command inside the host ns. Rejects only on timeout or if it cannot be started. */
  exec(cmd: string, args?: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Same, inside the internet ns. */
  inetExec(cmd: string, args?: readonly string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Start a command inside the host ns; destroy() kills it if still running. */
  spawn(cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Same, inside the internet ns. */
  inetSpawn(cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
  /**
   * GET `url` from a Node process inside the host ns (or the internet ns); rejects with `ECONNREFUSED: ...`,
   * `ETIMEDOUT: ...` etc. Same as fetchIn(net, url, opts).
   */
  fetch(url: string, opts?: { timeoutMs?: number; ns?: "host" | "inet" }): Promise<FetchResult>;
  /** `dns.lookup(name, {all: true})` inside the host ns (getaddrinfo: /etc/netns resolv.conf, then dnsmasq). */
  lookup(name: string): Promise<string[]>;
  /** Point `name` at `ip` (one or several addresses; null removes it), and wait until dnsmasq answers so. */
  setRecord(name: string, ip: string | readonly string[] | null): Promise<void>;
  /** The host ns's ruleset, links, addresses and routes, normalised. */
  snapshot(): Promise<NetSnapshot>;
  /** Add other software's state to the host ns: nft table `inet foreign` and a TAP device `tap0`. */
  addForeign(): Promise<void>;
  /** PIDs of every process currently inside either namespace. */
  pids(): Promise<number[]>;
  /** Kill everything, delete both namespaces and /etc/netns/<hostNs>. Idempotent; safe from `after`. */
  destroy(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------
// Scripts run by `node -e` inside the namespaces (plain CommonJS; arguments start at process.argv[1]).

const HTTP_SERVER = String.raw`
const http = require("node:http");
const spec = JSON.parse(process.argv[1]);
const zero = Buffer.alloc(65536);
let pending = spec.servers.length;
for (const s of spec.servers) {
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    if (u.pathname === "/big") {
      let left = Number(u.searchParams.get("bytes") ?? spec.bigBytes);
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": String(left) });
      let closed = false;
      res.on("close", () => { closed = true; });
      const pump = () => {
        while (left > 0 && !closed) {
          const n = Math.min(left, zero.length);
          left -= n;
          if (!res.write(n === zero.length ? zero : zero.subarray(0, n))) return void res.once("drain", pump);
        }
        res.end();
      };
      return pump();
    }
    const body = u.pathname === "/whoami" ? req.socket.remoteAddress + "\n" : s.body;
    res.writeHead(200, { "content-type": "text/plain", "content-length": String(Buffer.byteLength(body)) });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  srv.on("error", (e) => { process.stderr.write("listen " + s.host + ":" + s.port + ": " + e.message + "\n"); process.exit(1); });
  srv.listen(s.port, s.host, () => { if (--pending === 0) process.stdout.write("ready\n"); });
}
`;

/**
 * A helper that lives in a namespace for the fake net's lifetime and answers JSON-line requests on stdin, so that
 * fetches, lookups and DNS checks do not each pay for a Node start (~0.1-0.3 s). Exits when its stdin closes.
 */
const AGENT = String.raw`
const http = require("node:http");
const dns = require("node:dns");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const MAX = 262144;
function get(url, timeoutMs) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: timeoutMs }, (res) => {
      let bytes = 0, kept = 0;
      const chunks = [];
      res.on("data", (c) => { bytes += c.length; if (kept < MAX) { chunks.push(c); kept += c.length; } });
      res.on("end", () => resolve({ status: res.statusCode, bytes, body: Buffer.concat(chunks).subarray(0, MAX).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(Object.assign(new Error("timed out"), { code: "ETIMEDOUT" })));
    req.on("error", reject);
  });
}
async function until(what, timeoutMs, fn) {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    try { last = await fn(); if (last === true) return; } catch (e) { last = (e.code ? e.code + ": " : "") + e.message; }
    if (Date.now() > deadline) throw new Error(what + ": " + last);
    await sleep(25);
  }
}
async function records(server, name) {
  const r = new dns.promises.Resolver({ timeout: 500, tries: 1 });
  r.setServers([server]);
  const q = (f) => f.call(r, name).catch((e) => { if (e.code === "ENOTFOUND" || e.code === "ENODATA") return []; throw e; });
  return [...(await q(r.resolve4)), ...(await q(r.resolve6))].sort();
}
const ops = {
  fetch: (m) => get(m.url, m.timeoutMs),
  lookup: async (m) => (await dns.promises.lookup(m.name, { all: true })).map((a) => a.address),
  async dnsWait(m) {
    const want = [...m.want].sort().join(",");
    await until(m.name + " (want [" + want + "])", m.timeoutMs, async () => {
      const got = (await records(m.server, m.name)).join(",");
      return got === want || "got [" + got + "]";
    });
  },
  async probe(m) {
    await Promise.all([
      ...m.urls.map((u) => until(u.url, m.timeoutMs, async () => {
        const r = await get(u.url, 1000);
        return r.body === u.body || "got " + JSON.stringify(r.body);
      })),
      ...m.names.map((n) => until(n.name, m.timeoutMs, async () => {
        const a = (await dns.promises.lookup(n.name, { family: 4 })).address;
        return a === n.ip || "got " + a;
      })),
    ]);
  },
};
require("node:readline").createInterface({ input: process.stdin }).on("line", async (line) => {
  const m = JSON.parse(line);
  let reply;
  try { reply = { id: m.id, ok: true, result: await ops[m.op](m) }; }
  catch (e) { reply = { id: m.id, ok: false, error: (e.code ? e.code + ": " : "") + e.message }; }
  process.stdout.write(JSON.stringify(reply) + "\n");
}).on("close", () => process.exit(0));
process.stdout.write("ready\n");
`;

/** The parent's end of an AGENT: request/response over JSON lines; keeps the event loop alive only while busy. */
class Agent {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private buf = "";
  private dead: Error | undefined;

  constructor(private readonly child: ChildProcess) {
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (d: string) => {
      // Replies can be megabytes long: only look for the end of a line in what just arrived.
      if (!d.includes("\n")) {
        this.buf += d;
        return;
      }
      const lines = (this.buf + d).split("\n");
      this.buf = lines.pop() ?? "";
      for (const line of lines) {
        if (line === "ready" || !line.startsWith("{")) continue;
        const m = JSON.parse(line) as { id: number; ok: boolean; result?: unknown; error?: string };
        const p = this.pending.get(m.id);
        if (!p) continue;
        this.pending.delete(m.id);
        if (m.ok) p.resolve(m.result);
        else p.reject(new Error(m.error));
      }
      this.idle();
    });
    child.stdin?.on("error", () => {});
    child.once("exit", (code, sig) => {
      this.dead = new Error(`fake net helper exited (${code ?? sig})`);
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    });
  }

  request<T>(op: string, args: Record<string, unknown>): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    const done = new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
    this.busy();
    this.child.stdin?.write(`${JSON.stringify({ id, op, ...args })}\n`);
    return done.finally(() => this.idle());
  }

  private busy(): void {
    this.child.ref();
    (this.child.stdout as (Readable & { ref?: () => void }) | null)?.ref?.();
  }

  idle(): void {
    if (this.pending.size) return;
    this.child.unref();
    (this.child.stdout as (Readable & { unref?: () => void }) | null)?.unref?.();
    (this.child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
}

// ---------------------------------------------------------------------------------------------------------------

function run(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = nodeSpawn(cmd, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
      cwd: opts.cwd,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.stdin.on("error", () => {}); // EPIPE if the command does not read its input
    child.stdin.end(opts.input ?? "");
    const ms = opts.timeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${cmd} ${args.join(" ")} did not finish in ${ms} ms\n${stderr}`));
    }, ms);
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

async function must(cmd: string, args: readonly string[], opts?: ExecOptions): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code ?? r.signal}): ${r.stderr.trim()}`);
  return r.stdout;
}

function which(bin: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${bin}`], { stdio: "ignore" }).status === 0;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<void> {
  if (exited(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function normRuleset(s: string): string {
  return s
    .replace(/ packets \d+ bytes \d+/g, "")
    .replace(/ used \d+ \w+/g, "")
    .replace(/ expires [\dhmsd.]+/g, "")
    .trimEnd();
}

function normLinks(s: string): string {
  return s
    .split("\n")
    .filter(Boolean)
    .map((l) =>
      l
        .replace(/^\d+:\s+([^:@\s]+)(@\S+)?:/, "$1:")
        .replace(/\\/g, " ")
        .replace(/\s+/g, " ")
        .trim(),
    )
    .sort()
    .join("\n");
}

function normAddrs(s: string): string {
  return s
    .split("\n")
    .filter(Boolean)
    .map((l) =>
      l
        .replace(/^\d+:\s+/, "")
        .replace(/\\?\s*valid_lft \S+ preferred_lft \S+/g, "")
        .replace(/ tentative| dadfailed| optimistic/g, "")
        .replace(/\s+/g, " ")
        .trim(),
    )
    .sort()
    .join("\n");
}

function normRoutes(s: string): string {
  return s
    .split("\n")
    .map((l) => l.replace(/\s+/g, " ").trim())
    .filter(Boolean)
    .sort()
    .join("\n");
}

const DIR_PREFIX = "smvt-fakenet-";

/** Kill every process inside the namespaces, then delete them (synchronously). */
function wipeSync(namespaces: readonly string[]): void {
  for (const ns of namespaces) {
    for (let i = 0; i < 20; i++) {
      const r = spawnSync("ip", ["netns", "pids", ns], { encoding: "utf8" });
      const pids = (r.stdout ?? "").split(/\s+/).filter(Boolean);
      if (!pids.length) break;
      for (const p of pids) {
        try {
          process.kill(Number(p), "SIGKILL");
        } catch {}
      }
      spawnSync("sleep", ["0.02"]);
    }
    spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  }
}

/**
 * Remove the fake nets of test processes that died without destroy() (SIGKILL, or a signal Node does not turn into
 * an `exit` event). createFakeNet() calls it; returns the namespaces it deleted.
 */
export function sweepStaleFakeNets(): string[] {
  const swept: string[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync(tmpdir()).filter((e) => e.startsWith(DIR_PREFIX));
  } catch {
    return swept;
  }
  for (const e of entries) {
    const dir = join(tmpdir(), e);
    let owner: { pid: number; ns: string[] };
    try {
      owner = JSON.parse(readFileSync(join(dir, "owner.json"), "utf8"));
    } catch {
      continue; // being created right now, or not ours
    }
    try {
      process.kill(owner.pid, 0);
      continue; // owner alive
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ESRCH") continue;
    }
    const ns = owner.ns.filter((n) => /^smvt-[hi]-[0-9a-f]+$/.test(n));
    wipeSync(ns.filter((n) => existsSync(`/run/netns/${n}`)));
    swept.push(...ns);
    for (const n of ns) rmSync(`/etc/netns/${n}`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
  return swept;
}

/** Fake nets not destroyed yet, cleaned up synchronously if the process exits first. */
const live = new Set<FakeNetImpl>();
function destroyAllSync(): void {
  for (const n of live) n.destroySync();
  live.clear();
}

class FakeNetImpl implements FakeNet {
  readonly peers = FAKENET.peers;
  readonly metadata = FAKENET.metadata;
  readonly hostAddr = FAKENET.hostAddr;
  readonly gateway = FAKENET.gateway;
  readonly dns = FAKENET.dns;
  readonly lanAddr = FAKENET.lanAddr;
  iperf: { host: string; port: number } | null = null;
  readonly dir: string;
  readonly netnsEtc: string;
  readonly records = new Map<string, string[]>();
  readonly children = new Set<ChildProcess>();
  dnsmasqPid = 0;
  createdNs: string[] = [];
  createdNetnsRoot = false;
  private destroying: Promise<void> | undefined;
  private readonly agents = new Map<"host" | "inet", Promise<Agent>>();

  constructor(
    readonly hostNs: string,
    readonly inetNs: string,
  ) {
    this.dir = mkdtempSync(join(tmpdir(), DIR_PREFIX));
    this.netnsEtc = `/etc/netns/${hostNs}`;
    // Lets sweepStaleFakeNets() clean up after a test process that was killed before it could.
    writeFileSync(join(this.dir, "owner.json"), JSON.stringify({ pid: process.pid, ns: [hostNs, inetNs] }));
    if (live.size === 0) process.on("exit", destroyAllSync);
    live.add(this);
  }

  exec(cmd: string, args: readonly string[] = [], opts?: ExecOptions): Promise<ExecResult> {
    return run("ip", ["netns", "exec", this.hostNs, cmd, ...args], opts);
  }

  inetExec(cmd: string, args: readonly string[] = [], opts?: ExecOptions): Promise<ExecResult> {
    return run("ip", ["netns", "exec", this.inetNs, cmd, ...args], opts);
  }

  spawn(cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    return this.track(nodeSpawn("ip", ["netns", "exec", this.hostNs, cmd, ...args], opts));
  }

  inetSpawn(cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    return this.track(nodeSpawn("ip", ["netns", "exec", this.inetNs, cmd, ...args], opts));
  }

  private track(child: ChildProcess): ChildProcess {
    this.children.add(child);
    child.once("exit", () => this.children.delete(child));
    return child;
  }

  /**
   * A long-running server: resolves once `ready(output)` is true (checked on every stdout chunk, or by polling when
   * `poll` is given); rejects with its output if it dies first. Afterwards it no longer keeps the event loop alive.
   */
  async daemon(
    ns: string,
    what: string,
    cmd: string,
    args: readonly string[],
    ready: { line?: string; poll?: () => Promise<boolean> },
    timeoutMs: number,
    stdin: "ignore" | "pipe" = "ignore",
  ): Promise<ChildProcess> {
    const child = this.track(nodeSpawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: [stdin, "pipe", "pipe"] }));
    let out = "";
    const keep = (d: Buffer | string) => {
      out = (out + d.toString("utf8")).slice(-8192);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    await new Promise<void>((resolve, reject) => {
      let done = false;
      const finish = (err?: Error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        child.off("exit", onExit);
        child.stdout?.off("data", onData);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(() => finish(new Error(`${what} not ready in ${timeoutMs} ms: ${out}`)), timeoutMs);
      const onExit = (code: number | null, sig: string | null) =>
        finish(new Error(`${what} exited (${code ?? sig}) before it was ready: ${out}`));
      const onData = () => {
        if (ready.line && out.split("\n").includes(ready.line)) finish();
      };
      child.on("exit", onExit);
      child.on("error", (e) => finish(e));
      child.stdout?.on("data", onData);
      if (ready.poll) {
        const poll = ready.poll;
        void (async () => {
          while (!done) {
            if (await poll().catch(() => false)) return finish();
            await sleep(20);
          }
        })();
      }
    });
    child.unref();
    (child.stdout as Readable & { unref?: () => void }).unref?.();
    (child.stderr as Readable & { unref?: () => void }).unref?.();
    return child;
  }

  writeHosts(): void {
    const lines: string[] = [];
    for (const [name, ips] of this.records) for (const ip of ips) lines.push(`${ip} ${name}`);
    const tmp = join(this.dir, "hosts.tmp");
    writeFileSync(tmp, `${lines.join("\n")}\n`);
    renameSync(tmp, join(this.dir, "hosts"));
  }

  async setRecord(name: string, ip: string | readonly string[] | null): Promise<void> {
    if (this.destroying) throw new Error("fakenet already destroyed");
    const ips = ip === null ? [] : typeof ip === "string" ? [ip] : [...ip];
    if (ips.length) this.records.set(name, ips);
    else this.records.delete(name);
    this.writeHosts();
    if (!this.dnsmasqPid) throw new Error("dnsmasq is not running"); // never kill(0, ...): that is our process group
    // SIGHUP: dnsmasq clears its cache and re-reads every --addn-hosts file (by path, so the rename is seen).
    process.kill(this.dnsmasqPid, "SIGHUP");
    try {
      await (await this.agent("host")).request("dnsWait", { server: this.dns, name, want: ips, timeoutMs: 3000 });
    } catch (e) {
      throw new Error(`setRecord(${name}) did not take effect: ${(e as Error).message}`);
    }
  }

  /** The helper process in `which` namespace, started on first use. */
  agent(which: "host" | "inet"): Promise<Agent> {
    if (this.destroying) return Promise.reject(new Error("fakenet already destroyed"));
    let a = this.agents.get(which);
    if (!a) {
      const ns = which === "host" ? this.hostNs : this.inetNs;
      a = this.daemon(ns, `${which} helper`, process.execPath, ["-e", AGENT], { line: "ready" }, 10_000, "pipe").then(
        (c) => new Agent(c),
      );
      a.catch(() => this.agents.delete(which));
      this.agents.set(which, a);
    }
    return a;
  }

  async fetch(url: string, opts: { timeoutMs?: number; ns?: "host" | "inet" } = {}): Promise<FetchResult> {
    return (await this.agent(opts.ns ?? "host")).request<FetchResult>("fetch", {
      url,
      timeoutMs: opts.timeoutMs ?? 5000,
    });
  }

  async lookup(name: string): Promise<string[]> {
    return (await this.agent("host")).request<string[]>("lookup", { name });
  }

  async snapshot(): Promise<NetSnapshot> {
    const ns = this.hostNs;
    const [ruleset, links, addresses, r4, r6] = await Promise.all([
      must("ip", ["netns", "exec", ns, "nft", "list", "ruleset"]),
      must("ip", ["-n", ns, "-o", "link", "show"]),
      must("ip", ["-n", ns, "-o", "addr", "show"]),
      must("ip", ["-n", ns, "-4", "route", "show", "table", "all"]),
      must("ip", ["-n", ns, "-6", "route", "show", "table", "all"]),
    ]);
    return {
      ruleset: normRuleset(ruleset),
      links: normLinks(links),
      addresses: normAddrs(addresses),
      routes: normRoutes(`${r4}\n${r6}`),
    };
  }

  async addForeign(): Promise<void> {
    await must("ip", ["netns", "exec", this.hostNs, "nft", "-f", "-"], {
      input: "table inet foreign {\n  chain c {\n    type filter hook forward priority 0; policy accept;\n  }\n}\n",
    });
    await must("ip", ["-n", this.hostNs, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
  }

  async pids(): Promise<number[]> {
    const out: number[] = [];
    for (const ns of this.createdNs) {
      const r = await run("ip", ["netns", "pids", ns]);
      if (r.code === 0) out.push(...r.stdout.split(/\s+/).filter(Boolean).map(Number));
    }
    return out;
  }

  destroy(): Promise<void> {
    this.destroying ??= this.doDestroy();
    return this.destroying;
  }

  private async doDestroy(): Promise<void> {
    live.delete(this);
    if (live.size === 0) process.off("exit", destroyAllSync);
    const kids = [...this.children];
    for (const c of kids) if (!exited(c)) c.kill("SIGKILL");
    // Whatever else is inside (grandchildren, processes that entered by setns): kill until none is left.
    for (let i = 0; i < 50; i++) {
      const pids = await this.pids();
      if (!pids.length) break;
      for (const p of pids) {
        try {
          process.kill(p, "SIGKILL");
        } catch {}
      }
      await sleep(20);
    }
    await Promise.all(kids.map((c) => waitExit(c, 2000)));
    const errors: string[] = [];
    for (const ns of this.createdNs) {
      const r = await run("ip", ["netns", "del", ns]);
      if (r.code !== 0 && !/No such file/.test(r.stderr)) errors.push(`ip netns del ${ns}: ${r.stderr.trim()}`);
    }
    this.createdNs = [];
    this.removeFiles();
    if (errors.length) throw new Error(errors.join("\n"));
  }

  private removeFiles(): void {
    rmSync(this.netnsEtc, { recursive: true, force: true });
    if (this.createdNetnsRoot) {
      try {
        rmdirSync("/etc/netns"); // only if empty: another fake net may be using it
      } catch {}
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Last resort when the test process exits without destroy(): synchronous, best effort. */
  destroySync(): void {
    for (const c of this.children) {
      try {
        if (c.pid && !exited(c)) process.kill(c.pid, "SIGKILL");
      } catch {}
    }
    wipeSync(this.createdNs);
    this.createdNs = [];
    this.removeFiles();
  }
}

/** Create the fake host and internet (see the top of this file). Call `destroy()` when done, e.g. in `after`. */
export async function createFakeNet(opts: FakeNetOptions = {}): Promise<FakeNet> {
  const timeoutMs = opts.readyTimeoutMs ?? 8000;
  const bigBytes = opts.bigBytes ?? 64 * 1024 * 1024;
  sweepStaleFakeNets();

  // Unique names; `ip netns add` refuses an existing name, so a clash just means another try.
  let net: FakeNetImpl | undefined;
  for (let i = 0; !net; i++) {
    const suffix = randomBytes(3).toString("hex");
    const h = `smvt-h-${suffix}`;
    const n = `smvt-i-${suffix}`;
    const hr = await run("ip", ["netns", "add", h]);
    if (hr.code !== 0) {
      if (i < 5) continue;
      throw new Error(`ip netns add ${h}: ${hr.stderr.trim()}`);
    }
    net = new FakeNetImpl(h, n);
    net.createdNs.push(h);
    try {
      await must("ip", ["netns", "add", n]);
      net.createdNs.push(n);
    } catch (e) {
      await net.destroy();
      throw e;
    }
  }

  try {
    const { hostNs, inetNs } = net;
    const F = FAKENET;
    // No IPv6 duplicate address detection: otherwise each link-local address gets its `local fe80::...` route a second
    // or so after the link comes up, and two snapshots taken right after creation differ.
    const noDad = ["all", "default"].map((c) => `echo 0 > /proc/sys/net/ipv6/conf/${c}/accept_dad`);
    await Promise.all(
      [hostNs, inetNs].map((ns) =>
        must("ip", ["netns", "exec", ns, "sh", "-c", `${noDad.join("; ")} 2>/dev/null || true`]),
      ),
    );
    // Both veth ends are born inside their namespaces: nothing ever appears in the root namespace.
    await must("ip", [
      "link",
      "add",
      F.hostIf,
      "netns",
      hostNs,
      "type",
      "veth",
      "peer",
      "name",
      F.inetIf,
      "netns",
      inetNs,
    ]);
    // No `dummy` driver on every kernel (not on this one): the LAN is a port-less bridge, the peers /32s on lo.
    const hostBatch = [
      "link set lo up",
      `addr add ${F.hostAddr}/${F.prefixLen} dev ${F.hostIf}`,
      `link set ${F.hostIf} up`,
      `link add ${F.lanIf} type bridge`,
      `addr add ${F.lanAddr}/24 dev ${F.lanIf}`,
      `link set ${F.lanIf} up`,
      `route add default via ${F.gateway} dev ${F.hostIf}`,
    ];
    const inetBatch = [
      "link set lo up",
      `addr add ${F.gateway}/${F.prefixLen} dev ${F.inetIf}`,
      `link set ${F.inetIf} up`,
      ...[...F.peers, F.metadata].map((a) => `addr add ${a}/32 dev lo`),
    ];
    await Promise.all([
      must("ip", ["-n", hostNs, "-batch", "-"], { input: `${hostBatch.join("\n")}\n` }),
      must("ip", ["-n", inetNs, "-batch", "-"], { input: `${inetBatch.join("\n")}\n` }),
    ]);

    // resolv.conf for `ip netns exec <hostNs>` (bind-mounted over /etc/resolv.conf in the command's mount ns).
    for (let i = 0; ; i++) {
      try {
        try {
          mkdirSync("/etc/netns", { mode: 0o755 });
          net.createdNetnsRoot = true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        }
        mkdirSync(net.netnsEtc, { recursive: true });
        writeFileSync(join(net.netnsEtc, "resolv.conf"), `nameserver ${F.dns}\n`);
        break;
      } catch (e) {
        if (i >= 3 || (e as NodeJS.ErrnoException).code !== "ENOENT") throw e; // raced with a rmdir of /etc/netns
      }
    }

    for (const [name, ip] of Object.entries(F.records)) net.records.set(name, [ip]);
    net.writeHosts();
    const pidFile = join(net.dir, "dnsmasq.pid");
    const inetServers = [...F.peers, F.metadata].map((a) => ({ host: a, port: F.peerPort, body: `peer ${a}\n` }));
    const hostServers = [
      { host: "127.0.0.1", port: F.loopbackPort, body: "host-loopback\n" },
      { host: F.hostAddr, port: F.vethPort, body: "host-veth\n" },
      { host: F.lanAddr, port: F.lanPort, body: "host-lan\n" },
    ];
    const wantIperf = (opts.iperf ?? true) && which("iperf3");
    const started: Promise<unknown>[] = [
      net.daemon(
        inetNs,
        "peer http servers",
        process.execPath,
        ["-e", HTTP_SERVER, JSON.stringify({ servers: inetServers, bigBytes })],
        { line: "ready" },
        timeoutMs,
      ),
      net.daemon(
        hostNs,
        "host http servers",
        process.execPath,
        ["-e", HTTP_SERVER, JSON.stringify({ servers: hostServers, bigBytes })],
        { line: "ready" },
        timeoutMs,
      ),
      net
        .daemon(
          inetNs,
          "dnsmasq",
          "dnsmasq",
          [
            "--keep-in-foreground", // not --no-daemon: that is debug mode (no pid file, no user change, ...)
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            `--listen-address=${F.dns}`,
            "--user=root", // the hosts file lives in a 0700 dir; `nobody` could not re-read it on SIGHUP
            "--group=root",
            `--pid-file=${pidFile}`,
            `--addn-hosts=${join(net.dir, "hosts")}`,
            "--local=/test/", // *.test is ours: unknown names get NXDOMAIN, not REFUSED
            "--local-ttl=1",
            "--log-facility=-",
          ],
          { poll: () => isListening(inetNs, 53) },
          timeoutMs,
        )
        .then((c) => {
          net.dnsmasqPid = c.pid ?? 0; // `ip netns exec` execs the command: the child's pid is dnsmasq's
        }),
    ];
    if (wantIperf) {
      const host = F.peers[0]!;
      started.push(
        net
          .daemon(
            inetNs,
            "iperf3",
            "iperf3",
            ["-s", "-B", host, "-p", String(F.iperfPort)],
            { poll: () => isListening(inetNs, F.iperfPort) },
            timeoutMs,
          )
          .then(() => {
            net.iperf = { host, port: F.iperfPort };
          }),
      );
    }
    const hostAgent = net.agent("host");
    started.push(hostAgent);
    await Promise.all(started);

    // Everything answers from the host ns, through the same paths tests will use.
    const probe = {
      timeoutMs,
      urls: [
        ...inetServers.map((s) => ({ url: `http://${s.host}:${s.port}/`, body: s.body })),
        ...hostServers.map((s) => ({ url: `http://${s.host}:${s.port}/`, body: s.body })),
      ],
      names: Object.entries(F.records).map(([name, ip]) => ({ name, ip })),
    };
    try {
      await (await hostAgent).request("probe", probe);
    } catch (e) {
      throw new Error(`fake net not ready: ${(e as Error).message}`);
    }
    return net;
  } catch (e) {
    await net.destroy().catch(() => {});
    throw e;
  }
}

async function isListening(ns: string, port: number): Promise<boolean> {
  const r = await run("ip", ["netns", "exec", ns, "ss", "-Hltun", `sport = :${port}`]);
  return r.code === 0 && r.stdout.trim() !== "";
}

/** GET `url` from inside the host ns (or the internet ns). Rejects with `ECONNREFUSED: ...`, `ETIMEDOUT: ...` etc. */
export function fetchIn(
  net: FakeNet,
  url: string,
  opts: { timeoutMs?: number; ns?: "host" | "inet" } = {},
): Promise<FetchResult> {
  return net.fetch(url, opts);
}

/** `dns.lookup(name, {all: true})` inside the host ns (getaddrinfo, so it goes through its resolv.conf). */
export function lookupIn(net: FakeNet, name: string): Promise<string[]> {
  return net.lookup(name);
}
