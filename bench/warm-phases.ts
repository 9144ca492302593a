/**
 * Where a warm start's time goes, phase by phase, and fork(10) at the same shape: one run, against the same run's
 * cold boot. Each warm `create()` is traced (src/util/trace.ts) and cut at its steps; the first command is timed
 * apart, with the number of guest code blocks QEMU translated for it (TCG: `info jit`).
 *   node dist/bench/warm-phases.js [--runs 20] [--fork-rounds 5] [--no-write]
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { QmpClient } from "../src/backends/qemu/qmp.js";
import { SmolVM } from "../src/index.js";
import { packageRoot } from "../src/paths.js";
import { traceTo } from "../src/util/trace.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 20);
const FORK_ROUNDS = arg("fork-rounds", 5);
const SHAPE = { memSizeMib: 256, vcpuCount: 1 };
const now = () => performance.now();

/** Phases as [name, from step, to step]; "create" and "created" are the bench's own marks. */
const PHASES: [string, string, string][] = [
  ["plan: image, warm template lookup", "create", "launch: start"],
  ["disk layer and network", "launch: start", "launch: disk and network ready"],
  ["VMM process start (launcher, QEMU's own start)", "qemu: launcher spawn", "qemu: launcher returned"],
  ["QMP: QEMU's main loop answers", "qemu: launcher returned", "qemu: qmp connected"],
  ["state load (migrate-incoming)", "qemu: qmp connected", "qemu: state loaded"],
  ["firewall rules, cont", "qemu: state loaded", "qemu: cont"],
  ["agent proxy start", "qemu: cont", "qemu: proxy started"],
  ["guest resumes, agent answers its resync (clock, entropy, hostname)", "qemu: proxy started", "launch: resynced"],
  ["create() total", "create", "created"],
];

/** TB count from QEMU's `info jit` (its only QMP client for the moment). */
async function translatedBlocks(controlSocket: string): Promise<number | null> {
  const q = await QmpClient.connect(controlSocket);
  try {
    const s = String(await q.execute("human-monitor-command", { "command-line": "info jit" }));
    const m = /TB count\s+(\d+)/.exec(s);
    return m ? Number(m[1]) : null;
  } finally {
    q.close();
  }
}

/** CPU time (ms) a process used so far: its main thread (QEMU's start, the state load) and its other threads. */
const TICK_MS = 1000 / Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
function cpuMs(pid: number): { main: number; other: number } {
  const out = { main: 0, other: 0 };
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const s = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    const ms = (Number(f[11]) + Number(f[12])) * TICK_MS;
    if (Number(t) === pid) out.main += ms;
    else out.other += ms;
  }
  return out;
}
/** Host CPU busy so far (ms, all cores), from /proc/stat. */
function hostBusyMs(): number {
  const v = (readFileSync("/proc/stat", "utf8").split("\n")[0] as string).trim().split(/\s+/).slice(1, 9).map(Number);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return (v.reduce((a, b) => a + b, 0) - idle) * TICK_MS;
}

const pssKiB = (pid: number) => Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1]);

await (await SmolVM.create(SHAPE)).delete(); // the warm template, outside the measurement
const phase = new Map<string, number[]>(PHASES.map(([n]) => [n, []]));
const first: number[] = [];
const second: number[] = [];
const tbBefore: number[] = [];
const tbFirst: number[] = [];
const cold: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const marks = new Map<string, number>();
  traceTo((what, at) => {
    if (!marks.has(what)) marks.set(what, at);
  });
  marks.set("create", now());
  const vm = await SmolVM.create(SHAPE);
  marks.set("created", now());
  traceTo(null);
  const qmp = (vm as unknown as { rec: { handle: { controlSocket: string } | null } }).rec.handle?.controlSocket;
  const tb0 = qmp ? await translatedBlocks(qmp) : null;
  const t1 = now();
  await vm.run(["true"]);
  const t2 = now();
  await vm.run(["true"]);
  second.push(now() - t2);
  const tb1 = qmp ? await translatedBlocks(qmp) : null;
  first.push(t2 - t1);
  if (tb0 !== null && tb1 !== null) {
    tbBefore.push(tb0);
    tbFirst.push(tb1 - tb0);
  }
  for (const [n, a, b] of PHASES) {
    const x = marks.get(a);
    const y = marks.get(b);
    if (x !== undefined && y !== undefined) phase.get(n)?.push(y - x);
  }
  await vm.delete();
  if (i < Math.ceil(RUNS / 4)) {
    const t = now();
    const c = await SmolVM.create({ ...SHAPE, coldBoot: true });
    await c.run(["true"]);
    cold.push(now() - t);
    await c.delete();
  }
  process.stderr.write(`warm run ${i + 1}/${RUNS}\n`);
}
// create() plus the first command: the two are timed apart (QEMU's translation count is read between them)
const created = phase.get("create() total") ?? [];
const toFirstCommand = created.map((ms, i) => ms + (first[i] ?? 0));

const src = await SmolVM.create(SHAPE);
const forkMs: number[] = [];
const clonePss: number[] = [];
const cloneMain: number[] = [];
const cloneOther: number[] = [];
const sourceCpu: number[] = [];
const hostBusy: number[] = [];
try {
  await src.run("echo ready > /root/state");
  const srcPid = src.info().pid as number;
  for (let r = 0; r < FORK_ROUNDS; r++) {
    const s0 = cpuMs(srcPid);
    const h0 = hostBusyMs();
    const t = now();
    const clones = await src.fork(10);
    forkMs.push(now() - t);
    hostBusy.push(hostBusyMs() - h0);
    const s1 = cpuMs(srcPid);
    sourceCpu.push(s1.main + s1.other - s0.main - s0.other);
    for (const c of clones) {
      const u = cpuMs(c.info().pid as number);
      cloneMain.push(u.main);
      cloneOther.push(u.other);
    }
    await new Promise((res) => setTimeout(res, 3000)); // idle
    for (const c of clones) clonePss.push(pssKiB(c.info().pid as number) / 1024);
    await Promise.all(clones.map((c) => c.delete()));
    process.stderr.write(`fork round ${r + 1}/${FORK_ROUNDS}\n`);
  }
} finally {
  await src.delete();
}

const c = stats(cold);
const result = {
  benchmark: "warm-phases",
  date: new Date().toISOString(),
  machine: machine(),
  shape: SHAPE,
  phasesMs: Object.fromEntries([...phase].map(([n, xs]) => [n, stats(xs)])),
  firstCommandMs: stats(first),
  secondCommandMs: stats(second),
  warmToFirstCommandMs: stats(toFirstCommand),
  coldToFirstCommandMs: c,
  ratioToColdP50: stats(toFirstCommand).p50 / c.p50,
  translatedBlocks: { beforeFirstCommand: stats(tbBefore), forFirstCommand: stats(tbFirst) },
  fork10Ms: stats(forkMs),
  forkCpuMs: {
    hostBusy: stats(hostBusy),
    sourceVmm: stats(sourceCpu),
    perCloneVmmMainThread: stats(cloneMain),
    perCloneVmmOtherThreads: stats(cloneOther),
  },
  cores: availableParallelism(),
  pssPerIdleCloneMiB: stats(clonePss),
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);

if (!process.argv.includes("--no-write")) {
  const row = (label: string, x: Stats) => `| ${label} | ${x.p50.toFixed(1)} | ${x.p95.toFixed(1)} | ${x.n} |`;
  const body = `## Warm start, phase by phase; fork (\`node dist/bench/warm-phases.js\`)

${result.date.slice(0, 10)} on ${result.machine}; TCG; ${SHAPE.memSizeMib} MiB, ${SHAPE.vcpuCount} vCPU, no network.
Each warm \`create()\` is cut at its traced steps (src/util/trace.ts); ms.

| phase | p50 | p95 | n |
| --- | ---: | ---: | ---: |
${[...phase].map(([n, xs]) => row(n, stats(xs))).join("\n")}
${row('first command (`run(["true"])`)', result.firstCommandMs)}
${row("second command", result.secondCommandMs)}
${row("**warm `create()` to first command answered**", result.warmToFirstCommandMs)}
${row("cold boot to first command (same run)", c)}

Warm start is **${result.ratioToColdP50.toFixed(3)}x** the same run's cold boot (p50). The guest's first command made
QEMU translate ${stats(tbFirst).p50} blocks of guest code (p50; ${stats(tbBefore).p50} were translated before it, by the
resume and the resync): under TCG nothing of a restored guest's code is translated yet, because translations live in
the QEMU process, not in the saved state.

| fork | p50 | p95 | n |
| --- | ---: | ---: | ---: |
${row("`fork(10)` total, ms", result.fork10Ms)}
${row("PSS per idle clone, MiB", result.pssPerIdleCloneMiB)}
${row("CPU used by the whole host during `fork(10)` (all cores), ms", result.forkCpuMs.hostBusy)}
${row("CPU of the source's VMM (the snapshot), ms", result.forkCpuMs.sourceVmm)}
${row("CPU of one clone's VMM, main thread (its start, the state load), ms", result.forkCpuMs.perCloneVmmMainThread)}
${row("CPU of one clone's VMM, other threads (the vCPU: resume, resync), ms", result.forkCpuMs.perCloneVmmOtherThreads)}

A \`fork(10)\` is CPU-bound on this host's ${result.cores} cores: ten clones' VMMs alone used
${((10 * (stats(cloneMain).p50 + stats(cloneOther).p50)) / result.cores).toFixed(0)} ms of the host's cores
(${(10 * (stats(cloneMain).p50 + stats(cloneOther).p50)).toFixed(0)} ms of CPU / ${result.cores}), after the snapshot's
${stats(sourceCpu).p50.toFixed(0)} ms.
`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "warm-phases", body);
}
