/**
 * One builder at a time for something slow that many processes may want at once (a warm template: 20 parallel
 * creates of a new image must not boot 20 captures on a 2-core host). The lock is a file created with O_EXCL that
 * names its holder (pid and process start time); a holder that died is noticed and its lock taken over. Waiters
 * poll until the result exists or the lock is free.
 */
import { closeSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { processStart } from "../state/journal.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function holderAlive(lock: string): boolean {
  try {
    const [pid, start] = readFileSync(lock, "utf8").split(" ");
    const n = Number(pid);
    if (!Number.isInteger(n) || n <= 0) return false;
    const now = processStart(n);
    return now !== null && (start === undefined || start === "" || now === start);
  } catch {
    return false; // gone, or being written this instant: checked again on the next round
  }
}

/**
 * Run `build` unless `ready()` gives a result, holding `lock` while building. Others calling this with the same
 * lock wait for the holder's result instead of building too.
 */
export async function buildOnce<T>(
  lock: string,
  ready: () => T | null,
  build: () => Promise<T>,
  opts: { waitMs?: number; onWait?: () => void } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.waitMs ?? 15 * 60_000);
  let told = false;
  for (;;) {
    const have = ready();
    if (have !== null) return have;
    let fd: number | null = null;
    try {
      fd = openSync(lock, "wx", 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    if (fd !== null) {
      try {
        writeSync(fd, `${process.pid} ${processStart(process.pid) ?? ""}`);
        closeSync(fd);
        const again = ready(); // finished by the previous holder just before we took the lock
        return again !== null ? again : await build();
      } finally {
        rmSync(lock, { force: true });
      }
    }
    if (!holderAlive(lock)) {
      await sleep(50); // a holder that has just created the file may not have written its pid yet
      if (!holderAlive(lock)) rmSync(lock, { force: true });
      continue;
    }
    if (!told) {
      opts.onWait?.();
      told = true;
    }
    if (Date.now() > deadline) return build(); // a holder stuck for this long: build on our own
    await sleep(200);
  }
}
