/**
 * What networking costs, per mode (none, user, tap), interleaved in one run: warm create to first command, the
 * host-side network setup (TAP, rules, resolver or passt) and delete, TCP connect + HTTP GET latency guest to a peer,
 * and download throughput guest from a peer. Everything runs inside a fake host namespace whose internet is a veth
 * peer in another namespace (test/support/fakenet.ts): no packet leaves the test namespaces.
 *   node dist/bench/network.js [--runs 10] [--no-write]
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { packageRoot } from "../src/paths.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const RUNS = Number(arg("runs") ?? 10);
const MODES = ["none", "user", "tap"] as const;
const PEER = "198.51.100.10";
const BIG = 32 << 20;
const SETTLE_MS = 500;

/**
 * A GET with busybox nc whose request side stays open until the server closes (passt 2023.03 loses the server's
 * FIN when the guest half-closes first): a fifo fed by a sleeper that is killed afterwards.
 */
const get = (path: string) =>
  `{ f=/tmp/g.$$; rm -f $f; mkfifo $f; (printf 'GET ${path} HTTP/1.0\\r\\n\\r\\n'; sleep 60) > $f & w=$!; nc -w 10 ${PEER} 80 < $f; kill $w; rm -f $f; }`;

type Samples = Record<string, Record<string, number[]>>;

/** Runs inside the fake host namespace, driving the SDK; prints the samples as JSON. */
async function inner(): Promise<void> {
  const { SmolVM } = await import("../src/index.js");
  const samples: Samples = {};
  const put = (mode: string, what: string, v: number) => {
    samples[mode] ??= {};
    const m = samples[mode] as Record<string, number[]>;
    m[what] ??= [];
    m[what].push(v);
  };
  // build each mode's warm template first (not measured)
  for (const mode of MODES) await (await SmolVM.create({ network: mode })).delete();
  for (let i = 0; i < RUNS; i++) {
    for (const mode of MODES) {
      let t = performance.now();
      const vm = await SmolVM.create({ network: mode });
      await vm.run(["true"]);
      put(mode, "warm create to first command (ms)", performance.now() - t);
      put(mode, "network setup on the host (ms)", vm.startTimings?.networkMs ?? 0);
      if (process.env.BENCH_DETAIL)
        for (const [k, v] of Object.entries(vm.startTimings ?? {})) if (typeof v === "number") put(mode, k, v);
      if (mode !== "none") {
        // 10 connections, each a busybox nc process doing one HTTP GET (the same process cost in every mode)
        const script = `for i in 1 2 3 4 5 6 7 8 9 10; do ${get("/")} >/dev/null; done`;
        t = performance.now();
        const r = await vm.run(["sh", "-c", script]);
        if (r.exitCode !== 0) throw new Error(`GET loop failed in ${mode}: ${r.stderr}`);
        put(mode, "TCP connect + HTTP GET from the guest, per request (ms)", (performance.now() - t) / 10);
        t = performance.now();
        const d = await vm.run(["sh", "-c", `${get(`/big?bytes=${BIG}`)} | wc -c`]);
        const bytes = Number(d.stdout.trim());
        if (bytes < BIG) throw new Error(`download in ${mode} got ${bytes} bytes: ${d.stderr}`);
        put(mode, "download peer to guest (MB/s)", bytes / 1e6 / ((performance.now() - t) / 1000));
      }
      t = performance.now();
      await vm.delete();
      put(mode, "delete (ms)", performance.now() - t);
      // what a delete leaves to the kernel and to exiting helpers (a TAP's unregistering, passt's exit) settles
      // before the next create is timed, so one mode's teardown is not billed to the next mode's start
      await new Promise((r) => setTimeout(r, SETTLE_MS));
    }
  }
  process.stdout.write(`${JSON.stringify(samples)}\n`);
}

async function outer(): Promise<void> {
  const { createFakeNet } = await import(join(packageRoot(), "dist/test/support/fakenet.js"));
  const net = await createFakeNet({ bigBytes: BIG, iperf: false });
  const state = mkdtempSync(join(tmpdir(), "smolvm-bench-net-"));
  let samples: Samples;
  try {
    const r = spawnSync(
      "ip",
      [
        "netns",
        "exec",
        net.hostNs,
        process.execPath,
        fileURLToPath(import.meta.url),
        "--inner",
        "--runs",
        String(RUNS),
      ],
      {
        encoding: "utf8",
        env: { ...process.env, SMOLVM_STATE_DIR: state },
        maxBuffer: 64 << 20,
        stdio: ["ignore", "pipe", "inherit"],
      },
    );
    if (r.status !== 0) throw new Error(`inner run failed (exit ${r.status})`);
    samples = JSON.parse(r.stdout.trim().split("\n").pop() as string) as Samples;
  } finally {
    await net.destroy();
    rmSync(state, { recursive: true, force: true });
  }
  const rows: string[] = [];
  const whats = [...new Set(Object.values(samples).flatMap((m) => Object.keys(m)))];
  const out: Record<string, Record<string, Stats>> = {};
  for (const what of whats) {
    const cells = MODES.map((m) => {
      const s = samples[m]?.[what];
      if (!s?.length) return "n/a";
      const st = stats(s);
      out[m] ??= {};
      (out[m] as Record<string, Stats>)[what] = st;
      const f = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
      return `${f(st.p50)} / ${f(st.p95)}`;
    });
    rows.push(`| ${what} | ${cells.join(" | ")} |`);
  }
  const warm = (m: string) => out[m]?.["warm create to first command (ms)"]?.p50 ?? Number.NaN;
  // the same rounds paired: each networked create against the `none` create of its own round (steadier than a
  // difference of p50s when the machine's speed drifts during the run)
  const paired = (m: string) => {
    const a = samples[m]?.["warm create to first command (ms)"] ?? [];
    const b = samples.none?.["warm create to first command (ms)"] ?? [];
    const d = a.map((x, i) => x - (b[i] ?? Number.NaN)).filter((x) => !Number.isNaN(x));
    return d.length ? stats(d).p50 : Number.NaN;
  };
  const body = [
    `## Networking: cost per mode (${new Date().toISOString().slice(0, 10)})`,
    "",
    `\`node dist/bench/network.js --runs ${RUNS}\` on ${machine()}. Interleaved rounds (none, user, tap), each a fresh`,
    "VM from the warm template, inside a fake host network namespace whose internet is a veth peer in another",
    `namespace, ${SETTLE_MS} ms after the previous VM's delete. Cells are p50 / p95. Guest-side tools are busybox's (\`nc\`), so per-request figures include one`,
    "process start in the guest under TCG, the same in every mode.",
    "",
    "| what | none | user (passt) | tap |",
    "| --- | ---: | ---: | ---: |",
    ...rows,
    "",
    `Warm create with networking vs none, same run: user ${(warm("user") - warm("none")).toFixed(0)} ms, tap ${(warm("tap") - warm("none")).toFixed(0)} ms (difference of p50s); p50 of the per-round differences: user ${paired("user").toFixed(0)} ms, tap ${paired("tap").toFixed(0)} ms.`,
  ].join("\n");
  process.stdout.write(`${JSON.stringify({ runs: RUNS, machine: machine(), stats: out }, null, 2)}\n`);
  if (!process.argv.includes("--no-write")) writeSection(join(packageRoot(), "docs/BENCHMARKS.md"), "network", body);
}

if (process.argv.includes("--inner")) await inner();
else await outer();
