/** Snapshot records, integrity checks, deletion rules, and the resync a restored guest needs. */
import { randomBytes } from "node:crypto";
import { existsSync, rmSync, statSync } from "node:fs";
import type { AgentClient } from "../agent/client.js";
import { T } from "../agent/codec.js";
import type { AccelName } from "../config.js";
import { ConfigError, SmolVMError } from "../errors.js";
import type { SnapshotRecord, StateStore } from "../state/store.js";

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
}

/** What a VMM start needs beyond the VM's config: where its kernel and disk come from, and a restore source. */
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
}

export class SnapshotNotFoundError extends SmolVMError {
  constructor(readonly snapshotId: string) {
    super(`snapshot not found: ${snapshotId}`);
  }
}

export class SnapshotInUseError extends SmolVMError {
  constructor(
    readonly snapshotId: string,
    readonly users: { vms: string[]; snapshots: string[] },
  ) {
    const who = [...users.vms.map((v) => `VM ${v}`), ...users.snapshots.map((s) => `snapshot ${s}`)].join(", ");
    super(`snapshot ${snapshotId} is still used by ${who}: delete those first (their disks are layered on it)`);
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
  };
}

/** Refuse a snapshot whose files are missing or truncated before anything starts, naming the file. */
export function checkSnapshotFiles(s: SnapshotRecord): void {
  if (s.memBytes < 0) throw new SmolVMError(`snapshot ${s.id} holds a disk layer only (its memory was not saved)`);
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

export function deleteSnapshot(store: StateStore, idOrName: string): void {
  const s = store.getSnapshot(idOrName);
  if (!s) throw new SnapshotNotFoundError(idOrName);
  const users = store.snapshotUsers(s.id);
  if (users.vms.length || users.snapshots.length) throw new SnapshotInUseError(s.id, users);
  store.deleteSnapshot(s.id);
  rmSync(s.dir, { recursive: true, force: true });
}

/** After a restore: the host's wall clock, 64 bytes of fresh entropy (and a reseed), the clone's own hostname. */
export async function resyncGuest(client: AgentClient, hostname: string): Promise<void> {
  const ns = Buffer.alloc(8);
  ns.writeBigUInt64BE(BigInt(Date.now()) * 1_000_000n);
  await client.op(T.SYNC, [
    [1, ns],
    [2, randomBytes(64)],
    [3, hostname.slice(0, 63)],
  ]).done;
}
