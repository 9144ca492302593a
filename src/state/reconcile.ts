/**
 * Bring the state store in line with reality:
 *   - a VM whose VMM died is marked stopped (the guest powered off) or crashed, with the reason (panic, kill, exit,
 *     a guest that broke the protocol), and its proxy, sockets, cgroups and pid files are freed;
 *   - a VM whose VMM runs but whose proxy died gets a new proxy, unless the proxy ended because the guest broke
 *     the protocol: then the VM is stopped and marked crashed (a guest that sends garbage gets no other go);
 *   - work that a killed process left half done (the journal) is finished or rolled back;
 *   - VMs made for one process (not `keep`) that no longer run are deleted once that process is gone.
 */

import { existsSync } from "node:fs";
import { QemuBackend } from "../backends/qemu/backend.js";
import { getBackend } from "../backends/resolve.js";
import type { Backend, BackendKind } from "../backends/types.js";
import { describeEnd } from "../lifecycle/exit-reason.js";
import { reapOrphans } from "../lifecycle/lifetime.js";
import { recoverInterrupted } from "../lifecycle/recover.js";
import { reconcileNetwork } from "../network/index.js";
import { vmRunDir } from "../paths.js";
import { waitFor } from "../util/proc.js";
import type { StateStore, VMRecord } from "./store.js";

export function backendFor(kind: BackendKind): Backend {
  try {
    return getBackend(kind);
  } catch {
    return new QemuBackend(); // kill() only signals pids and removes files, which any backend's handle allows
  }
}

/** Reconcile one record; returns the (possibly updated) record. */
export async function reconcileVm(store: StateStore, rec: VMRecord): Promise<VMRecord> {
  if ((rec.status !== "running" && rec.status !== "paused") || !rec.handle) return rec;
  const backend = backendFor(rec.backend);
  const h = rec.handle;
  if (backend.isAlive(h)) {
    if (backend.proxyAlive(h)) return rec;
    const info = backend.exitInfo(h);
    if (info?.reason !== "guest-protocol") {
      try {
        const handle = await backend.restartProxy(h);
        store.update(rec.id, { handle });
        return { ...rec, handle };
      } catch {
        // fall through: a VM nobody can reach is no use running
      }
    }
    await backend.kill(h);
    const end = describeEnd(info, h.consoleLog);
    store.update(rec.id, { status: "crashed", handle: null, error: end.reason });
    return { ...rec, status: "crashed", handle: null, error: end.reason };
  }
  // the VMM's supervisor writes its exit status a moment after the VMM is gone
  if (h.statusPath) await waitFor(() => existsSync(h.statusPath as string), 1000);
  const end = describeEnd(backend.exitInfo(h), h.consoleLog);
  await backend.kill(h); // frees the proxy, sockets, cgroups and pid files
  store.update(rec.id, { status: end.status, handle: null, error: end.reason });
  return { ...rec, status: end.status, handle: null, error: end.reason };
}

/** Reconcile every VM; returns the ids whose record changed. */
export async function reconcile(store: StateStore): Promise<string[]> {
  await recoverInterrupted(store);
  const fixed: string[] = [];
  for (const rec of store.list()) {
    const after = await reconcileVm(store, rec);
    if (after !== rec) fixed.push(rec.id);
  }
  for (const id of await reconcileNetwork(store, (vmId) => vmRunDir(vmId, store.dir))) {
    if (!fixed.includes(id)) fixed.push(id);
  }
  // VMs made for one process, stopped since, whose process is gone (their supervisor would have deleted them)
  for (const id of await reapOrphans(store)) if (!fixed.includes(id)) fixed.push(id);
  return fixed;
}
