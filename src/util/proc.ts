import { readdirSync, readFileSync } from "node:fs";

/**
 * Whether `pid` is a live (not zombie) process whose command line contains `marker`. The marker guards against pid
 * reuse: a recycled pid that belongs to another program reads as dead.
 */
export function processAlive(pid: number | null | undefined, marker?: string): boolean {
  if (!pid || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    if (state === "Z" || state === "X") return false;
    if (marker) {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmdline.includes(marker)) return false;
    }
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether `pid` is a process that has ended but that its parent has not reaped yet, and that parent is not PID 1:
 * a supervisor that is about to see the end and act on it.
 */
export function unreapedChild(pid: number | null | undefined): boolean {
  if (!pid || pid <= 0) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return state === "Z" && Number(ppid) > 1;
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll until `pred` holds or `timeoutMs` passes; returns whether it held. */
export async function waitFor(pred: () => boolean, timeoutMs: number, stepMs = 5): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (pred()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(stepMs);
  }
}

/** SIGKILL a process (if it is still the one we mean) and wait until it is gone. */
export async function killAndWait(pid: number | null | undefined, marker: string, timeoutMs = 3000): Promise<void> {
  if (!processAlive(pid, marker)) return;
  try {
    process.kill(pid as number, "SIGKILL");
  } catch {
    return;
  }
  await waitFor(() => !processAlive(pid, marker), timeoutMs);
}

/**
 * SIGKILL every live process whose command line contains `marker` (e.g. a VM's run dir, which its VMM, the VMM's
 * supervisor and its proxy all name), and wait until they are gone. For cleaning up after a killed process that
 * never recorded their pids.
 */
export async function killAllMatching(marker: string, timeoutMs = 3000): Promise<number> {
  const victims: number[] = [];
  for (const name of readdirSync("/proc")) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker) && processAlive(pid)) {
        process.kill(pid, "SIGKILL");
        victims.push(pid);
      }
    } catch {
      // gone, or not ours to read
    }
  }
  await waitFor(() => victims.every((p) => !processAlive(p, marker)), timeoutMs);
  return victims.length;
}
