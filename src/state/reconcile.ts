/** Bring the state store in line with reality: VMs whose process died are marked stopped and their resources freed. */

import { QemuBackend } from "../backends/qemu/backend.js";
import { getBackend } from "../backends/resolve.js";
import type { Backend, BackendKind } from "../backends/types.js";
import type { StateStore, VMRecord } from "./store.js";

function backendFor(kind: BackendKind): Backend {
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
  if (backend.isAlive(rec.handle)) return rec;
  await backend.kill(rec.handle); // frees the proxy, sockets and pid files
  store.update(rec.id, { status: "stopped", handle: null });
  return { ...rec, status: "stopped", handle: null };
}

/** Reconcile every VM; returns the ids that were found dead and marked stopped. */
export async function reconcile(store: StateStore): Promise<string[]> {
  const fixed: string[] = [];
  for (const rec of store.list()) {
    const after = await reconcileVm(store, rec);
    if (after !== rec) fixed.push(rec.id);
  }
  return fixed;
}
