/**
 * Taking a snapshot: memory, device state and disk together (the VM is paused for the duration, then left as it
 * was). The disk is not copied: the VM's current top layer becomes the snapshot's and the VM continues on a new one.
 * Journaled: a process killed half way leaves a VM that runs on, and a snapshot that is complete or absent (or kept
 * as a disk-only one when the VM already depends on its layer; see recover.ts).
 */
import { mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { Backend } from "../backends/types.js";
import { ConfigError, VMStateError } from "../errors.js";
import { CONSOLE_CARRIED, tailFile } from "../sandbox/console-log.js";
import { checkSnapshotName, newSnapshotId, type SnapshotInfo, snapshotInfo } from "../sandbox/snapshots.js";
import { type FastImage, readFast, splitToFast } from "../sandbox/templates.js";
import { beginOp, endOp } from "../state/journal.js";
import type { StateStore, VMRecord } from "../state/store.js";
import { trace } from "../util/trace.js";

export async function takeSnapshot(
  store: StateStore,
  backend: Backend,
  rec: VMRecord,
  /** `temporary`: made for one command (fork, pack); see lifecycle/temp-snapshot.ts. */
  opts: { name?: string; temporary?: boolean } = {},
): Promise<SnapshotInfo> {
  const handle = rec.handle;
  const diskPath = rec.diskPath;
  if (!handle || !diskPath) throw new VMStateError(`VM ${rec.id} is not running`);
  // an isolated disk is the VM's own: a qcow2 layer (QEMU) or a raw copy in its folder (Firecracker)
  const own = rec.diskFormat === "qcow2" || (rec.diskFormat === "raw" && dirname(diskPath) === rec.vmDir);
  if (!own) {
    throw new VMStateError(`VM ${rec.id} uses diskMode "shared"; snapshots need an isolated disk layer`);
  }
  if (opts.name !== undefined) checkSnapshotName(opts.name);
  if (opts.name !== undefined && store.getSnapshot(opts.name)) {
    throw new ConfigError("name", `${JSON.stringify(opts.name)} is already used by another snapshot`);
  }
  const id = newSnapshotId();
  const dir = join(store.dir, "snapshots", id);
  const op = beginOp(store, "snapshot", {
    vmId: rec.id,
    path: dir,
    data: { snapshotId: id, prevDisk: rec.diskPath },
  });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // the console so far, which VMs restored from it show above their own
  writeFileSync(join(dir, "console.log"), tailFile(join(rec.vmDir, "console.log"), CONSOLE_CARRIED), { mode: 0o600 });
  let switched = false;
  /** The snapshot's record; memBytes -1 marks a disk-only one (its memory was not saved). */
  const record = (
    memFile: string,
    diskFile: string,
    memBytes: number,
    name: string | null,
    temporary: boolean,
    ramBytes = 0,
  ) =>
    store.insertSnapshot({
      id,
      name,
      vmId: rec.id,
      backend: rec.backend,
      config: rec.config,
      boot: handle.boot,
      accel: handle.accel,
      dir,
      memFile,
      diskFile,
      memBytes,
      sizeBytes: Math.max(0, memBytes) + ramBytes + statSync(diskFile).size,
      parentId: rec.snapshotId,
      temporary,
    });
  try {
    const r = await backend.snapshot(handle, { path: diskPath, vmDir: rec.vmDir }, dir, false, (next) => {
      switched = true;
      store.update(rec.id, { diskPath: next }); // at once: the VM's data now lives in `next`
    });
    trace("snapshot: state saved, VM running again");
    // split now, with the VM running again: the snapshot then restores without loading RAM through the VMM,
    // and the full stream (a second copy of the RAM) need not be kept
    let memFile = r.memFile;
    let ramBytes = 0;
    try {
      const fastDir = join(dir, "fast");
      if (await splitToFast(backend, r.memFile, fastDir, rec.config.memSizeMib)) {
        const fast = readFast(fastDir) as FastImage;
        rmSync(r.memFile);
        memFile = fast.state;
        ramBytes = statSync(fast.ram).blocks * 512;
      }
    } catch {
      // keep the full stream; it is converted on first restore
    }
    trace("snapshot: split");
    const snap = record(
      memFile,
      r.diskFile,
      statSync(memFile).size,
      opts.name ?? null,
      opts.temporary === true,
      ramBytes,
    );
    store.update(rec.id, { diskPath: r.newDiskPath, snapshotId: id });
    return snapshotInfo(snap);
  } catch (e) {
    if (!switched) {
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    // The VM already runs on a layer over the snapshot's disk layer: that layer must stay. It is recorded as a
    // disk-only snapshot (not restorable: no memory) so nothing deletes it while the VM depends on it; temporary:
    // nobody asked for it, so it goes with the last VM or snapshot on it.
    const mem = join(dir, "mem.bin");
    const diskFile = join(dir, rec.diskFormat === "raw" ? "disk.raw" : "disk.qcow2");
    rmSync(mem, { force: true });
    if (!store.getSnapshot(id)) record(mem, diskFile, -1, null, true);
    store.update(rec.id, { snapshotId: id });
    throw e;
  } finally {
    endOp(store, op);
  }
}
