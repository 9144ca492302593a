/**
 * What must happen before the CLI exits early: a signal (Ctrl-C, a closed terminal, `kill`), or a reader that went
 * away (EPIPE). `smolvm run` deletes its VM, a copy removes its partial output. Work this process recorded in the
 * journal as temporary (downloads, archives being written) is removed too.
 */
import { rmSync } from "node:fs";

const tasks = new Set<() => Promise<void> | void>();
let exiting = false;

/** Run `fn` if the CLI is interrupted; returns a function that cancels it (call it once the work is done). */
export function onInterrupt(fn: () => Promise<void> | void): () => void {
  tasks.add(fn);
  return () => tasks.delete(fn);
}

/** Run every pending cleanup (at most 10 s), then exit with `code`. */
export async function exitNow(code: number): Promise<never> {
  if (!exiting) {
    exiting = true;
    const all = Promise.allSettled([...tasks].map(async (t) => t()));
    await Promise.race([all, new Promise((r) => setTimeout(r, 10_000).unref())]);
    await removeOwnTemps();
  }
  process.exit(code);
}

async function removeOwnTemps(): Promise<void> {
  try {
    // loaded here, not at start-up: most commands never need the state store
    const { endOp, listOps } = await import("../state/journal.js");
    const { StateStore } = await import("../state/store.js");
    const store = StateStore.open();
    for (const op of listOps(store)) {
      if (op.kind !== "temp" || op.pid !== process.pid || !op.path) continue;
      rmSync(op.path, { recursive: true, force: true });
      endOp(store, op.id);
    }
  } catch {
    // no state store: nothing was recorded
  }
}

/** Exit codes of a shell for a process ended by a signal. */
export function installSignalHandlers(): void {
  for (const [sig, n] of [
    ["SIGINT", 2],
    ["SIGTERM", 15],
    ["SIGHUP", 1],
  ] as const) {
    process.on(sig, () => {
      void exitNow(128 + n);
    });
  }
}
