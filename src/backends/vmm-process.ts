/** What every backend does with the processes of a VM it started through the agent's `launch`: the same for all. */
import { existsSync, readFileSync } from "node:fs";
import { killAndWait, unreapedChild, waitFor } from "../util/proc.js";
import { removeCgroups } from "./cgroups.js";
import type { VMHandle } from "./types.js";

/** A pid file's pid, or null. */
export function readPid(file: string): number | null {
  try {
    const n = Number.parseInt(readFileSync(file, "utf8").trim(), 10);
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

/**
 * End the VMM (`marker`: what its command line holds, against pid reuse) and the proxy, and remove the VM's cgroups.
 * The VMM's supervisor writes its exit status a moment later, into the VM's folder: that is waited for, so that a
 * delete right after this does not race with the write. That holds too for a VMM that died before this call (killed
 * from outside, crashed) but that its supervisor has not reaped yet. A cgroup holding a dying process is retried
 * briefly.
 */
export async function endVmmProcesses(h: VMHandle, marker: string, wasAlive: boolean): Promise<void> {
  await killAndWait(h.pid, marker);
  const supervised = wasAlive || unreapedChild(h.pid);
  if (supervised && h.statusPath) await waitFor(() => existsSync(h.statusPath as string), 1000);
  await killAndWait(h.proxyPid, h.agentSocket);
  await waitFor(() => {
    removeCgroups(h.cgroups);
    return (h.cgroups ?? []).every((d) => !existsSync(d));
  }, 2000);
}
