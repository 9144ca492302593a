/** Snapshot records, integrity checks, deletion rules, and the resync a restored guest needs. */
import { randomBytes } from "node:crypto";
import { existsSync, rmSync, statSync } from "node:fs";
import { resolve } from "node:path";
import type { AgentClient } from "../agent/client.js";
import { T } from "../agent/codec.js";
import type { AccelName } from "../config.js";
import { ConfigError, SmolVMError } from "../errors.js";
import { abandoned, listOps } from "../state/journal.js";
import type { SnapshotRecord, StateStore, VMRecord } from "../state/store.js";

export interface SnapshotInfo {
  id: string;
  name: string | null;
  /** The VM it was taken from (which may since have been deleted). */
  vmId: string;
  createdAt: string;
  /** Memory state plus the snapshot's own disk layer, in bytes. */
  sizeBytes: number;
  backend: string;
  /** The snapshot this one's disk layer sits on, if any. */
  parentId: string | null;
  /** Made for one command (fork, pack): no memory once it ended; deleted with the last VM or snapshot on it. */
  temporary: boolean;
}

/** What a VMM start needs beyond the VM's config: where its kernel and disk come from, and a restore source. */
/** A disk file's format, by its name: snapshot and template layers are `disk.qcow2` (QEMU) or `disk.raw` (Firecracker). */
export const diskFormatOf = (path: string): "raw" | "qcow2" => (path.endsWith(".qcow2") ? "qcow2" : "raw");

export interface LaunchPlan {
  kernelPath: string;
  initrdPath: string;
  /** Hostname on the kernel command line (a restore keeps the snapshot's, then sets its own). */
  hostname: string;
  bootArgs: string;
  diskBase: string;
  diskBaseFormat: "raw" | "qcow2";
  accel: AccelName;
  agentBinary: string;
  /** Restore from this device-state file (RAM from `ram`, mapped privately) instead of booting. */
  incoming?: string;
  ram?: string;
  /** The state file was saved without the (shared) RAM block: tell the VMM so (QEMU's x-ignore-shared). */
  ignoreShared?: boolean;
  snapshotId?: string;
  /** The state being restored has a network device (so the VM needs one, if only an unconnected one). */
  nicInState?: boolean;
  /** The network configuration the restored guest already has (guestNetKey), if known: it is not sent again. */
  guestNet?: string;
  from?: "boot" | "warm" | "snapshot";
  /** The console log of the guest whose state is restored (its boot), shown above the restored VM's own. */
  consoleFrom?: string;
}

export class SnapshotNotFoundError extends SmolVMError {
  constructor(readonly snapshotId: string) {
    super(`snapshot not found: ${snapshotId}`);
  }
}

export class SnapshotInUseError extends SmolVMError {
  constructor(
    readonly snapshotId: string,
    /** Ids of the VMs and snapshots layered on it (directly, or for VMs with `--recursive`, anywhere below). */
    readonly users: { vms: string[]; snapshots: string[] },
    message: string,
  ) {
    super(message);
  }
}

/** Snapshot names: like VM names, and never of the shape of a snapshot id (so an id always means one snapshot). */
export function checkSnapshotName(name: unknown): void {
  if (typeof name !== "string" || !/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) {
    throw new ConfigError("name", "must be 1-63 lowercase letters, digits, dots, dashes or underscores");
  }
  if (/^snap-[0-9a-f]{10}$/.test(name)) {
    throw new ConfigError("name", `${JSON.stringify(name)} looks like a snapshot id (snap-xxxxxxxxxx); choose another`);
  }
}

export function newSnapshotId(): string {
  return `snap-${randomBytes(5).toString("hex")}`;
}

export function snapshotInfo(s: SnapshotRecord): SnapshotInfo {
  return {
    id: s.id,
    name: s.name,
    vmId: s.vmId,
    createdAt: s.createdAt,
    sizeBytes: s.sizeBytes,
    backend: s.backend,
    parentId: s.parentId,
    temporary: s.temporary,
  };
}

/** Refuse a snapshot whose files are missing or truncated before anything starts, naming the file. */
export function checkSnapshotFiles(s: SnapshotRecord): void {
  if (s.memBytes < 0) {
    const why = s.temporary
      ? "it was made for a fork or pack, and its memory deleted when that ended"
      : "its memory was not saved";
    throw new SmolVMError(`snapshot ${s.id} holds a disk layer only (${why})`);
  }
  for (const f of [s.memFile, s.diskFile]) {
    if (!existsSync(f)) throw new SmolVMError(`snapshot ${s.id} is damaged: ${f} is missing`);
  }
  const size = statSync(s.memFile).size;
  if (size !== s.memBytes) {
    throw new SmolVMError(
      `snapshot ${s.id} is damaged: ${s.memFile} has ${size} bytes, ${s.memBytes} were written (truncated or replaced)`,
    );
  }
}

const vmLabel = (v: VMRecord) => (v.name ? `${v.name} (${v.id})` : v.id);
const snapLabel = (s: SnapshotRecord) =>
  `${s.name ? `${s.name} (${s.id})` : s.id}${s.temporary ? " (temporary: made by a fork or pack)" : ""}`;

/**
 * Delete a snapshot; with `recursive`, the snapshots built on it too (depth first). Refused, naming them, while VMs
 * or (without `recursive`) snapshots are layered on it: deleting it would lose their data, and a VM is only ever
 * deleted explicitly. Temporary snapshots it leaves unused go as well. Returns the ids deleted, in order.
 */
export function deleteSnapshot(store: StateStore, idOrName: string, opts: { recursive?: boolean } = {}): string[] {
  const s = store.getSnapshot(idOrName);
  if (!s) throw new SnapshotNotFoundError(idOrName);
  const snaps = store.listSnapshots();
  const vms = store.list();
  const label = s.name ? `${s.name} (${s.id})` : s.id;
  const childVms = vms.filter((v) => v.snapshotId === s.id);
  const childSnaps = snaps.filter((c) => c.parentId === s.id);
  // the snapshots below it, children before parents, and every VM on any of them
  const order: SnapshotRecord[] = [];
  const seen = new Set<string>();
  const visit = (x: SnapshotRecord) => {
    if (seen.has(x.id)) return;
    seen.add(x.id);
    for (const c of snaps) if (c.parentId === x.id) visit(c);
    order.push(x);
  };
  visit(s);
  const vmsBelow = vms.filter((v) => v.snapshotId !== null && seen.has(v.snapshotId));
  const rmVms = (list: VMRecord[]) => `'smolvm rm ${list.map((v) => v.name ?? v.id).join(" ")}'`;
  if (opts.recursive && vmsBelow.length) {
    throw new SnapshotInUseError(
      s.id,
      { vms: vmsBelow.map((v) => v.id), snapshots: [] },
      `snapshot ${label} is still used by ${vmsBelow.map((v) => `VM ${vmLabel(v)}`).join(", ")} (their disks are ` +
        `layered on it or on a snapshot built on it): --recursive never deletes VMs; delete them first (${rmVms(vmsBelow)})`,
    );
  }
  if (!opts.recursive && (childVms.length || childSnaps.length)) {
    const who = [...childVms.map((v) => `VM ${vmLabel(v)}`), ...childSnaps.map((c) => `snapshot ${snapLabel(c)}`)];
    const how = [
      ...(vmsBelow.length ? [`delete the VMs first (${rmVms(vmsBelow)})`] : []),
      ...(childSnaps.length
        ? [`'smolvm snapshot rm --recursive ${s.name ?? s.id}' deletes it with the snapshots built on it`]
        : []),
    ];
    throw new SnapshotInUseError(
      s.id,
      { vms: childVms.map((v) => v.id), snapshots: childSnaps.map((c) => c.id) },
      `snapshot ${label} is still used by ${who.join(", ")} (their disks are layered on it): ${how.join("; then ")}`,
    );
  }
  const deleted: string[] = [];
  for (const x of order) {
    store.deleteSnapshot(x.id);
    rmSync(x.dir, { recursive: true, force: true });
    deleted.push(x.id);
  }
  return [...deleted, ...collectTemporary(store, s.parentId)];
}

/** Whether an operation under way (of a live process) works in `dir`: a snapshot being taken, a fork, a pack. */
export function heldByOp(store: StateStore, dir: string): boolean {
  const d = resolve(dir);
  return listOps(store).some(
    (op) => op.path !== null && (resolve(op.path) === d || resolve(op.path).startsWith(`${d}/`)) && !abandoned(op),
  );
}

/**
 * Delete the temporary snapshot `id` if nothing is layered on it any more (no VM, no snapshot, no command under
 * way), then its parent the same way, and so on down the chain. Returns the ids deleted.
 */
export function collectTemporary(store: StateStore, id: string | null): string[] {
  const out: string[] = [];
  for (let cur = id; cur !== null && out.length < 1000; ) {
    const s = store.getSnapshot(cur);
    if (!s || s.id !== cur || !s.temporary) break;
    const u = store.snapshotUsers(s.id);
    if (u.vms.length || u.snapshots.length || heldByOp(store, s.dir)) break;
    store.deleteSnapshot(s.id);
    rmSync(s.dir, { recursive: true, force: true });
    out.push(s.id);
    cur = s.parentId;
  }
  return out;
}

/** After a restore: the host's wall clock, 64 bytes of fresh entropy (and a reseed), the clone's own hostname. */
/** Set the guest's clock to the host's (after a pause: the guest's stood still or jumped meanwhile). */
export async function syncClock(client: AgentClient): Promise<void> {
  const ns = Buffer.alloc(8);
  ns.writeBigUInt64BE(BigInt(Date.now()) * 1_000_000n);
  await client.op(T.SYNC, [[1, ns]]).done;
}

/**
 * A restored guest's new identity: the host's clock, `hostname`, and (unless `entropy: false`: a guest whose random
 * state was never copied since its last reseed) 64 fresh random bytes its kernel reseeds from.
 */
export async function resyncGuest(client: AgentClient, hostname: string, opts: { entropy?: boolean } = {}) {
  const ns = Buffer.alloc(8);
  ns.writeBigUInt64BE(BigInt(Date.now()) * 1_000_000n);
  const fields: [number, Buffer | string][] = [[1, ns]];
  if (opts.entropy !== false) fields.push([2, randomBytes(64)]);
  fields.push([3, hostname.slice(0, 63)]);
  await client.op(T.SYNC, fields).done;
}
