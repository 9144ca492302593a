/**
 * What confinement costs: this build against a baseline build (e.g. the commit before it, checked out elsewhere),
 * interleaved in one run on one machine: warm create to first command, exec round trip, snapshot, restore from a
 * snapshot, delete, and the memory of an idle VM's host processes (QEMU, proxy, supervisor).
 *   git worktree add /tmp/base <commit> && (cd /tmp/base && ln -s $PWD/node_modules . && npx tsc -p .)
 *   node dist/bench/confinement.js --baseline /tmp/base [--runs 15] [--no-write]
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { packageRoot } from "../src/paths.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const RUNS = Number(arg("runs") ?? 15);
const baseline = arg("baseline");
if (!baseline) throw new Error("--baseline DIR (a built checkout to compare with) is required");

type SmolVMClass = typeof import("../src/index.js").SmolVM;
const builds: Record<string, SmolVMClass> = {
  baseline: (await import(join(baseline, "dist/src/index.js"))).SmolVM,
  this: (await import(join(packageRoot(), "dist/src/index.js"))).SmolVM,
};

const pssKiB = (pid: number) => Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1]);
/** PSS of every live process whose command line names the VM (QEMU, its supervisor, the proxy). */
function hostPssKiB(vmId: string, runDir: string): number {
  let kib = 0;
  for (const p of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8");
      if (cmd.includes(`smolvm-${vmId}`) || cmd.includes(runDir)) kib += pssKiB(Number(p)) || 0;
    } catch {}
  }
  return kib;
}

const samples: Record<string, Record<string, number[]>> = { baseline: {}, this: {} };
const put = (build: string, what: string, v: number) => {
  const b = samples[build] as Record<string, number[]>;
  b[what] ??= [];
  b[what].push(v);
};

async function round(build: string, SmolVM: SmolVMClass): Promise<void> {
  let t = performance.now();
  const vm = await SmolVM.create({ memSizeMib: 512 });
  await vm.run(["true"]);
  put(build, "warm create to first command (ms)", performance.now() - t);
  const exec: number[] = [];
  for (let i = 0; i < 20; i++) {
    t = performance.now();
    await vm.run(["true"]);
    exec.push(performance.now() - t);
  }
  put(build, "exec round trip, p50 of 20 (ms)", stats(exec).p50);
  await new Promise((r) => setTimeout(r, 500));
  const h = (vm as unknown as { rec: { handle: { runDir: string } } }).rec.handle;
  put(build, "PSS of the VM's host processes, idle (MiB)", hostPssKiB(vm.vmId, h.runDir) / 1024);
  t = performance.now();
  const snap = await vm.snapshot();
  put(build, "snapshot of a running VM (ms)", performance.now() - t);
  t = performance.now();
  const clone = await SmolVM.fromSnapshot(snap.id);
  await clone.run(["true"]);
  put(build, "restore from the snapshot to first command (ms)", performance.now() - t);
  t = performance.now();
  await clone.delete();
  put(build, "delete of a running VM (ms)", performance.now() - t);
  await vm.delete();
  SmolVM.deleteSnapshot(snap.id);
}

// warm both builds' templates first (each build has its own agent, so its own templates)
for (const [name, S] of Object.entries(builds)) await round(name, S);
for (const b of Object.values(samples)) for (const k of Object.keys(b)) b[k] = [];
for (let i = 0; i < RUNS; i++) {
  for (const [name, S] of i % 2 ? Object.entries(builds).reverse() : Object.entries(builds)) await round(name, S);
}

const rows: string[] = [];
const out: Record<string, { baseline: Stats; this: Stats; ratio: number }> = {};
for (const what of Object.keys(samples.this as Record<string, number[]>)) {
  const a = stats((samples.baseline as Record<string, number[]>)[what] as number[]);
  const b = stats((samples.this as Record<string, number[]>)[what] as number[]);
  const ratio = Math.round((b.p50 / a.p50) * 100) / 100;
  out[what] = { baseline: a, this: b, ratio };
  const f = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
  rows.push(`| ${what} | ${f(a.p50)} / ${f(a.p95)} | ${f(b.p50)} / ${f(b.p95)} | ${ratio.toFixed(2)} |`);
}
const result = { date: new Date().toISOString(), machine: machine(), runs: RUNS, baseline, results: out };
console.log(JSON.stringify(result, null, 2));
if (!process.argv.includes("--no-write")) {
  writeSection(
    join(packageRoot(), "docs", "BENCHMARKS.md"),
    "confinement",
    `## What confinement costs (${result.date.slice(0, 10)})

Machine: ${result.machine}. This build (QEMU confined: launcher and supervisor, seccomp, per-VM uid, chroot,
namespaces, cgroup, descriptors instead of paths; proxy with console and event duties) against the build before it
(\`${baseline}\`), ${RUNS} rounds each, interleaved in one run, 512 MiB guests, TCG. p50 / p95 (n = ${RUNS}: p95 is
the slowest but one or the slowest). Command: \`node dist/bench/confinement.js --baseline DIR --runs ${RUNS}\`.

| measure | before | now | ratio (p50) |
| --- | ---: | ---: | ---: |
${rows.join("\n")}`,
  );
}
