/**
 * CLI start-up: wall time of one `smolvm` process (spawn to exit) beside `node -e 0`, rounds interleaved so that
 * machine noise hits every command alike: `--version`, `list` (an empty temp state dir), `--help`, and
 * `npx --offline smolvm --version` (npx resolves this package's own bin; never the network).
 *   node dist/bench/cli-startup.js [--runs 30] [--npx-runs 10] [--no-npx] [--no-write]   (npm run bench:cli)
 * Prints JSON; writes its section of docs/BENCHMARKS.md unless --no-write. Rerun it as is after CLI changes.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { packageRoot } from "../src/paths.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : dflt;
  if (!Number.isInteger(v) || v < 1)
    throw new Error(`--${name}: must be a whole number from 1, got ${process.argv[i + 1]}`);
  return v;
};
const RUNS = arg("runs", 30);
const NPX_RUNS = Math.min(RUNS, arg("npx-runs", 10));
const root = packageRoot();
const bin = join(root, "bin", "smolvm.js");
const state = mkdtempSync(join(tmpdir(), "smolvm-bench-cli-"));
const runtime = mkdtempSync("/tmp/smolvm-bench-cli-rt-");
const env = { ...process.env, SMOLVM_STATE_DIR: state, SMOLVM_RUNTIME_DIR: runtime, npm_config_offline: "true" };
const version = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version;

interface Cmd {
  key: string;
  label: string;
  argv: string[];
  check: (stdout: string) => boolean;
  runs: number;
}
const node = process.execPath;
const cmds: Cmd[] = [
  { key: "node -e 0", label: "`node -e 0` (baseline)", argv: [node, "-e", "0"], check: () => true, runs: RUNS },
  {
    key: "smolvm --version",
    label: "`smolvm --version`",
    argv: [node, bin, "--version"],
    check: (o) => o.trim() === version,
    runs: RUNS,
  },
  {
    key: "smolvm list",
    label: "`smolvm list` (empty state dir)",
    argv: [node, bin, "list"],
    check: () => true,
    runs: RUNS,
  },
  {
    key: "smolvm --help",
    label: "`smolvm --help`",
    argv: [node, bin, "--help"],
    check: (o) => o.includes("Usage: smolvm"),
    runs: RUNS,
  },
];
let npxNote = "";
if (!process.argv.includes("--no-npx")) {
  const npx: Cmd = {
    key: "npx --offline smolvm --version",
    label: "`npx --offline smolvm --version` (from the repo)",
    argv: ["npx", "--offline", "smolvm", "--version"],
    check: (o) => o.trim() === version,
    runs: NPX_RUNS,
  };
  // the first call may link this package into npx's cache (~/.npm/_npx): once, not measured
  const r = spawnSync(npx.argv[0] as string, npx.argv.slice(1), { cwd: root, env, encoding: "utf8", timeout: 120_000 });
  if (r.status === 0 && npx.check(r.stdout)) cmds.push(npx);
  else npxNote = `npx skipped: it did not run offline (${(r.stderr || r.error?.message || "").split("\n")[0]})`;
}

function time(c: Cmd): number {
  const t = performance.now();
  const r = spawnSync(c.argv[0] as string, c.argv.slice(1), { cwd: root, env, encoding: "utf8", timeout: 120_000 });
  const ms = performance.now() - t;
  if (r.status !== 0 || !c.check(r.stdout)) {
    throw new Error(`${c.argv.join(" ")}: exit ${r.status}, ${(r.stderr || r.stdout).split("\n")[0]}`);
  }
  return ms;
}

const samples = new Map<Cmd, number[]>(cmds.map((c) => [c, []]));
try {
  for (const c of cmds) time(c); // one warm-up round: page cache, compile cache
  for (let i = 0; i < RUNS; i++) {
    // rotate the order each round, so no command always runs first (or right after a heavier one)
    for (let k = 0; k < cmds.length; k++) {
      const c = cmds[(i + k) % cmds.length] as Cmd;
      if (i < c.runs) samples.get(c)?.push(time(c));
    }
  }
} finally {
  rmSync(state, { recursive: true, force: true });
  rmSync(runtime, { recursive: true, force: true });
}

const st = new Map<Cmd, Stats>([...samples].map(([c, v]) => [c, stats(v)]));
const base = st.get(cmds[0] as Cmd) as Stats;
const result = {
  benchmark: "cli-startup",
  date: new Date().toISOString(),
  machine: machine(),
  runs: RUNS,
  npx: cmds.length > 4 ? `${NPX_RUNS} runs` : npxNote || "skipped (--no-npx)",
  ms: Object.fromEntries(
    [...st].map(([c, s]) => [
      c.key,
      { ...s, ratioP50: Math.round((s.p50 / base.p50) * 100) / 100, overP50: Math.round(s.p50 - base.p50) },
    ]),
  ),
};
process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);

if (!process.argv.includes("--no-write")) {
  const f = (x: number) => x.toFixed(0);
  const rows = [...st].map(
    ([c, s]) =>
      `| ${c.label} | ${f(s.p50)} | ${f(s.p95)} | ${f(s.min)} | ${s.n} | ${(s.p50 / base.p50).toFixed(2)}x | ${c === cmds[0] ? "" : `+${f(s.p50 - base.p50)}`} |`,
  );
  const body = `## CLI start-up (\`npm run bench:cli\`)

${result.date.slice(0, 10)} on ${result.machine}. Wall time of one process, spawn to exit (\`spawnSync\`), ${RUNS} interleaved
rounds (the order rotated each round) after one warm-up round; \`list\` with an empty temp state dir. Other engineers'
VMs ran on this machine meanwhile: compare the rows with each other, not across runs. Times in ms.

| command | p50 | p95 | min | n | p50 / \`node -e 0\` | p50 over \`node -e 0\` |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
${rows.join("\n")}

${cmds.length === 4 ? npxNote || "npx not measured (--no-npx)." : `\`npx --offline smolvm\` run in the repo resolves the package's own bin (npx links it into its cache, \`~/.npm/_npx\`, on first use: not measured) and never reaches the network; it is npm's start-up plus ours, so it has fewer rounds (${NPX_RUNS}, \`--npx-runs\`).`}
Rerun after CLI changes: \`npx tsc -p tsconfig.json && node dist/bench/cli-startup.js [--runs 30] [--no-npx] [--no-write]\`.`;
  writeSection(join(root, "docs", "BENCHMARKS.md"), "cli-startup", body);
}
