/**
 * Soak: N cycles of `SmolVM.create()` (default config: warm start), `vm.run("echo ...")` (its output checked) and
 * `vm.delete()` in one SDK process; nothing may grow. Host resources are sampled after the warm-up, every
 * `--every` cycles and at the end: this process's descriptors, RSS (after a GC) and zombie children; live processes
 * and QEMU processes (ours, found by our runtime dir on their command line, and system-wide); the state dir's disk
 * use; entries of the runtime dir; VM cgroups; TAP devices and network namespaces; VM records.
 *   node --expose-gc dist/bench/soak.js [--cycles 1000] [--warmup 5] [--every 100] [--no-write]   (npm run bench:soak)
 * Uses a fresh state dir and runtime dir of its own (removed at the end). Prints JSON; writes its section of
 * docs/BENCHMARKS.md unless --no-write. A failing cycle is counted (the first error kept); 10 in a row stop the run.
 */
import { lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
  if (!Number.isInteger(v) || v < 0) throw new Error(`--${name}: must be a whole number, got ${process.argv[i + 1]}`);
  return v;
};
const CYCLES = arg("cycles", 1000);
const WARMUP = arg("warmup", 5);
const EVERY = Math.max(1, arg("every", 100));
const MAX_IN_A_ROW = 10;

const state = mkdtempSync(join(tmpdir(), "smolvm-soak-"));
const runtime = mkdtempSync("/tmp/smolvm-soak-rt-"); // short: socket paths are limited to 107 bytes
process.env.SMOLVM_STATE_DIR = state;
process.env.SMOLVM_RUNTIME_DIR = runtime;
const { SmolVM } = await import("../src/index.js");
const { packageRoot, vmRunDir } = await import("../src/paths.js");
const { cgroupVersion, existingVmCgroups } = await import("../src/backends/cgroups.js");
const { StateStore } = await import("../src/state/store.js");

const gc = (globalThis as { gc?: () => void }).gc;
const cgNames = new Set<string>(); // the cgroup name of every VM this run made

interface Proc {
  pid: number;
  ppid: number;
  state: string;
  comm: string;
  cmd: string;
}

function procs(): Proc[] {
  const out: Proc[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      const rest = stat.slice(close + 2).split(" ");
      let cmd = "";
      try {
        cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").replace(/\0/g, " ");
      } catch {}
      out.push({
        pid: Number(p),
        ppid: Number(rest[1]),
        state: rest[0] ?? "?",
        comm: stat.slice(stat.indexOf("(") + 1, close),
        cmd,
      });
    } catch {
      // it ended while we looked
    }
  }
  return out;
}

/** Allocated bytes under a folder (what `du` counts), not following symlinks. */
function du(dir: string): number {
  let total = 0;
  const walk = (d: string) => {
    let names: string[] = [];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      try {
        const st = lstatSync(join(d, n));
        total += st.blocks * 512;
        if (st.isDirectory()) walk(join(d, n));
      } catch {}
    }
  };
  walk(dir);
  return total;
}

/** Every cgroup directory named like a VM's (v2: /sys/fs/cgroup/smolvm/*; v1: smolvm-* under each controller). */
function allVmCgroups(): number {
  const root = "/sys/fs/cgroup";
  const v = cgroupVersion();
  const list = (d: string) => {
    try {
      return readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory());
    } catch {
      return [];
    }
  };
  if (v === 2) return list(join(root, "smolvm")).length;
  if (v !== 1) return 0;
  let n = 0;
  const walk = (d: string, depth: number) => {
    for (const e of list(d)) {
      if (e.name.startsWith("smolvm-")) n++;
      else if (depth > 0) walk(join(d, e.name), depth - 1);
    }
  };
  for (const c of ["memory", "pids", "cpu"]) walk(join(root, c), 3);
  return n;
}

function netnsCount(): { named: number; anonymous: number } {
  let named = 0;
  try {
    named = readdirSync("/run/netns").filter((n) => n.startsWith("smolvm")).length;
  } catch {}
  const inodes = new Set<string>();
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      inodes.add(readlinkSync(`/proc/${p}/ns/net`));
    } catch {}
  }
  return { named, anonymous: inodes.size };
}

type Sample = Record<string, number>;

/** Resources: `scope` "ours" must not grow; "system" is every engineer's on this shared machine (for reference). */
const RESOURCES: { key: string; label: string; scope: "ours" | "system"; trend?: boolean }[] = [
  { key: "fds", label: "open descriptors of this process (/proc/self/fd)", scope: "ours" },
  { key: "rssMiB", label: "RSS of this process after a GC, MiB", scope: "ours", trend: true },
  { key: "heapMiB", label: "JS heap used after a GC, MiB", scope: "ours", trend: true },
  { key: "zombieChildren", label: "zombie children of this process", scope: "ours" },
  { key: "ourProcs", label: "live processes naming our runtime or state dir", scope: "ours" },
  { key: "ourQemu", label: "live QEMU processes of ours", scope: "ours" },
  { key: "runtimeEntries", label: "entries in the runtime dir", scope: "ours" },
  { key: "ourCgroups", label: "cgroup dirs of the VMs this run made", scope: "ours" },
  { key: "vmRecords", label: "VM records in the state store", scope: "ours" },
  { key: "stateDiskKiB", label: "disk use of the state dir, KiB", scope: "ours", trend: true },
  { key: "liveProcs", label: "live processes (state != Z), system-wide", scope: "system" },
  { key: "zombies", label: "zombie processes, system-wide", scope: "system" },
  { key: "qemu", label: "live QEMU processes, system-wide", scope: "system" },
  { key: "cgroups", label: "VM cgroup dirs (smolvm-*), system-wide", scope: "system" },
  { key: "taps", label: "TAP devices (smvt*, smolvm*), system-wide", scope: "system" },
  { key: "netnsNamed", label: "named network namespaces smolvm*", scope: "system" },
  { key: "netnsAll", label: "network namespaces in use by any process", scope: "system" },
];

function sample(): Sample {
  gc?.();
  const mem = process.memoryUsage();
  const ps = procs();
  const live = ps.filter((p) => p.state !== "Z");
  const ours = live.filter((p) => p.pid !== process.pid && (p.cmd.includes(runtime) || p.cmd.includes(state)));
  const isQemu = (p: Proc) =>
    p.comm.startsWith("qemu-system") || /(^|\/)qemu-system-\S+/.test(p.cmd.split(" ")[0] ?? "");
  let taps = 0;
  try {
    taps = readdirSync("/sys/class/net").filter((n) => n.startsWith("smvt") || n.startsWith("smolvm")).length;
  } catch {}
  const ns = netnsCount();
  let ourCgroups = 0;
  for (const n of cgNames) ourCgroups += existingVmCgroups(n).length;
  return {
    fds: readdirSync("/proc/self/fd").length,
    rssMiB: Math.round((mem.rss / 2 ** 20) * 10) / 10,
    heapMiB: Math.round((mem.heapUsed / 2 ** 20) * 10) / 10,
    zombieChildren: ps.filter((p) => p.state === "Z" && p.ppid === process.pid).length,
    ourProcs: ours.length,
    ourQemu: ours.filter(isQemu).length,
    runtimeEntries: readdirSync(runtime).length,
    ourCgroups,
    vmRecords: StateStore.open().list().length,
    stateDiskKiB: Math.round(du(state) / 1024),
    liveProcs: live.length,
    zombies: ps.length - live.length,
    qemu: live.filter(isQemu).length,
    cgroups: allVmCgroups(),
    taps,
    netnsNamed: ns.named,
    netnsAll: ns.anonymous,
  };
}

/** Least-squares slope of y over x. */
function slope(pts: [number, number][]): number {
  const n = pts.length;
  if (n < 2) return 0;
  const mx = pts.reduce((a, p) => a + p[0], 0) / n;
  const my = pts.reduce((a, p) => a + p[1], 0) / n;
  const num = pts.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0);
  const den = pts.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
  return den ? num / den : 0;
}

const lat: Record<"create" | "run" | "delete" | "cycle", number[]> = { create: [], run: [], delete: [], cycle: [] };
const trend: Sample[] = []; // cycle, the resources, and createP50/runP50/deleteP50 of the block before it
let failures = 0;
let inARow = 0;
let maxInARow = 0;
let firstError: string | null = null;
let aborted = false;
let done = 0;
let accel = "?";

async function cycle(i: number, measure: boolean): Promise<void> {
  const t0 = performance.now();
  let vm: InstanceType<typeof SmolVM> | undefined;
  try {
    vm = await SmolVM.create();
    cgNames.add(vmRunDir(vm.vmId, state).split("/").pop() as string);
    const t1 = performance.now();
    const r = await vm.run(`echo soak-${i}`);
    const t2 = performance.now();
    if (r.exitCode !== 0 || r.stdout !== `soak-${i}\n`) {
      throw new Error(`run: exit ${r.exitCode}, stdout ${JSON.stringify(r.stdout.slice(0, 80))}`);
    }
    accel = vm.info().accel ?? accel;
    await vm.delete();
    vm = undefined;
    const t3 = performance.now();
    if (measure) {
      lat.create.push(t1 - t0);
      lat.run.push(t2 - t1);
      lat.delete.push(t3 - t2);
      lat.cycle.push(t3 - t0);
    }
    inARow = 0;
  } catch (e) {
    failures++;
    inARow++;
    maxInARow = Math.max(maxInARow, inARow);
    const msg = `cycle ${i}: ${(e as Error).message?.split("\n")[0]}`;
    firstError ??= msg;
    process.stderr.write(`soak: ${msg}\n`);
    await vm?.delete().catch(() => {});
    if (inARow >= MAX_IN_A_ROW) {
      aborted = true;
      throw new Error(`${MAX_IN_A_ROW} cycles failed in a row; last: ${msg}`);
    }
  }
}

const started = Date.now();
const blockStats = (k: "create" | "run" | "delete", from: number) => stats(lat[k].slice(from)).p50;
try {
  for (let i = 0; i < WARMUP; i++) await cycle(-1 - i, false); // the warm template, page cache, JIT
  failures = 0;
  inARow = 0;
  firstError = null;
  await new Promise((r) => setTimeout(r, 1000));
  trend.push({ cycle: 0, ...sample() });
  let blockStart = 0;
  for (let i = 1; i <= CYCLES; i++) {
    await cycle(i, true);
    done = i;
    if (i % EVERY === 0 || i === CYCLES) {
      const from = blockStart;
      blockStart = lat.create.length;
      const row: Sample = { cycle: i, ...sample() };
      if (lat.create.length > from) {
        Object.assign(row, {
          createP50: blockStats("create", from),
          runP50: blockStats("run", from),
          deleteP50: blockStats("delete", from),
        });
      }
      trend.push(row);
      const mins = ((Date.now() - started) / 60000).toFixed(1);
      process.stderr.write(
        `soak: ${i}/${CYCLES} after ${mins} min, failures ${failures}, ` +
          `rss ${row.rssMiB} MiB, fds ${row.fds}, ours: procs ${row.ourProcs}, qemu ${row.ourQemu}\n`,
      );
    }
  }
} catch (e) {
  process.stderr.write(`soak: stopped: ${(e as Error).message}\n`);
} finally {
  for (const v of await SmolVM.list().catch(() => [])) await (await SmolVM.fromId(v.vmId)).delete().catch(() => {});
}

// the final sample, once whatever the last delete left to exit has had a moment
await new Promise((r) => setTimeout(r, 2000));
const before = trend[0] ?? sample();
const after = sample();
const half = Math.floor(done / 2);
interface Res {
  label: string;
  scope: "ours" | "system";
  before: number;
  after: number;
  delta: number;
  perCycle: number;
  per100FirstHalf?: number;
  per100SecondHalf?: number;
  verdict: string;
}
const resources: Record<string, Res> = Object.fromEntries(
  RESOURCES.map(({ key, label, scope, trend: isTrend }) => {
    const b = before[key] as number;
    const a = after[key] as number;
    const delta = Math.round((a - b) * 10) / 10;
    let verdict: string;
    const extra: { per100FirstHalf?: number; per100SecondHalf?: number } = {};
    if (scope === "system") verdict = "reference (shared machine)";
    else if (isTrend) {
      // wobbles: the growth per 100 cycles over each half (least squares over the samples), second vs first
      const pts = trend.map((t) => [t.cycle, t[key] as number] as [number, number]);
      const first = slope(pts.filter(([c]) => c <= half)) * 100;
      const second = slope(pts.filter(([c]) => c >= half)) * 100;
      extra.per100FirstHalf = Math.round(first * 100) / 100;
      extra.per100SecondHalf = Math.round(second * 100) / 100;
      // growing: the second half still gains over 1% of the level per 100 cycles (doubling within 10,000 cycles)
      verdict = second > 0.01 * Math.max(b, a) ? "GROWS" : "ok (flat or settling)";
    } else verdict = a > b ? "GROWS" : "ok";
    return [key, { label, scope, before: b, after: a, delta, perCycle: done ? delta / done : 0, ...extra, verdict }];
  }),
);

// for finding where a growth comes from: the largest files of the state dir, and zombies by command name
const largest: { path: string; kiB: number }[] = [];
const walkTop = (d: string) => {
  for (const e of readdirSync(d, { withFileTypes: true })) {
    const p = join(d, e.name);
    if (e.isDirectory()) walkTop(p);
    else largest.push({ path: p.slice(state.length + 1), kiB: Math.round((lstatSync(p).blocks * 512) / 1024) });
  }
};
walkTop(state);
largest.sort((a, b) => b.kiB - a.kiB).splice(8);
const zombiesByComm: Record<string, number> = {};
for (const p of procs()) if (p.state === "Z") zombiesByComm[p.comm] = (zombiesByComm[p.comm] ?? 0) + 1;

const ms = Object.fromEntries(Object.entries(lat).map(([k, v]) => [k, v.length ? stats(v) : null])) as Record<
  string,
  Stats | null
>;
const result = {
  benchmark: "soak",
  date: new Date().toISOString(),
  machine: machine(),
  accel,
  cyclesPlanned: CYCLES,
  cyclesDone: done,
  warmup: WARMUP,
  gc: !!gc,
  elapsedMin: Math.round((Date.now() - started) / 6000) / 10,
  failures: { count: failures, maxInARow, first: firstError, aborted },
  ms,
  resources,
  stateDirLargestFiles: largest,
  zombiesByComm,
  trend,
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
rmSync(state, { recursive: true, force: true });
rmSync(runtime, { recursive: true, force: true });

if (!process.argv.includes("--no-write")) {
  const f = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
  const latRow = (label: string, k: string) => {
    const s = ms[k];
    return s ? `| ${label} | ${f(s.p50)} | ${f(s.p95)} | ${f(s.max)} | ${s.n} |` : `| ${label} | - | - | - | 0 |`;
  };
  const resRows = Object.values(resources).map((r) => {
    const x = r;
    const tr =
      x.per100SecondHalf !== undefined ? ` (per 100 cycles: ${x.per100FirstHalf} then ${x.per100SecondHalf})` : "";
    return `| ${x.label} | ${x.before} | ${x.after} | ${x.delta > 0 ? "+" : ""}${x.delta}${tr} | ${x.verdict} |`;
  });
  const cols = ["fds", "rssMiB", "heapMiB", "ourProcs", "ourQemu", "runtimeEntries", "ourCgroups", "stateDiskKiB"];
  const trendRows = trend.map(
    (t) =>
      `| ${t.cycle} | ${cols.map((c) => t[c]).join(" | ")} | ${t.createP50 !== undefined ? `${f(t.createP50)} / ${f(t.runP50 ?? 0)} / ${f(t.deleteP50 ?? 0)}` : "-"} | ${t.liveProcs} / ${t.qemu} |`,
  );
  const grows = Object.values(resources).filter((r) => r.verdict === "GROWS");
  const body = `## Soak: ${done} create/run/delete cycles (\`npm run bench:soak\`)

${result.date.slice(0, 10)} on ${result.machine}; accelerator **${accel}**; \`node --expose-gc dist/bench/soak.js --cycles ${CYCLES}\`,
${WARMUP} warm-up cycles first (not counted), ${result.elapsedMin} min. Each cycle, in one SDK process: \`SmolVM.create()\`
(default config: warm start from the busybox template), \`vm.run("echo soak-N")\` (output checked), \`vm.delete()\`.
Fresh state and runtime dirs of its own. Other engineers ran VMs on this machine meanwhile: system-wide counts move
with theirs and are for reference only; the verdicts are on what this run owns.

Failed cycles: **${failures}**${firstError ? ` (first: \`${firstError}\`; at most ${maxInARow} in a row)` : ""}${aborted ? "; **stopped after 10 failures in a row**" : ""}.

| per cycle, ms | p50 | p95 | max | n |
| --- | ---: | ---: | ---: | ---: |
${latRow("`SmolVM.create()` (warm start, agent answering)", "create")}
${latRow('`vm.run("echo ...")`', "run")}
${latRow("`vm.delete()` of the running VM", "delete")}
${latRow("whole cycle", "cycle")}

Nothing may grow: after the warm-up vs. after the last cycle (and 2 s to settle). Counts must not rise at all; RSS,
heap and disk may wobble, so their verdict is on the growth per 100 cycles over the second half of the run (least
squares over the samples; "GROWS" if it still exceeds 1% of the level per 100 cycles). The state dir is mostly
SQLite's WAL, which fills to about 4 MiB (its auto-checkpoint size) and is then reused.

| resource | before | after | delta | verdict |
| --- | ---: | ---: | ---: | --- |
${resRows.join("\n")}

${grows.length ? `**Growing:** ${grows.map((r) => r.label).join("; ")}.` : "**Nothing of ours grew.**"}

Every ${EVERY} cycles (RSS and heap after a GC; latency columns are the p50 of the cycles since the previous row):

| cycle | fds | RSS MiB | heap MiB | our procs | our QEMU | runtime entries | our cgroups | state KiB | create / run / delete p50 ms | system live procs / QEMU |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |
${trendRows.join("\n")}

Raw JSON: \`node --expose-gc dist/bench/soak.js --no-write\` (\`--cycles N --warmup N --every N\`).`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "soak", body);
}
process.exit(aborted ? 1 : 0);
