/**
 * Density benchmark: N idle sandboxes (256 MiB, 1 vCPU, warm start) at once, for N = 10, 50, 100. For each N, once
 * all have settled: host CPU used while they idle (from /proc/stat, and from the VMs' own processes: QEMU, the agent
 * proxy, the VMM's supervisor), PSS in total and per VM (and the split of one QEMU's memory), and p50/p95 of
 * `run("true")` on a random VM while the rest idle. Each N is measured twice in the same run: with the idle tuning
 * (the default) and without it (SMOLVM_IDLE_TUNING=0: the machine and kernel arguments from before), so the report
 * compares the two on the same machine under the same load. Everything started is deleted at the end, also on failure
 * and on SIGINT/SIGTERM.
 *   node dist/bench/density.js [--n 10,50,100] [--baseline-n 10,50] [--quick] [--modes baseline,tuned] [--settle 20]
 *                             [--window 30] [--runs 200] [--runs-max-s 90] [--batch 4] [--no-write]
 * Prints JSON; writes its section of docs/BENCHMARKS.md unless --no-write.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { SmolVM } from "../src/index.js";
import { packageRoot } from "../src/paths.js";
import { StateStore } from "../src/state/store.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const QUICK = argv.includes("--quick");
const NS = (opt("n") ?? (QUICK ? "10" : "10,50,100")).split(",").map(Number);
const MODES = (opt("modes") ?? "baseline,tuned").split(",") as ("tuned" | "baseline")[];
/** The Ns measured without the tuning (default: all): the baseline saturates 2 cores near 50 idle VMs. */
const BASELINE_NS = (opt("baseline-n") ?? NS.join(",")).split(",").map(Number);
const SETTLE_S = Number(opt("settle") ?? (QUICK ? 10 : 20));
const WINDOW_S = Number(opt("window") ?? (QUICK ? 15 : 30));
const RUNS = Number(opt("runs") ?? (QUICK ? 50 : 200));
/** The `run("true")` samples stop after this long (a saturated host makes each take seconds). */
const RUNS_MAX_S = Number(opt("runs-max-s") ?? 90);
const BATCH = Number(opt("batch") ?? 4);
const MEM_MIB = 256;
const CLK_TCK = 100; // USER_HZ on Linux
const MIB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (s: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);

interface Vm {
  vm: SmolVM;
  qemu: number;
  proxy: number | null;
  /** The VMM's supervisor (the agent binary's `launch` mode), QEMU's parent. */
  launch: number | null;
}

const live: Vm[] = [];
/** Every QEMU started, for the check that none is left. */
const started: number[] = [];

const alive = (pid: number): boolean => {
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
};
let cleaning: Promise<void> | null = null;

/** Delete every VM this run started (in batches; errors are reported, not thrown). */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    while (live.length) {
      const batch = live.splice(0, 8);
      await Promise.all(batch.map((v) => v.vm.delete().catch((e) => log(`delete ${v.vm.vmId}: ${e}`))));
    }
  })();
  return cleaning;
}
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    log(`${sig}: deleting ${live.length} VMs`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** utime+stime of a process (all its threads), in clock ticks; 0 once it is gone. */
function cpuTicks(pid: number | null): number {
  if (!pid) return 0;
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

const parentOf = (pid: number): number | null => {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(s.slice(s.lastIndexOf(")") + 2).split(" ")[1]) || null;
  } catch {
    return null;
  }
};

/** Busy and total jiffies of the whole host (all cores), from /proc/stat. */
function hostTicks(): { busy: number; total: number } {
  const f = (readFileSync("/proc/stat", "utf8").split("\n")[0] as string).trim().split(/\s+/).slice(1).map(Number);
  const total = f.reduce((a, b) => a + b, 0);
  const idle = (f[3] ?? 0) + (f[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

const pssKiB = (pid: number | null): number => {
  if (!pid) return 0;
  try {
    return Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
};

/** Where one QEMU's PSS goes (MiB): guest RAM, TCG's code buffer, malloc heap and other anonymous memory, files. */
function pssSplit(pid: number, ramMib: number): Record<string, number> {
  const out: Record<string, number> = { guestRam: 0, tcgCode: 0, heap: 0, anonOther: 0, files: 0 };
  let kind = "files";
  for (const line of readFileSync(`/proc/${pid}/smaps`, "utf8").split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (m) {
      const size = (Number.parseInt(m[2] as string, 16) - Number.parseInt(m[1] as string, 16)) / MIB;
      const name = m[4] ?? "";
      if (name === "" && m[3]?.includes("x"))
        kind = "tcgCode"; // the only executable anonymous mapping
      else if (name.endsWith("/ram.raw") || name.endsWith("/mem.bin") || (name === "" && Math.abs(size - ramMib) < 1))
        kind = "guestRam";
      else if (name === "[heap]") kind = "heap";
      else if (name === "" || name.startsWith("[")) kind = "anonOther";
      else kind = "files";
      continue;
    }
    const p = /^Pss:\s+(\d+) kB/.exec(line);
    if (p) out[kind] = (out[kind] ?? 0) + Number(p[1]) / 1024;
  }
  return out;
}

async function start(n: number): Promise<void> {
  while (live.length < n) {
    const k = Math.min(BATCH, n - live.length);
    const made = await Promise.allSettled(
      Array.from({ length: k }, () => SmolVM.create({ memSizeMib: MEM_MIB, vcpuCount: 1 })),
    );
    let failed: unknown = null;
    for (const r of made) {
      if (r.status === "rejected") {
        failed = r.reason;
        continue;
      }
      const h = StateStore.open().get(r.value.vmId)?.handle;
      live.push({ vm: r.value, qemu: h?.pid ?? 0, proxy: h?.proxyPid ?? null, launch: h ? parentOf(h.pid) : null });
      if (h) started.push(h.pid);
    }
    if (failed) throw failed;
    if (live.length % 10 === 0 || live.length === n) log(`${live.length}/${n} running`);
  }
}

interface Measure {
  mode: string;
  n: number;
  startS: number;
  /** % of one core, over the window. */
  hostCpuPct: number;
  hostCpuIdleBeforePct: number;
  vmCpuPct: { total: number; perVm: number; qemu: number; proxy: number; launch: number };
  pssMib: { total: number; perVm: number; qemu: number; proxy: number; launch: number };
  /** One QEMU's PSS by kind (MiB), averaged over a few VMs. */
  qemuSplitMib: Record<string, number>;
  /** On random VMs that have run a command before. */
  runTrueMs: Stats;
  /** The first command on each VM (as many as ran within --runs-max-s). */
  firstRunMs: Stats;
  liveQemu: number;
}

async function measure(mode: string, n: number, startS: number, quietPct: number): Promise<Measure> {
  log(`${mode} N=${n}: settling ${SETTLE_S} s`);
  await sleep(SETTLE_S * 1000);
  const procs = (v: Vm) => [v.qemu, v.proxy, v.launch] as const;
  const before = live.map((v) => procs(v).map(cpuTicks));
  const h0 = hostTicks();
  const t0 = performance.now();
  await sleep(WINDOW_S * 1000);
  const el = (performance.now() - t0) / 1000;
  const h1 = hostTicks();
  const after = live.map((v) => procs(v).map(cpuTicks));
  const pct = (ticks: number) => Math.round((ticks / CLK_TCK / el) * 100 * 1000) / 1000;
  const sum = (i: number) => after.reduce((a, t, j) => a + ((t[i] ?? 0) - (before[j]?.[i] ?? 0)), 0);
  const [q, p, l] = [sum(0), sum(1), sum(2)];
  const hostCpuPct = Math.round(((h1.busy - h0.busy) / CLK_TCK / el) * 100 * 10) / 10;
  log(`${mode} N=${n}: VMs ${pct(q + p + l)}% of a core (${pct((q + p + l) / n)}% each), host ${hostCpuPct}%`);

  const pss = live.map((v) => procs(v).map(pssKiB));
  const kib = (i: number) => pss.reduce((a, x) => a + (x[i] ?? 0), 0) / 1024;
  const sample = live.slice(0, Math.min(5, live.length));
  const splits = sample.map((v) => pssSplit(v.qemu, MEM_MIB));
  const qemuSplitMib = Object.fromEntries(
    Object.keys(splits[0] ?? {}).map((k) => [k, r1(splits.reduce((a, s) => a + (s[k] ?? 0), 0) / splits.length)]),
  );

  // The first command on a VM restored from a template is slow under TCG (its translated code is not in the saved
  // state: ~180 ms of translation); measured apart, once per VM, then the steady state on VMs that have run one.
  const first: number[] = [];
  const primed: Vm[] = [];
  let until = performance.now() + RUNS_MAX_S * 1000;
  for (const v of live) {
    if (performance.now() > until) break;
    const t = performance.now();
    await v.vm.run("true");
    first.push(performance.now() - t);
    primed.push(v);
  }
  const times: number[] = [];
  until = performance.now() + RUNS_MAX_S * 1000;
  for (let i = 0; i < RUNS && performance.now() < until; i++) {
    const v = primed[Math.floor(Math.random() * primed.length)] as Vm;
    const t = performance.now();
    await v.vm.run("true");
    times.push(performance.now() - t);
  }
  const liveQemu = live.filter((v) => alive(v.qemu)).length;
  const total = kib(0) + kib(1) + kib(2);
  return {
    mode,
    n,
    startS: r1(startS),
    hostCpuPct,
    hostCpuIdleBeforePct: quietPct,
    vmCpuPct: { total: pct(q + p + l), perVm: pct((q + p + l) / n), qemu: pct(q), proxy: pct(p), launch: pct(l) },
    pssMib: { total: r1(total), perVm: r1(total / n), qemu: r1(kib(0)), proxy: r1(kib(1)), launch: r1(kib(2)) },
    qemuSplitMib,
    runTrueMs: stats(times),
    firstRunMs: stats(first),
    liveQemu,
  };
}

const r1 = (x: number) => Math.round(x * 10) / 10;

/** Host CPU (% of one core) with none of our VMs running: what the rest of the machine does meanwhile. */
async function quiet(): Promise<number> {
  const a = hostTicks();
  const t = performance.now();
  await sleep(5000);
  const b = hostTicks();
  return r1(((b.busy - a.busy) / CLK_TCK / ((performance.now() - t) / 1000)) * 100);
}

function memAvailableMib(): number {
  return Number(/^MemAvailable:\s+(\d+)/m.exec(readFileSync("/proc/meminfo", "utf8"))?.[1] ?? 0) / 1024;
}

const results: Measure[] = [];
let accel = "?";
try {
  for (const mode of MODES) {
    if (mode === "baseline") process.env.SMOLVM_IDLE_TUNING = "0";
    else delete process.env.SMOLVM_IDLE_TUNING;
    // the warm template of this mode is built (once) outside the measurement
    await (await SmolVM.create({ memSizeMib: MEM_MIB, vcpuCount: 1 })).delete();
    const quietPct = await quiet();
    const t0 = performance.now();
    for (const n of [...(mode === "baseline" ? BASELINE_NS : NS)].sort((a, b) => a - b)) {
      const need = (n - live.length) * 80 + 1024;
      if (memAvailableMib() < need) {
        log(`${mode} N=${n}: skipped, ${Math.round(memAvailableMib())} MiB available, ${need} needed`);
        continue;
      }
      await start(n);
      accel = live[0]?.vm.info().accel ?? accel;
      results.push(await measure(mode, n, (performance.now() - t0) / 1000, quietPct));
    }
    await cleanup();
    cleaning = null;
  }
} finally {
  await cleanup();
  delete process.env.SMOLVM_IDLE_TUNING;
}
/** QEMUs this run started that still live (a zombie, which PID 1 may not reap here, does not count). */
const leftovers = started.filter(alive).length;

const result = {
  benchmark: "density",
  date: new Date().toISOString(),
  machine: machine(),
  accel,
  params: {
    ns: NS,
    baselineNs: BASELINE_NS,
    runsMaxS: RUNS_MAX_S,
    memSizeMib: MEM_MIB,
    vcpuCount: 1,
    settleS: SETTLE_S,
    windowS: WINDOW_S,
    runs: RUNS,
    batch: BATCH,
  },
  results,
  leftovers,
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);

if (!argv.includes("--no-write") && results.length) {
  const get = (mode: string, n: number) => results.find((r) => r.mode === mode && r.n === n);
  const ratio = (a: number | undefined, b: number | undefined) =>
    a !== undefined && b !== undefined && b > 0 ? `${(a / b).toFixed(2)}x` : "";
  const rows = [...new Set(results.map((r) => r.n))]
    .sort((a, b) => a - b)
    .flatMap((n) => {
      const b = get("baseline", n);
      const t = get("tuned", n);
      const cell = (r: Measure | undefined, f: (r: Measure) => number, d = 2) => (r ? f(r).toFixed(d) : "–");
      const line = (label: string, f: (r: Measure) => number, d = 2) =>
        `| ${n} | ${label} | ${cell(b, f, d)} | ${cell(t, f, d)} | ${ratio(t && f(t), b && f(b))} |`;
      return [
        line("VMs' CPU, total (% of one core)", (r) => r.vmCpuPct.total),
        line("VMs' CPU per VM (% of one core)", (r) => r.vmCpuPct.perVm, 3),
        line("host CPU from /proc/stat (% of one core, all load)", (r) => r.hostCpuPct, 1),
        line("PSS total (MiB)", (r) => r.pssMib.total, 0),
        line("PSS per VM (MiB)", (r) => r.pssMib.perVm, 1),
        line('`run("true")` p50 (ms)', (r) => r.runTrueMs.p50, 1),
        line('`run("true")` p95 (ms)', (r) => r.runTrueMs.p95, 1),
        line('`run("true")` samples', (r) => r.runTrueMs.n, 0),
        line("first command on a VM after its start: p50 (ms)", (r) => r.firstRunMs.p50, 1),
        line("first command on a VM after its start: p95 (ms)", (r) => r.firstRunMs.p95, 1),
      ];
    });
  const splitOf = (r: Measure | undefined) =>
    r
      ? Object.entries(r.qemuSplitMib)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ")
      : "–";
  const largest = Math.max(...results.map((r) => r.n));
  const body = `## Density (\`npm run bench:density\`)

${result.date.slice(0, 10)} on ${result.machine}; accelerator **${accel}**. N idle sandboxes (${MEM_MIB} MiB, 1 vCPU,
warm start), started ${BATCH} at a time; after ${SETTLE_S} s, CPU over ${WINDOW_S} s: the VMs' own processes (QEMU, agent
proxy, VMM supervisor: utime+stime from /proc/PID/stat, robust to other load on the machine) and the whole host
(/proc/stat, includes everything else running). PSS: smaps_rollup of each VM's QEMU, proxy and supervisor. Then
one \`run("true")\` on each VM (the first command after a restore: TCG translates the guest's code afresh), then
${RUNS} on random VMs while the rest idle (each phase at most ${RUNS_MAX_S} s: samples says how many ran). **baseline**: \`SMOLVM_IDLE_TUNING=0\` (the arguments from
before the idle work); **tuned**: the default. Both measured in this run. docs/DENSITY.md explains the changes.

| N | measure | baseline | tuned | tuned/baseline |
| --- | --- | ---: | ---: | ---: |
${rows.join("\n")}

One QEMU's PSS by kind at N=${largest} (MiB; the guest RAM file's clean pages are shared by all VMs of a template):
baseline ${splitOf(get("baseline", largest))}; tuned ${splitOf(get("tuned", largest))}.

Raw JSON: \`node dist/bench/density.js --no-write\`.`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "density", body);
}
