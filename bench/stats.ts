/** Percentiles and the BENCHMARKS.md writer shared by benchmark scripts. */
import { readFileSync, writeFileSync } from "node:fs";
import { cpus, release, totalmem } from "node:os";

export interface Stats {
  n: number;
  p50: number;
  p95: number;
  min: number;
  max: number;
  mean: number;
}

export function stats(samples: number[]): Stats {
  const s = [...samples].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))] as number;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    n: s.length,
    p50: r(q(0.5)),
    p95: r(q(0.95)),
    min: r(s[0] as number),
    max: r(s[s.length - 1] as number),
    mean: r(s.reduce((a, b) => a + b, 0) / s.length),
  };
}

export function machine(): string {
  const cpu = cpus()[0]?.model ?? "unknown CPU";
  return `${cpu}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}, Node ${process.version}`;
}

/** Replace the section between `<!-- bench:NAME -->` markers in docs/BENCHMARKS.md (appending it if absent). */
export function writeSection(path: string, name: string, body: string): void {
  const start = `<!-- bench:${name} -->`;
  const end = `<!-- /bench:${name} -->`;
  let doc = "";
  try {
    doc = readFileSync(path, "utf8");
  } catch {
    doc = "# Benchmarks\n\nWritten by the scripts in `bench/`; each section is replaced when its script runs.\n";
  }
  const block = `${start}\n${body.trim()}\n${end}`;
  const i = doc.indexOf(start);
  const j = doc.indexOf(end);
  doc = i >= 0 && j > i ? doc.slice(0, i) + block + doc.slice(j + end.length) : `${doc.trimEnd()}\n\n${block}\n`;
  writeFileSync(path, doc);
}
