/**
 * A VM's running state seen from the facade: its agent connection (opened on first use, through a reconcile when
 * its proxy died), freezing and continuing its vCPUs, and the pool's hand-out (a paused VM resumed as a new
 * sandbox). The facade (smolvm.ts) hands in what it knows of the VM (`VmControl`).
 */
import { AgentClient } from "../agent/client.js";
import type { Backend } from "../backends/types.js";
import { howToRun, VMDiedError, VMNotFoundError, VMStateError } from "../errors.js";
import { reconcileVm } from "../state/reconcile.js";
import type { StateStore, VMRecord, VMStatus } from "../state/store.js";
import { trace } from "../util/trace.js";
import { resyncGuest, syncClock } from "./snapshots.js";

/** One VM as the facade sees it: its record, status, backend and agent connection. */
export interface VmControl {
  vmId: string;
  store: StateStore;
  driver: Backend;
  refresh(): VMRecord | null;
  status(): VMStatus;
  agent(): Promise<AgentClient>;
  /** The open agent connection, if any, and a way to set it. */
  client(): AgentClient | null;
  setClient(c: AgentClient): void;
  endReason(): Promise<string | null>;
}

/** A new connection to the VM's agent (through its proxy); a dead proxy is restarted by a reconcile first. */
export async function openAgent(v: VmControl): Promise<AgentClient> {
  const rec = v.refresh();
  if (!rec) throw new VMNotFoundError(v.vmId);
  const status = v.status();
  if (status !== "running" || !rec.handle) {
    throw new VMStateError(`VM ${v.vmId} is ${status}; ${howToRun(v.vmId, status, await v.endReason())}`);
  }
  try {
    return await AgentClient.connect(v.driver.agentChannel(rec.handle));
  } catch (e) {
    // its proxy may have died: reconcile restarts it (or, if the guest broke the protocol, ends the VM)
    const after = await reconcileVm(v.store, rec);
    v.refresh();
    if (after.status !== "running" || !after.handle || after.handle === rec.handle) {
      const why = after.error ? ` (${after.error})` : "";
      throw new VMDiedError(`cannot reach the agent of VM ${v.vmId}: ${(e as Error).message}${why}`);
    }
    return await AgentClient.connect(v.driver.agentChannel(after.handle));
  }
}

/** Freeze the VM's vCPUs. `resumeSoon`: see `Backend.pause` (a pool VM waiting to be handed out). */
export async function pauseVm(v: VmControl, opts: { resumeSoon?: boolean } = {}): Promise<void> {
  const rec = v.refresh();
  if (v.status() === "paused") return;
  if (!rec?.handle || v.status() !== "running") {
    throw new VMStateError(
      `VM ${v.vmId} is ${v.status()}: only a running VM can be paused; ${howToRun(v.vmId, v.status(), await v.endReason())}`,
    );
  }
  await v.driver.pause(rec.handle, opts);
  v.store.update(rec.id, { status: "paused" });
  v.refresh();
}

export async function resumeVm(v: VmControl): Promise<void> {
  const rec = v.refresh();
  if (v.status() === "running") return;
  if (!rec?.handle || v.status() !== "paused") {
    throw new VMStateError(
      `VM ${v.vmId} is ${v.status()}, not paused; ${howToRun(v.vmId, v.status(), await v.endReason())}`,
    );
  }
  await v.driver.resume(rec.handle);
  v.store.update(rec.id, { status: "running" });
  v.refresh();
  await syncClock(await v.agent()); // its clock stood still while paused; the proxy's next sync is up to 30 s off
}

/**
 * Resume a paused VM as a new sandbox (the pool's hand-out): its resync (hostname, clock) is queued on the agent
 * channel before its vCPUs continue, so both cost one round trip, and the agent has done it before it reads any
 * later request. No new entropy: a pool VM reseeded at its own start, and its random state was never copied. Its
 * record gets `update` while the resume is under way (a VM whose resume fails is deleted by the pool).
 */
export async function resumeAs(v: VmControl, hostname: string, update: Partial<VMRecord>): Promise<void> {
  const rec = v.refresh();
  // (a VMM that died meanwhile fails the resume below: the pool deletes the VM and hands out the next)
  if (!rec?.handle || rec.status !== "paused") throw new VMStateError(`VM ${v.vmId} is ${v.status()}, not paused`);
  let client = v.client();
  if (!client || client.closed) {
    client = await AgentClient.connect(v.driver.agentChannel(rec.handle));
    v.setClient(client);
  }
  const synced = resyncGuest(client, hostname, { entropy: false });
  synced.catch(() => {}); // awaited below, unless the resume fails first
  trace("pool: resync queued");
  const resumed = v.driver.resume(rec.handle);
  // written while QEMU works on the resume: a resume that fails ends this VM (the pool deletes it)
  v.store.update(rec.id, { ...update, status: "running" });
  v.refresh();
  trace("pool: record updated");
  await resumed;
  trace("pool: cont answered");
  await synced;
}
