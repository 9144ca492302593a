/**
 * Finish or roll back what a killed process left half done (see state/journal.ts). Each abandoned op is claimed by
 * exactly one reconciling process.
 *   create   a VM that never finished starting: its processes (found through the pid files in its run dir) are
 *            killed and everything it had is removed; a restart of an existing VM leaves it stopped instead
 *   snapshot a snapshot that never got its record: if the VM already writes to the layer above it, it is kept as a
 *            disk-only snapshot (the VM's data depends on it), else removed; a VM left paused by it is resumed
 *   delete   finished
 *   temp     removed
 */
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { existingVmCgroups, removeCgroups } from "../backends/cgroups.js";
import { vmRunDir } from "../paths.js";
import { collectTemporary } from "../sandbox/snapshots.js";
import { abandoned, claimOp, listOps, type Op } from "../state/journal.js";
import { backendFor } from "../state/reconcile.js";
import type { StateStore, VMRecord } from "../state/store.js";
import { killAllMatching, killAndWait } from "../util/proc.js";

function readPid(file: string): number | null {
  try {
    const n = Number.parseInt(readFileSync(file, "utf8"), 10);
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

/** Kill whatever a VM's run dir says runs for it (the record may never have got a handle), free its cgroups. */
export async function killByRunDir(vmId: string, runDir: string): Promise<void> {
  await killAndWait(readPid(join(runDir, "qemu.pid")), `smolvm-${vmId}`);
  await killAndWait(readPid(join(runDir, "proxy.pid")), join(runDir, "agent.sock"));
  await killAllMatching(`${runDir}/`); // a launcher still waiting for a VMM whose pid was never recorded
  removeCgroups(existingVmCgroups(basename(runDir)));
  rmSync(runDir, { recursive: true, force: true });
}

async function removeVm(store: StateStore, rec: VMRecord): Promise<void> {
  if (rec.handle) await backendFor(rec.backend).kill(rec.handle);
  await killByRunDir(rec.id, vmRunDir(rec.id, store.dir));
  rmSync(rec.vmDir, { recursive: true, force: true });
  store.delete(rec.id);
  collectTemporary(store, rec.snapshotId);
}

async function recoverCreate(store: StateStore, op: Op): Promise<void> {
  const rec = op.vmId ? store.get(op.vmId) : null;
  if (!rec || rec.id !== op.vmId) return;
  const backend = backendFor(rec.backend);
  if (rec.status === "running" && rec.handle && backend.isAlive(rec.handle)) return; // it got far enough
  if (op.data.newRecord === true) {
    await removeVm(store, rec);
    return;
  }
  if (rec.handle) await backend.kill(rec.handle);
  await killByRunDir(rec.id, vmRunDir(rec.id, store.dir));
  store.update(rec.id, { status: "stopped", handle: null, error: "its start was interrupted" });
}

async function recoverSnapshot(store: StateStore, op: Op): Promise<void> {
  const rec = op.vmId ? store.get(op.vmId) : null;
  const snapId = String(op.data.snapshotId ?? "");
  const dir = op.path;
  if (rec?.handle && rec.status === "running") {
    const backend = backendFor(rec.backend);
    if (backend.isAlive(rec.handle)) await backend.resume(rec.handle).catch(() => {}); // it was paused to save it
  }
  if (!dir || store.getSnapshot(snapId)) return;
  const layer = join(dir, "disk.qcow2");
  const switched = rec && existsSync(layer) && rec.diskPath !== op.data.prevDisk;
  if (rec && switched) {
    // the VM writes to a layer above this one: keep it, as a snapshot without memory, so nothing deletes it
    store.insertSnapshot({
      id: snapId,
      name: null,
      vmId: rec.id,
      backend: rec.backend,
      config: rec.config,
      boot: rec.handle?.boot ?? { kernelPath: "", initrdPath: "", hostname: rec.id, bootArgs: "" },
      accel: rec.handle?.accel ?? "tcg",
      dir,
      memFile: join(dir, "mem.bin"),
      diskFile: layer,
      memBytes: -1,
      sizeBytes: statSync(layer).size,
      parentId: rec.snapshotId,
      temporary: true, // nobody got it: it goes with the last VM or snapshot on it
    });
    store.update(rec.id, { snapshotId: snapId });
    for (const f of readdirSync(dir)) if (f !== "disk.qcow2") rmSync(join(dir, f), { recursive: true, force: true });
    return;
  }
  rmSync(dir, { recursive: true, force: true });
  // the new top layer made for the switch, if it was made, is used by nobody
  const next = typeof op.data.nextDisk === "string" ? op.data.nextDisk : null;
  if (next && rec?.diskPath !== next) rmSync(next, { force: true });
}

export async function recoverInterrupted(store: StateStore): Promise<number> {
  let n = 0;
  for (const op of listOps(store)) {
    if (!abandoned(op) || !claimOp(store, op.id)) continue;
    n++;
    if (op.kind === "temp" && op.path) {
      const { vmId, runDir } = op.data;
      if (typeof vmId === "string" && typeof runDir === "string") await killByRunDir(vmId, runDir);
      rmSync(op.path, { recursive: true, force: true });
    } else if (op.kind === "create") await recoverCreate(store, op);
    else if (op.kind === "snapshot") await recoverSnapshot(store, op);
    else if (op.kind === "delete" && op.vmId) {
      const rec = store.get(op.vmId);
      if (rec && rec.id === op.vmId) await removeVm(store, rec);
    }
  }
  return n;
}
