/**
 * Chaos run: `kill -9` of the SDK process, the VMM or the proxy at random points of create, snapshot, fork, pack and
 * delete; then `reconcile` (what every `smolvm` command and `SmolVM.list()` runs first) must leave no process,
 * socket, file, cgroup or row that no VM accounts for, and every snapshot and pack must be complete or absent.
 *   node dist/bench/chaos.js [--rounds 4] [--no-write]
 * Uses its own state and runtime dirs; reports kill points tried and leftovers found (goal 0) in BENCHMARKS.md.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { existingVmCgroups } from "../src/backends/cgroups.js";
import { verifyPack } from "../src/images/pack.js";
import { SmolVM } from "../src/index.js";
import { packageRoot, vmRunDir } from "../src/paths.js";
import { checkSnapshotFiles } from "../src/sandbox/snapshots.js";
import { readFast } from "../src/sandbox/templates.js";
import { listOps } from "../src/state/journal.js";
import { StateStore } from "../src/state/store.js";
import { processAlive, sleep } from "../src/util/proc.js";
import { machine, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const ROUNDS = arg("rounds", 4);
const state = mkdtempSync(join(tmpdir(), "smolvm-chaos-"));
const runtime = mkdtempSync("/tmp/smolvm-chaos-rt-");
const packs = mkdtempSync(join(tmpdir(), "smolvm-chaos-packs-"));
process.env.SMOLVM_STATE_DIR = state;
process.env.SMOLVM_RUNTIME_DIR = runtime;
const index = join(packageRoot(), "dist/src/index.js");

type Scenario = "create" | "snapshot" | "fork" | "pack" | "delete";
type Victim = "sdk" | "vmm" | "proxy";
const SCENARIOS: Scenario[] = ["create", "snapshot", "fork", "pack", "delete"];
const VICTIMS: Victim[] = ["sdk", "vmm", "proxy"];

/** The child's work: `base` is a running VM (snapshot, fork, pack), `doomed` one to delete. */
function script(s: Scenario, base: string, doomed: string, n: number): string {
  const work: Record<Scenario, string> = {
    create: "await SmolVM.create({ memSizeMib: 256, keep: true });",
    snapshot: `await (await SmolVM.fromId("${base}")).snapshot();`,
    fork: `await (await SmolVM.fromId("${base}")).fork(2, { keep: true });`,
    pack: `await (await SmolVM.fromId("${base}")).pack(${JSON.stringify(join(packs, `p${n}.smolmachine`))}, { withMemory: true });`,
    delete: `await (await SmolVM.fromId("${doomed}")).delete();`,
  };
  return `const { SmolVM } = await import(${JSON.stringify(index)}); ${work[s]} process.exit(0);`;
}

/** Live processes of ours (QEMU, proxy, launcher) found through our runtime dir in their command lines. */
function ourProcesses(): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const p of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmd.includes(runtime) && processAlive(Number(p))) out.push({ pid: Number(p), cmd });
    } catch {}
  }
  return out;
}

function victimPid(v: Victim, exclude: Set<number>, preferVm?: string): number | null {
  const procs = ourProcesses().filter((p) => !exclude.has(p.pid));
  const pick = (f: (c: string) => boolean) => {
    const c = procs.filter((p) => f(p.cmd));
    return (c.find((p) => preferVm && p.cmd.includes(`smolvm-${preferVm}`)) ?? c[c.length - 1])?.pid ?? null;
  };
  if (v === "vmm") return pick((c) => c.includes("qemu-system") && !c.includes(" launch "));
  return pick((c) => c.includes(" proxy "));
}

/** Everything not accounted for by a consistent record. */
function leftovers(): string[] {
  const store = StateStore.open();
  const found: string[] = [];
  const vms = store.list();
  const live = vms.filter((v) => (v.status === "running" || v.status === "paused") && v.handle);
  const liveRun = new Set(live.map((v) => vmRunDir(v.id, state).split("/").pop()));
  // QEMU, its supervisor and the proxy name their VM's run dir on their command line
  for (const p of ourProcesses()) {
    const dir = new RegExp(`${runtime}/([^/ ]+)`).exec(p.cmd)?.[1];
    if (!dir || !liveRun.has(dir)) found.push(`process ${p.pid}: ${p.cmd.slice(0, 120)}`);
  }
  for (const d of readdirSync(runtime)) if (!liveRun.has(d) && d !== ".empty") found.push(`run dir ${d}`);
  for (const v of vms) {
    if (v.status === "created") found.push(`VM ${v.id} left in state "created"`);
    if (!(v.status === "running" || v.status === "paused")) {
      const name = vmRunDir(v.id, state).split("/").pop() as string;
      for (const cg of existingVmCgroups(name)) found.push(`cgroup ${cg}`);
    }
  }
  const ids = new Set(vms.map((v) => v.id));
  for (const d of existsSync(join(state, "vms")) ? readdirSync(join(state, "vms")) : []) {
    if (!ids.has(d)) found.push(`VM folder ${d}`);
  }
  const snaps = store.listSnapshots();
  const snapIds = new Set(snaps.map((s) => s.id));
  for (const d of existsSync(join(state, "snapshots")) ? readdirSync(join(state, "snapshots")) : []) {
    if (!snapIds.has(d)) found.push(`snapshot folder ${d}`);
  }
  for (const s of snaps) {
    try {
      if (s.memBytes >= 0) {
        checkSnapshotFiles(s);
        readFast(join(s.dir, "fast"));
      } else if (!existsSync(s.diskFile)) found.push(`disk-only snapshot ${s.id} without its disk`);
    } catch (e) {
      found.push(`incomplete snapshot ${s.id}: ${(e as Error).message}`);
    }
  }
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (/\.tmp|\.extract-|^\.smolmachine-/.test(e.name)) found.push(`temporary ${join(d, e.name)}`);
      else if (e.isDirectory()) walk(join(d, e.name));
    }
  };
  walk(state);
  walk(packs);
  for (const op of listOps(store)) found.push(`journal entry ${op.kind} ${op.vmId ?? op.path}`);
  return found;
}

async function packsComplete(): Promise<string[]> {
  const bad: string[] = [];
  for (const f of readdirSync(packs).filter((x) => x.endsWith(".smolmachine"))) {
    try {
      await verifyPack(join(packs, f));
    } catch (e) {
      bad.push(`incomplete pack ${f}: ${(e as Error).message}`);
    }
  }
  return bad;
}

function run(code: string): { done: Promise<number | null>; kill: () => void } {
  const c = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: "ignore" });
  return { done: new Promise((r) => c.on("close", r)), kill: () => c.kill("SIGKILL") };
}

async function main(): Promise<void> {
  const durations: Record<string, number> = {};
  let base = (await SmolVM.create({ memSizeMib: 256, name: "chaos-base" })).vmId;
  const points: { scenario: Scenario; victim: Victim; at: number; killed: boolean; leftovers: string[] }[] = [];
  // how long each operation takes undisturbed: kill points are drawn from [0, that]
  for (const s of SCENARIOS) {
    const doomed = (await SmolVM.create({ memSizeMib: 256 })).vmId;
    const t = performance.now();
    await run(script(s, base, doomed, 0)).done;
    durations[s] = performance.now() - t;
    await cleanup(base);
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const s of SCENARIOS) {
      for (const v of VICTIMS) {
        if (!(await SmolVM.list()).some((x) => x.vmId === base && x.status === "running")) {
          await (await SmolVM.fromId(base).catch(() => null))?.delete();
          base = (await SmolVM.create({ memSizeMib: 256, name: "chaos-base" })).vmId;
        }
        const doomed = (await SmolVM.create({ memSizeMib: 256 })).vmId;
        const before = new Set(ourProcesses().map((p) => p.pid));
        const at = Math.random() * (durations[s] as number);
        const child = run(script(s, base, doomed, points.length + 1));
        let killed = false;
        if (v === "sdk") {
          await Promise.race([sleep(at), child.done]);
          child.kill();
          killed = true;
        } else {
          // the VM the operation works on: the new one for create/fork, the base one otherwise
          const deadline = performance.now() + at + 2000;
          await sleep(at);
          const prefer = s === "delete" ? doomed : s === "create" || s === "fork" ? undefined : base;
          while (!killed && performance.now() < deadline) {
            const exclude = s === "create" || s === "fork" ? before : new Set<number>();
            const pid = victimPid(v, exclude, prefer);
            try {
              if (pid) {
                process.kill(pid, "SIGKILL");
                killed = true;
              }
            } catch {
              // it ended between the look and the kill: try again
            }
            if (!killed) await sleep(20);
          }
          await Promise.race([child.done, sleep(90_000)]);
          child.kill();
        }
        await child.done;
        await SmolVM.list(); // reconcile, as any next command would
        const found = [...leftovers(), ...(await packsComplete())];
        points.push({ scenario: s, victim: v, at: Math.round(at), killed, leftovers: found });
        process.stderr.write(`${s}/${v} at ${Math.round(at)} ms: ${found.length ? found.join("; ") : "clean"}\n`);
        await cleanup(base);
      }
    }
  }
  await (await SmolVM.fromId(base).catch(() => null))?.delete();
  await cleanup(null);
  const final = leftovers();
  report(points, durations, final);
}

/** Back to just the base VM: delete every other VM, snapshot and pack. */
async function cleanup(keep: string | null): Promise<void> {
  for (const v of await SmolVM.list()) if (v.vmId !== keep) await (await SmolVM.fromId(v.vmId)).delete();
  for (let pass = 0; pass < 5; pass++) {
    for (const s of SmolVM.listSnapshots().reverse()) {
      try {
        SmolVM.deleteSnapshot(s.id);
      } catch {}
    }
  }
  for (const f of readdirSync(packs)) rmSync(join(packs, f), { recursive: true, force: true });
}

function report(
  points: { scenario: Scenario; victim: Victim; at: number; killed: boolean; leftovers: string[] }[],
  durations: Record<string, number>,
  final: string[],
): void {
  const tried = points.filter((p) => p.killed).length;
  const bad = points.filter((p) => p.leftovers.length);
  const result = {
    date: new Date().toISOString(),
    machine: machine(),
    killPoints: points.length,
    killed: tried,
    withLeftovers: bad.length,
    leftovers: bad.flatMap((p) => p.leftovers.map((l) => `${p.scenario}/${p.victim}@${p.at}ms: ${l}`)),
    afterDeletingEverything: final,
    undisturbedMs: Object.fromEntries(Object.entries(durations).map(([k, v]) => [k, Math.round(v)])),
  };
  console.log(JSON.stringify(result, null, 2));
  if (process.argv.includes("--no-write")) return;
  const rows = SCENARIOS.map((s) => {
    const mine = points.filter((p) => p.scenario === s);
    const cell = (v: Victim) => {
      const m = mine.filter((p) => p.victim === v);
      return `${m.filter((p) => p.killed).length}/${m.length} killed, ${m.filter((p) => p.leftovers.length).length} with leftovers`;
    };
    return `| ${s} | ${Math.round(durations[s] ?? 0)} ms | ${cell("sdk")} | ${cell("vmm")} | ${cell("proxy")} |`;
  });
  writeSection(
    join(packageRoot(), "docs", "BENCHMARKS.md"),
    "chaos",
    `## Chaos: kill -9 at random points, then reconcile (${result.date.slice(0, 10)})

Machine: ${result.machine}. Command: \`npm run build && node dist/bench/chaos.js --rounds ${ROUNDS}\`.
Each kill point: start the operation in a child process, \`kill -9\` the SDK process, the VM's QEMU or its proxy at a
random moment within the operation's undisturbed duration, run \`reconcile\` (\`SmolVM.list()\`), then look for
anything no record accounts for: processes, run dirs, cgroups, VM and snapshot folders, temporary files, journal
entries, VMs stuck in \`created\`, snapshots or packs that are not complete.

| operation | undisturbed | SDK killed | VMM killed | proxy killed |
| --- | ---: | --- | --- | --- |
${rows.join("\n")}

**${result.killPoints} kill points (${tried} kills landed), ${bad.length} with leftovers**; after deleting every VM and
snapshot: ${final.length} leftovers.${result.leftovers.length ? `\n\nLeftovers:\n${result.leftovers.map((l) => `- ${l}`).join("\n")}` : ""}`,
  );
}

try {
  await main();
} finally {
  await cleanup(null).catch(() => {}); // even if the run failed half way: no VM outlives its state dir
  rmSync(state, { recursive: true, force: true });
  rmSync(runtime, { recursive: true, force: true });
  rmSync(packs, { recursive: true, force: true });
}
