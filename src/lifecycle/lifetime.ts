/**
 * Ending VMs whose lease ended (see lease.ts): called by the VM's supervisor through `smolvm _expire`, and by
 * reconcile for VMs made for a process that is gone and that no supervisor watches any more (they had stopped).
 */
import { existsSync } from "node:fs";
import { LIFETIME_MS, lifetimeOf } from "../config.js";
import { ConfigError, VMStateError } from "../errors.js";
import { backendFor } from "../state/reconcile.js";
import type { StateStore, VMRecord } from "../state/store.js";
import { type Lease, leasePath, ownerAlive, readLease, writeLease } from "./lease.js";
import { deleteVm } from "./teardown.js";

export type ExpireOutcome = "deleted" | "paused" | "unchanged" | "gone";

/**
 * End VM `vmId` if its lease says so now: `owner` (its owner process is gone: deleted) or `timeout` (its lifetime
 * passed: deleted or paused). The lease is read again first: a lifetime extended meanwhile keeps the VM.
 */
export async function expireVm(store: StateStore, vmId: string, reason: "timeout" | "owner"): Promise<ExpireOutcome> {
  const rec = store.getById(vmId);
  if (!rec) return "gone";
  const lease = readLease(rec.vmDir);
  if (!lease) return "unchanged";
  if (reason === "owner") {
    if (!lease.owner || ownerAlive(lease.owner)) return "unchanged";
    await deleteVm(store, rec);
    return "deleted";
  }
  if (!lease.expiresAt || lease.expiresAt > Date.now()) return "unchanged";
  if (lease.action === "delete") {
    await deleteVm(store, rec);
    return "deleted";
  }
  if (rec.status === "running" && rec.handle) {
    await backendFor(rec.backend).pause(rec.handle);
    store.update(rec.id, { status: "paused" });
  }
  writeLease(rec.vmDir, { ...lease, expiresAt: null }); // paused for good: `resume` and `setTimeout` go on from here
  return "paused";
}

/** Give the running or paused VM `rec` a new lifetime of `ms` from now (null: none). Returns the new lease. */
export function setLifetime(rec: VMRecord, ms: number | null): Lease {
  if (ms !== null && (!Number.isInteger(ms) || ms < LIFETIME_MS[0] || ms > LIFETIME_MS[1])) {
    throw new ConfigError("timeoutMs", `must be a whole number of ms from ${LIFETIME_MS[0]} to ${LIFETIME_MS[1]}`);
  }
  if ((rec.status !== "running" && rec.status !== "paused") || !rec.handle) {
    throw new VMStateError(`VM ${rec.id} is ${rec.status}: a lifetime runs only while it runs (set one at start)`);
  }
  const l = lifetimeOf(rec.config);
  const cur = readLease(rec.vmDir) ?? { expiresAt: null, action: l.onTimeout, owner: null };
  const next = { ...cur, expiresAt: ms === null ? null : Date.now() + ms };
  writeLease(rec.vmDir, next);
  return next;
}

/**
 * Delete VMs made for one process (not kept) that no longer run, once that process is gone: their supervisor, which
 * would have done it, ended with them. Returns their ids.
 */
export async function reapOrphans(store: StateStore): Promise<string[]> {
  const reaped: string[] = [];
  for (const rec of store.list()) {
    if (rec.status === "running" || rec.status === "paused" || lifetimeOf(rec.config).keep) continue;
    if (!existsSync(leasePath(rec.vmDir))) continue; // never started: its creator's start is still under way
    const owner = readLease(rec.vmDir)?.owner;
    if (!owner || ownerAlive(owner)) continue;
    await deleteVm(store, rec);
    reaped.push(rec.id);
  }
  return reaped;
}
