/**
 * Timestamps of the steps of a start, for finding where time goes: `SMOLVM_TRACE=1` prints one line per step on
 * stderr (ms since the process started); `traceTo` hands them to a function instead (bench/warm-phases.ts). Off,
 * it costs two tests.
 */
const on = !!process.env.SMOLVM_TRACE;
let sink: ((what: string, atMs: number) => void) | null = null;

export function trace(what: string): void {
  if (on) process.stderr.write(`[trace ${performance.now().toFixed(1)}] ${what}\n`);
  if (sink) sink(what, performance.now());
}

/** @internal Receive every trace step (null: stop). */
export function traceTo(fn: ((what: string, atMs: number) => void) | null): void {
  sink = fn;
}
