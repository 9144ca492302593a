/**
 * Ending a VM, in one place: a clean stop (the guest syncs its disks, then the VMM goes) and a delete (everything the
 * VM owns: VMM, proxy, network, exposed ports, disk layer, record). Both are idempotent, and a delete is journaled so
 * that one interrupted by a kill is finished by `reconcile`.
 */
import { readdirSync, rmSync } from "node:fs";
import type { AgentClient } from "../agent/client.js";
import type { Backend } from "../backends/types.js";
import { SmolVMError } from "../errors.js";
import { detachNetwork } from "../network/index.js";
import { closePorts } from "../network/ports.js";
import { vmRunDir } from "../paths.js";
import { collectTemporary } from "../sandbox/snapshots.js";
import { beginOp, endOp } from "../state/journal.js";
import { backendFor } from "../state/reconcile.js";
import type { StateStore, VMRecord } from "../state/store.js";
import { sleep } from "../util/proc.js";
import { killByRunDir } from "./recover.js";

/** Shut the guest down cleanly (disks synced), then make sure the VMM and its network are gone. */
export async function stopVm(
  store: StateStore,
  backend: Backend,
  rec: VMRecord,
  agent: () => Promise<AgentClient>,
  timeoutMs: number,
): Promise<void> {
  if (rec.handle) {
    const h = rec.handle;
    if (backend.isAlive(h)) {
      try {
        if (rec.status === "paused") {
          await backend.resume(h);
          store.update(rec.id, { status: "running" }); // or agent() would refuse the clean shutdown
        }
        // once the agent confirms its disk is synced and read-only, killing the VMM loses nothing
        await (await agent()).shutdown(timeoutMs);
      } catch {
        // fall through to kill
      }
    }
    await backend.kill(h);
  }
  await closePorts(store, rec.id);
  await detachNetwork(store, rec.id, vmRunDir(rec.id, store.dir));
  store.update(rec.id, { status: "stopped", handle: null });
}

/**
 * Remove a VM's folder: its private layer and console log (never the base image). Retried whole, listing it afresh
 * each time: a supervisor may write its VMM's exit status there for a moment after the VMM is gone, and `rmSync`'s
 * own retries only retry the last `rmdir`, never the file that appeared meanwhile.
 */
async function removeVmDir(dir: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      rmSync(dir, { recursive: true, force: true });
      return;
    } catch (e) {
      if (attempt < 5) {
        await sleep(50 * attempt);
        continue;
      }
      let left: string[] = [];
      try {
        left = readdirSync(dir);
      } catch {
        // gone meanwhile
      }
      throw new SmolVMError(
        `cannot remove ${dir} (still holds ${left.join(", ") || "nothing"}): ${(e as Error).message}`,
      );
    }
  }
}

/** Kill the VM and remove everything it owns. */
export async function deleteVm(store: StateStore, rec: VMRecord): Promise<void> {
  const op = beginOp(store, "delete", { vmId: rec.id });
  try {
    await closePorts(store, rec.id);
    const runDir = vmRunDir(rec.id, store.dir);
    if (rec.handle) await backendFor(rec.backend).kill(rec.handle);
    else await killByRunDir(rec.id, runDir); // a start that never recorded its handle
    await detachNetwork(store, rec.id, runDir);
    await removeVmDir(rec.vmDir);
    const base = store.getById(rec.id)?.snapshotId ?? rec.snapshotId; // a snapshot since may have moved it
    store.delete(rec.id);
    collectTemporary(store, base); // a fork's or pack's snapshot that only this VM still sat on
  } finally {
    endOp(store, op);
  }
}
