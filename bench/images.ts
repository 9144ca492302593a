/**
 * Images: pull + convert of an image of about 50-80 MB compressed from a registry on loopback (cold cache: layers
 * downloaded; warm cache: layers kept, converted again), its size; and time to first command of the python preset
 * beside the built-in busybox image, cold boot and warm start, rounds interleaved in one run.
 *   node dist/bench/images.js [--runs 10] [--pulls 3] [--no-write]
 * The pulled image is the python preset's own file tree as one gzip layer (no internet here), pushed by the bench.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { allocatedBytes, blobsDir, rootfsOf } from "../src/images/image-store.js";
import { ensurePreset } from "../src/images/presets.js";
import { pullImage } from "../src/images/pull.js";
import { removeImage } from "../src/images/usage.js";
import { packageRoot } from "../src/paths.js";
import { StateStore } from "../src/state/store.js";
import { mustRun } from "../src/util/run.js";
import { machine, type Stats, stats, writeSection } from "./stats.js";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const RUNS = Number(arg("runs") ?? 10);
const PULLS = Number(arg("pulls") ?? 5);

const state = mkdtempSync(join(tmpdir(), "smolvm-bench-img-"));
process.env.SMOLVM_STATE_DIR = state;
const { SmolVM } = await import("../src/index.js");
const { startRegistry } = await import(join(packageRoot(), "dist/test/support/registry.js"));
const { pushImage } = await import(join(packageRoot(), "dist/test/support/oci-build.js"));

const f = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1));
const cell = (s: Stats) => `${f(s.p50)} / ${f(s.p95)}`;

async function pulls(): Promise<{ rows: string[]; json: Record<string, unknown> }> {
  const py = await ensurePreset("python", (m) => process.stderr.write(`bench: ${m}\n`));
  const dir = mkdtempSync(join(tmpdir(), "smolvm-bench-layer-"));
  const reg = await startRegistry();
  try {
    await mustRun("debugfs", ["-R", `rdump / ${dir}`, rootfsOf(py.id)]);
    const tar = join(dir, "layer.tar");
    await mustRun("tar", ["--numeric-owner", "-C", join(dir), "--exclude=./layer.tar", "-cf", tar, "."]);
    const raw = readFileSync(tar);
    const layer = gzipSync(raw, { level: 6 }); // for its size; the push compresses the same way
    const pushed = await pushImage(reg.host, "bench/python", "v1", { layers: [{ tar: raw, compression: "gzip" }] });
    process.env.SMOLVM_INSECURE_REGISTRIES = reg.host;
    const ref = `${reg.host}/bench/python:v1`;
    const cold: number[] = [];
    const warm: number[] = [];
    const store = StateStore.open();
    let size = 0;
    let alloc = 0;
    for (let i = 0; i < PULLS; i++) {
      for (const kind of ["cold", "warm"] as const) {
        if (kind === "cold") rmSync(join(blobsDir(), "sha256", pushed.layerDigests[0].slice(7)), { force: true });
        const t = performance.now();
        const rec = await pullImage(ref);
        (kind === "cold" ? cold : warm).push(performance.now() - t);
        size = rec.sizeBytes;
        alloc = allocatedBytes(rootfsOf(rec.id));
        removeImage(store, rec, null);
      }
    }
    const mb = (n: number) => `${(n / 1e6).toFixed(0)} MB`;
    return {
      rows: [
        `Image: the python preset's files (${mb(raw.length)} as a tar) as one gzip layer of ${mb(layer.length)}.`,
        `Result: ext4 file system of ${mb(size)} (sparse; ${mb(alloc)} allocated on disk).`,
        "",
        "| pull + convert | p50 / p95 (ms) |",
        "| --- | ---: |",
        `| cold cache (layer downloaded, verified, applied, ext4 made) | ${cell(stats(cold))} |`,
        `| warm cache (layer in the blob cache; applied, ext4 made) | ${cell(stats(warm))} |`,
      ],
      json: { layerBytes: layer.length, tarBytes: raw.length, ext4Bytes: size, cold: stats(cold), warm: stats(warm) },
    };
  } finally {
    await reg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function firstCommand(): Promise<{ rows: string[]; json: Record<string, unknown> }> {
  const images = { busybox: undefined, python: "python" } as const;
  const samples: Record<string, number[]> = {};
  const put = (k: string, v: number) => {
    samples[k] ??= [];
    samples[k].push(v);
  };
  // each image's warm template is built first (not measured)
  for (const image of Object.values(images)) await (await SmolVM.create({ image })).delete();
  for (let i = 0; i < RUNS; i++) {
    for (const [name, image] of Object.entries(images)) {
      for (const coldBoot of [false, true]) {
        const how = coldBoot ? "cold boot" : "warm start";
        const t = performance.now();
        const vm = await SmolVM.create({ image, coldBoot });
        const r = await vm.run(["true"]);
        put(`${name} ${how}: create to first command (\`true\`)`, performance.now() - t);
        if (r.exitCode !== 0) throw new Error(`${name}: ${r.stderr}`);
        if (name === "python") {
          const t2 = performance.now();
          const p = await vm.run(["python3", "-c", "pass"]);
          if (p.exitCode !== 0) throw new Error(`python3: ${p.stderr}`);
          put(`${name} ${how}: then \`python3 -c pass\``, performance.now() - t2);
        }
        await vm.delete();
      }
    }
  }
  const st = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, stats(v)]));
  const p = (k: string) => st[k]?.p50 ?? Number.NaN;
  const ratio =
    p("python warm start: create to first command (`true`)") /
    p("busybox warm start: create to first command (`true`)");
  return {
    rows: [
      "| create to first command | p50 / p95 (ms) |",
      "| --- | ---: |",
      ...Object.entries(st).map(([k, s]) => `| ${k} | ${cell(s)} |`),
      "",
      `Warm start, python preset vs busybox, same run (create to a first \`true\`): ${ratio.toFixed(2)}x (target: within 1.5x).`,
      "The python rows then time a first `python3 -c pass` in the same VM: the interpreter's first start after a",
      "restore (under TCG, its code is translated on first use; the page cache holds what the template's boot read).",
    ],
    json: { stats: st, warmRatio: ratio },
  };
}

try {
  const a = await pulls();
  const b = await firstCommand();
  const body = [
    `## Images (${new Date().toISOString().slice(0, 10)})`,
    "",
    `\`node dist/bench/images.js --runs ${RUNS} --pulls ${PULLS}\` on ${machine()}. Registry: Debian's docker-registry on`,
    "127.0.0.1 (no network latency: the cold-cache figure is hashing, decompression and writes, not a download).",
    "",
    ...a.rows,
    "",
    `Time to first command, ${RUNS} interleaved rounds (busybox warm, busybox cold, python warm, python cold), 512 MiB, 2 vCPUs:`,
    "",
    ...b.rows,
  ].join("\n");
  process.stdout.write(`${JSON.stringify({ machine: machine(), pull: a.json, firstCommand: b.json }, null, 2)}\n`);
  if (!process.argv.includes("--no-write")) writeSection(join(packageRoot(), "docs/BENCHMARKS.md"), "images", body);
} finally {
  for (const v of await SmolVM.list()) await (await SmolVM.fromId(v.vmId)).delete();
  rmSync(state, { recursive: true, force: true });
}
