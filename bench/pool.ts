/**
 * The pool against its baselines, one run, side by side: `create()` to first command answered from a pool hit, from
 * a warm start (no pool), and from a cold boot; each as p50/p95 and as a ratio to the same run's cold boot. Pool hits
 * and misses are counted apart (a miss is a warm start plus the refill behind it).
 *   node dist/bench/pool.js [--runs 20] [--no-write]
 */
import { join } from "node:path";
import { SmolVM } from "../src/index.js";
import { packageRoot } from "../src/paths.js";
import { waitFor } from "../src/util/proc.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg("runs", 20);
const SHAPE = { memSizeMib: 256, vcpuCount: 1 };
const now = () => performance.now();

async function toFirstCommand(config: Parameters<typeof SmolVM.create>[0]): Promise<number> {
  const t = now();
  const vm = await SmolVM.create(config);
  await vm.run(["true"]);
  const ms = now() - t;
  await vm.delete();
  return ms;
}

let result: Record<string, unknown> = {};
try {
  await (await SmolVM.create(SHAPE)).delete(); // the warm template, outside the measurement
  const cold: number[] = [];
  const warm: number[] = [];
  for (let i = 0; i < Math.ceil(RUNS / 2); i++) cold.push(await toFirstCommand({ ...SHAPE, coldBoot: true }));
  for (let i = 0; i < RUNS; i++) warm.push(await toFirstCommand(SHAPE));

  SmolVM.configurePool({ size: 2 });
  const hit: number[] = [];
  const miss: number[] = [];
  await (await SmolVM.create(SHAPE)).delete(); // the shape's first create: a miss that starts the pool
  for (let i = 0; i < RUNS; i++) {
    // a hit is measured with the pool full and quiet (the refill of the last one done), as a waiting user finds it
    await waitFor(() => SmolVM.poolStats().ready === 2, 120_000, 50);
    await new Promise((r) => setTimeout(r, 500));
    const before = SmolVM.poolStats();
    const ms = await toFirstCommand(SHAPE);
    (SmolVM.poolStats().hits > before.hits ? hit : miss).push(ms);
    process.stderr.write(`pool run ${i + 1}/${RUNS}\n`);
  }
  const s = SmolVM.poolStats();
  const c = stats(cold);
  result = {
    benchmark: "pool",
    date: new Date().toISOString(),
    machine: machine(),
    shape: SHAPE,
    ms: { coldBoot: c, warmStart: stats(warm), poolHit: stats(hit), poolMiss: miss.length ? stats(miss) : null },
    ratioToColdBootP50: {
      warmStart: stats(warm).p50 / c.p50,
      poolHit: hit.length ? stats(hit).p50 / c.p50 : null,
    },
    pool: s,
  };
} finally {
  await SmolVM.closePool();
}
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);

if (!process.argv.includes("--no-write")) {
  const ms = result.ms as Record<string, Stats | null>;
  const ratio = result.ratioToColdBootP50 as Record<string, number | null>;
  const row = (label: string, x: Stats | null, r: number | null, target: string) =>
    x
      ? `| ${label} | ${x.p50.toFixed(1)} | ${x.p95.toFixed(1)} | ${x.n} | ${r === null ? "1" : r.toFixed(3)} | ${target} |`
      : `| ${label} | - | - | 0 | - | ${target} |`;
  const pool = result.pool as { hits: number; misses: number; started: number; failed: number };
  const body = `## Pool (\`node dist/bench/pool.js\`)

${String(result.date).slice(0, 10)} on ${result.machine}; TCG; 256 MiB, 1 vCPU. \`create()\` to first command answered, ms,
all in one run; ratio = p50 / the same run's cold boot p50.

| start | p50 | p95 | n | ratio | target |
| --- | ---: | ---: | ---: | ---: | --- |
${row("cold boot (`coldBoot: true`)", ms.coldBoot ?? null, null, "baseline")}
${row("warm start, no pool", ms.warmStart ?? null, ratio.warmStart ?? null, "<= 0.05")}
${row("pool hit (`SMOLVM_POOL=2`)", ms.poolHit ?? null, ratio.poolHit ?? null, "<= 15 ms")}
${row("pool miss (pool empty: a warm start)", ms.poolMiss ?? null, null, "")}

Pool counters of the run: ${pool.hits} hits, ${pool.misses} misses, ${pool.started} VMs started for the pool, ${pool.failed} failed.
A hit resumes a paused VM that was restored from the warm template (and ran three commands), then gives it its
identity: its hostname and the host's clock through one agent request queued before the resume (its entropy is its
own since its restore), its name, env, labels and lifetime in the state store. The resume is one QMP \`cont\` on the
connection held since the pause. Hits are measured with the pool
full, as a user who waits between sandboxes finds it; one who takes them faster than the pool refills gets misses.`;
  writeSection(join(packageRoot(), "docs", "BENCHMARKS.md"), "pool", body);
}
