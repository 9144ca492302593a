/**
 * Timestamps of the steps of a start, for finding where time goes: `SMOLVM_TRACE=1` prints one line per step on
 * stderr (ms since the process started). Off, it costs one boolean test.
 */
const on = !!process.env.SMOLVM_TRACE;

export function trace(what: string): void {
  if (on) process.stderr.write(`[trace ${performance.now().toFixed(1)}] ${what}\n`);
}
