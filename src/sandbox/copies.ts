/**
 * New VMs that start from saved state rather than an image: a snapshot (`SmolVM.fromSnapshot`, and each clone of
 * `fork`, started here) or a `.smolmachine` file (`SmolVM.fromPack`). Each gets a new identity and its own disk layer; a VM
 * whose start fails is deleted again, so nothing is left behind.
 */

import type { Backend } from "../backends/types.js";
import { labelsOf, type VMConfig } from "../config.js";
import { ensureAgent } from "../images/agent-build.js";
import { readPackManifest } from "../images/pack.js";
import { type SnapshotRecord, StateStore } from "../state/store.js";
import { packPlan } from "./packs.js";
import type { SmolVM } from "./smolvm.js";
import { checkSnapshotFiles, type LaunchPlan, SnapshotNotFoundError } from "./snapshots.js";
import { snapshotPlan } from "./templates.js";

/** A new VM's lifetime settings, as `VMConfig` has them (see there). */
export type Lifetime = Pick<VMConfig, "timeoutMs" | "onTimeout" | "keep">;
export const lifetimeFrom = (o: Lifetime): Lifetime => ({
  timeoutMs: o.timeoutMs,
  onTimeout: o.onTimeout,
  keep: o.keep,
});

export type FromSnapshotOptions = { vmId?: string; name?: string; network?: VMConfig["network"] } & Lifetime;

export type FromPackOptions = {
  vmId?: string;
  name?: string;
  notice?: (m: string) => void;
  /** Restore the pack's memory state even though this host did not sign it (it is a migration stream: only trust
   * packs from people you trust). Without it, an unsigned pack's memory is ignored and its disk cold-booted. */
  trust?: boolean;
  /** The new VM's network (default none; a pack never brings its own host's network settings). */
  network?: VMConfig["network"];
} & Lifetime;

/** Launch `vm` from `plan` (made once the VM exists); a failed start deletes it. */
async function launchOrDelete(vm: SmolVM, plan: (vm: SmolVM) => Promise<LaunchPlan>, t0: number): Promise<SmolVM> {
  try {
    await vm.launch(await plan(vm), {}, t0);
  } catch (e) {
    await vm.delete();
    throw e;
  }
  return vm;
}

export async function restoreSnapshot(
  make: (c: VMConfig) => SmolVM,
  idOrName: string,
  opts: FromSnapshotOptions,
): Promise<SmolVM> {
  const t0 = performance.now();
  const snap = StateStore.open().getSnapshot(idOrName);
  if (!snap) throw new SnapshotNotFoundError(idOrName);
  checkSnapshotFiles(snap);
  const c = snap.config;
  const vm = make({
    vmId: opts.vmId,
    name: opts.name,
    backend: snap.backend,
    vcpuCount: c.vcpuCount,
    memSizeMib: c.memSizeMib,
    env: c.env,
    labels: labelsOf(c),
    bootArgs: c.bootArgs,
    network: opts.network ?? c.network, // a clone gets its own address, MAC and lease, with the same policy
    ...lifetimeFrom(opts),
  });
  // the image it came from: its run defaults and what `image rm` must know uses it
  Object.assign(vm.config, { image: c.image ?? null, diskSizeMib: c.diskSizeMib ?? null, imageInfo: c.imageInfo });
  return launchOrDelete(vm, async (v) => snapshotPlan(v.driver(), snap, await ensureAgent()), t0);
}

export async function restorePack(make: (c: VMConfig) => SmolVM, file: string, opts: FromPackOptions): Promise<SmolVM> {
  const t0 = performance.now();
  const { manifest } = readPackManifest(file);
  const vm = make({
    vmId: opts.vmId,
    name: opts.name,
    vcpuCount: manifest.config.vcpuCount,
    memSizeMib: manifest.config.memSizeMib,
    env: manifest.config.env,
    labels: manifest.config.labels,
    bootArgs: manifest.config.bootArgs,
    network: opts.network,
    ...lifetimeFrom(opts),
  });
  const img = manifest.config.image;
  // the image's run defaults come along; its store id does not (the pack carries its whole disk)
  if (img) Object.assign(vm.config, { image: img.ref, imageInfo: { id: "", ...img } });
  return launchOrDelete(
    vm,
    async (v) => {
      const { plan } = await packPlan(
        file,
        StateStore.open(),
        v.driver(),
        await ensureAgent(),
        opts.notice ?? ((m) => process.stderr.write(`${m}\n`)),
        { trust: opts.trust === true },
      );
      if (plan.from === "boot") plan.hostname = v.config.name ?? v.vmId;
      return plan;
    },
    t0,
  );
}

/** `count` clones of the snapshot `snap` (a fork's), 4 starting at a time; if one fails, the others are deleted. */
export async function forkClones(
  backend: Backend,
  snap: SnapshotRecord,
  count: number,
  restore: (snapshotId: string) => Promise<SmolVM>,
): Promise<SmolVM[]> {
  // a snapshot kept as a full state file is converted once, before the clones start side by side
  await snapshotPlan(backend, snap, await ensureAgent());
  const clones: SmolVM[] = [];
  const failures: unknown[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(4, count) }, async () => {
      while (next < count) {
        next++;
        try {
          clones.push(await restore(snap.id));
        } catch (e) {
          failures.push(e);
        }
      }
    }),
  );
  if (failures.length) {
    for (const c of clones) await c.delete();
    throw failures[0];
  }
  return clones;
}
