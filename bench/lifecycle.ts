/**
 * Lifecycle benchmark: create+start, ready, exec round trip, stop+delete, full lifecycle; p50/p95 over many runs.
 *   node dist/bench/lifecycle.js [--runs 20] [--execs 30] [--no-write]
 * Prints JSON; writes its section of docs/BENCHMARKS.md unless --no-write.
 */
import { join } from "node:path";
import { AgentClient } from "../src/agent/client.js";
import { SmolVM } from "../src/index.js";
import { packageRoot } from "../src/paths.js";
import { StateStore } from "../src/state/store.js";
import { machine, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 20);
const EXECS = arg("execs", 30);
const now = () => performance.now();

const s: Record<string, number[]> = {
  vmmStart: [],
  ready: [],
  agentReady: [],
  execShell: [],
  execArgv: [],
  ping: [],
  stop: [],
  stopDelete: [],
  deleteRunning: [],
  lifecycle: [],
};
let accel = "?";

for (let i = 0; i < RUNS; i++) {
  // A: boot, measure commands, stop cleanly, delete
  const t0 = now();
  const vm = new SmolVM({ coldBoot: true }); // the boot path; warm start is measured in bench/snapshots.ts
  await vm.start();
  await vm.run("true");
  s.ready?.push(now() - t0);
  const t = vm.startTimings;
  if (t) {
    s.vmmStart?.push(t.imageMs + t.diskMs + t.bootMs);
    s.agentReady?.push(t.agentReadyMs);
  }
  accel = vm.info().accel ?? accel;
  for (let j = 0; j < EXECS; j++) {
    let a = now();
    await vm.run("true");
    s.execShell?.push(now() - a);
    a = now();
    await vm.run(["true"]);
    s.execArgv?.push(now() - a);
  }
  const h = StateStore.open().get(vm.vmId)?.handle;
  if (h) {
    const c = await AgentClient.connect(h.agentSocket);
    for (let j = 0; j < EXECS; j++) s.ping?.push(await c.ping());
    c.close();
  }
  const a = now();
  await vm.stop();
  const b = now();
  await vm.delete();
  s.stop?.push(b - a);
  s.stopDelete?.push(now() - a);

  // B: the whole ephemeral lifecycle, as `await using` does it
  const l0 = now();
  const e = await SmolVM.create({ coldBoot: true });
  await e.run("true");
  const d0 = now();
  await e.delete();
  s.deleteRunning?.push(now() - d0);
  s.lifecycle?.push(now() - l0);
  process.stderr.write(`run ${i + 1}/${RUNS}: ready ${(s.ready?.at(-1) ?? 0).toFixed(0)} ms\n`);
}

const result = {
  benchmark: "lifecycle",
  date: new Date().toISOString(),
  machine: machine(),
  accel,
  runs: RUNS,
  execsPerVm: EXECS,
  ms: Object.fromEntries(Object.entries(s).map(([k, v]) => [k, stats(v)])),
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);

if (!process.argv.includes("--no-write")) {
  const m = result.ms as Record<string, ReturnType<typeof stats>>;
  const row = (label: string, key: string, target = "") => {
    const x = m[key] as ReturnType<typeof stats>;
    return `| ${label} | ${x.p50.toFixed(2)} | ${x.p95.toFixed(2)} | ${x.n} | ${target} |`;
  };
  const body = `## Lifecycle (\`npm run bench\`)

${result.date.slice(0, 10)} on ${result.machine}; accelerator **${accel}**; ${RUNS} runs, ${EXECS} commands of each kind per VM.
Default config (2 vCPUs, 512 MiB, isolated qcow2 layer over the busybox image), **cold boot** (\`coldBoot: true\`; the
default warm start is in the snapshots section). Times in ms.

| phase | p50 | p95 | n | target (TCG, this machine) |
| --- | ---: | ---: | ---: | --- |
${row("create+start (VMM up, agent socket listening)", "vmmStart")}
${row("guest boot until the agent answers", "agentReady")}
${row("ready: `new SmolVM()` to first command answered", "ready", "<= 2500")}
${row('exec round trip, `run("true")` (via /bin/sh -c)', "execShell", "p50 <= 5")}
${row('exec round trip, `run(["true"])` (argv)', "execArgv", "p50 <= 5")}
${row("protocol ping round trip (no process)", "ping")}
${row("stop (clean guest shutdown, disk synced)", "stop")}
${row("stop+delete", "stopDelete", "<= 100")}
${row("delete of a running VM (what `await using` does)", "deleteRunning")}
${row("full lifecycle: create, run `true`, delete", "lifecycle")}

Reference, not comparable hardware: the Python SmolVM publishes, on real KVM, 572 ms create+start, 2.1 s to SSH
ready, 43 ms per command and 751 ms stop+delete. Raw JSON: \`node dist/bench/lifecycle.js --no-write\`.`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "lifecycle", body);
}
