/**
 * SQLite state at `<state>/smolvm.db`. WAL mode and a busy timeout make it safe for several processes creating and
 * deleting VMs at once; migrations run inside an immediate transaction so two first-time processes cannot race.
 */
import { chmodSync, closeSync, mkdirSync, openSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { BackendKind, VMHandle } from "../backends/types.js";
import type { ResolvedVMConfig } from "../config.js";
import { ConfigError, SmolVMError } from "../errors.js";
import { stateDir } from "../paths.js";
import { MIGRATIONS } from "./migrations.js";

/**
 * created: not started yet; running; paused; stopped: shut down (asked to, or the guest powered off); crashed: its
 * VMM or guest died without being asked (`error` says why: a signal, an exit status, a kernel panic, a guest that
 * broke the protocol); error: a start that failed (`error` says why).
 */
export type VMStatus = "created" | "running" | "paused" | "stopped" | "crashed" | "error";

export interface VMRecord {
  id: string;
  name: string | null;
  backend: BackendKind;
  status: VMStatus;
  config: ResolvedVMConfig;
  handle: VMHandle | null;
  diskPath: string | null;
  diskFormat: "raw" | "qcow2" | null;
  vmDir: string;
  error: string | null;
  /** The snapshot whose disk layer backs this VM's disk (it cannot be deleted while the VM exists). */
  snapshotId: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface SnapshotRecord {
  id: string;
  name: string | null;
  vmId: string;
  backend: BackendKind;
  config: ResolvedVMConfig;
  boot: VMHandle["boot"];
  accel: string;
  dir: string;
  memFile: string;
  diskFile: string;
  memBytes: number;
  sizeBytes: number;
  /** The snapshot whose disk layer backs this one's. */
  parentId: string | null;
  /** Made for one command (fork, pack): deleted with the last VM or snapshot built on it. */
  temporary: boolean;
  createdAt: string;
}

interface Row {
  id: string;
  name: string | null;
  backend: string;
  status: string;
  config: string;
  handle: string | null;
  disk_path: string | null;
  disk_format: string | null;
  vm_dir: string;
  error: string | null;
  snapshot_id: string | null;
  created_at: string;
  updated_at: string;
}

function fromRow(r: Row): VMRecord {
  return {
    id: r.id,
    name: r.name,
    backend: r.backend as BackendKind,
    status: r.status as VMStatus,
    config: JSON.parse(r.config),
    handle: r.handle ? JSON.parse(r.handle) : null,
    diskPath: r.disk_path,
    diskFormat: r.disk_format as VMRecord["diskFormat"],
    vmDir: r.vm_dir,
    error: r.error,
    snapshotId: r.snapshot_id,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

interface SnapshotRow {
  id: string;
  name: string | null;
  vm_id: string;
  backend: string;
  config: string;
  boot: string;
  accel: string;
  dir: string;
  mem_file: string;
  disk_file: string;
  mem_bytes: number;
  size_bytes: number;
  parent_id: string | null;
  temporary: number;
  created_at: string;
}

function snapFromRow(r: SnapshotRow): SnapshotRecord {
  return {
    id: r.id,
    name: r.name,
    vmId: r.vm_id,
    backend: r.backend as BackendKind,
    config: JSON.parse(r.config),
    boot: JSON.parse(r.boot),
    accel: r.accel,
    dir: r.dir,
    memFile: r.mem_file,
    diskFile: r.disk_file,
    memBytes: r.mem_bytes,
    sizeBytes: r.size_bytes,
    parentId: r.parent_id,
    temporary: r.temporary === 1,
    createdAt: r.created_at,
  };
}

/**
 * The state dir holds secrets (env values in the database, guest memory in snapshots): it is ours alone, whatever
 * the umask or however it was created. A pre-existing folder of ours that others may read is tightened; the
 * database and its journal files are created 0600 (SQLite gives its -wal and -shm files the database's mode).
 */
function privateState(dir: string): void {
  const st = statSync(dir);
  const me = process.getuid?.();
  if (me !== undefined && st.uid !== me) {
    throw new SmolVMError(`state dir ${dir} belongs to uid ${st.uid}, not to this user (${me}): refusing to use it`);
  }
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  for (const f of ["smolvm.db", "smolvm.db-wal", "smolvm.db-shm"]) {
    const p = join(dir, f);
    if (f === "smolvm.db") closeSync(openSync(p, "a", 0o600));
    try {
      if ((statSync(p).mode & 0o077) !== 0) chmodSync(p, 0o600);
    } catch {
      // not created yet
    }
  }
}

const stores = new Map<string, StateStore>();

export class StateStore {
  readonly db: Database.Database;

  private constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    privateState(dir);
    this.db = new Database(join(dir, "smolvm.db"), { timeout: 10_000 });
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.pragma("foreign_keys = ON");
    this.migrate();
  }

  /** The store of the current state dir (one connection per process and folder). */
  static open(dir = stateDir()): StateStore {
    let s = stores.get(dir);
    if (!s) {
      s = new StateStore(dir);
      stores.set(dir, s);
    }
    return s;
  }

  get schemaVersion(): number {
    return this.db.pragma("user_version", { simple: true }) as number;
  }

  private migrate(): void {
    if (this.schemaVersion >= MIGRATIONS.length) return;
    this.db
      .transaction(() => {
        const v = this.schemaVersion; // re-read under the write lock
        for (let i = v; i < MIGRATIONS.length; i++) this.db.exec(MIGRATIONS[i] as string);
        this.db.pragma(`user_version = ${MIGRATIONS.length}`);
      })
      .immediate();
  }

  vmsDir(): string {
    return join(this.dir, "vms");
  }

  insert(rec: Omit<VMRecord, "createdAt" | "updatedAt" | "snapshotId"> & { snapshotId?: string | null }): VMRecord {
    const full = { ...rec, snapshotId: rec.snapshotId ?? null };
    const now = new Date().toISOString();
    // ids and names share one namespace: `smolvm rm X` must mean one VM
    const clash = this.db
      .prepare("SELECT id, name FROM vms WHERE name = ? OR (? IS NOT NULL AND id = ?)")
      .get(rec.id, rec.name, rec.name) as { id: string; name: string | null } | undefined;
    if (clash) {
      if (clash.name === rec.id) throw new ConfigError("vmId", `${JSON.stringify(rec.id)} is another VM's name`);
      throw new ConfigError("name", `${JSON.stringify(rec.name)} is another VM's id`);
    }
    try {
      this.db
        .prepare(
          `INSERT INTO vms (id, name, backend, status, config, handle, disk_path, disk_format, vm_dir, error,
                            snapshot_id, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          rec.id,
          rec.name,
          rec.backend,
          rec.status,
          JSON.stringify(rec.config),
          rec.handle ? JSON.stringify(rec.handle) : null,
          rec.diskPath,
          rec.diskFormat,
          rec.vmDir,
          rec.error,
          full.snapshotId,
          now,
          now,
        );
    } catch (e) {
      const msg = (e as Error).message;
      if (msg.includes("UNIQUE") && msg.includes("vms.name")) {
        throw new ConfigError("name", `${JSON.stringify(rec.name)} is already used by another VM`);
      }
      if (msg.includes("UNIQUE") && msg.includes("vms.id")) {
        throw new ConfigError("vmId", `${JSON.stringify(rec.id)} is already used by another VM`);
      }
      throw e;
    }
    return { ...full, createdAt: now, updatedAt: now };
  }

  update(
    id: string,
    fields: Partial<
      Pick<VMRecord, "status" | "handle" | "diskPath" | "diskFormat" | "error" | "snapshotId" | "config" | "name">
    >,
  ): void {
    const sets: string[] = [];
    const vals: unknown[] = [];
    const col: Record<string, string> = { diskPath: "disk_path", diskFormat: "disk_format", snapshotId: "snapshot_id" };
    for (const [k, v] of Object.entries(fields)) {
      sets.push(`${col[k] ?? k} = ?`);
      vals.push(k === "handle" || k === "config" ? (v ? JSON.stringify(v) : null) : v);
    }
    sets.push("updated_at = ?");
    vals.push(new Date().toISOString());
    this.db.prepare(`UPDATE vms SET ${sets.join(", ")} WHERE id = ?`).run(...vals, id);
  }

  /** A VM by id, else by name (an exact id always wins: a name can never shadow another VM's id). */
  get(idOrName: string): VMRecord | null {
    return this.getById(idOrName) ?? this.getByName(idOrName);
  }

  getById(id: string): VMRecord | null {
    const row = this.db.prepare("SELECT * FROM vms WHERE id = ?").get(id) as Row | undefined;
    return row ? fromRow(row) : null;
  }

  getByName(name: string): VMRecord | null {
    const row = this.db.prepare("SELECT * FROM vms WHERE name = ?").get(name) as Row | undefined;
    return row ? fromRow(row) : null;
  }

  list(): VMRecord[] {
    return (this.db.prepare("SELECT * FROM vms ORDER BY created_at").all() as Row[]).map(fromRow);
  }

  delete(id: string): void {
    this.db.prepare("DELETE FROM vms WHERE id = ?").run(id);
  }

  insertSnapshot(snap: Omit<SnapshotRecord, "createdAt" | "temporary"> & { temporary?: boolean }): SnapshotRecord {
    const s = { ...snap, temporary: snap.temporary === true };
    const createdAt = new Date().toISOString();
    if (s.name !== null && this.db.prepare("SELECT 1 FROM snapshots WHERE id = ?").get(s.name)) {
      throw new ConfigError("name", `${JSON.stringify(s.name)} is another snapshot's id`);
    }
    try {
      this.db
        .prepare(
          `INSERT INTO snapshots (id, name, vm_id, backend, config, boot, accel, dir, mem_file, disk_file, mem_bytes,
                                  size_bytes, parent_id, temporary, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          s.id,
          s.name,
          s.vmId,
          s.backend,
          JSON.stringify(s.config),
          JSON.stringify(s.boot),
          s.accel,
          s.dir,
          s.memFile,
          s.diskFile,
          s.memBytes,
          s.sizeBytes,
          s.parentId,
          s.temporary ? 1 : 0,
          createdAt,
        );
    } catch (e) {
      if ((e as Error).message.includes("snapshots.name")) {
        throw new ConfigError("name", `${JSON.stringify(s.name)} is already used by another snapshot`);
      }
      throw e;
    }
    return { ...s, createdAt };
  }

  /** A snapshot by id, else by name. */
  getSnapshot(idOrName: string): SnapshotRecord | null {
    const q = (col: string) =>
      this.db.prepare(`SELECT * FROM snapshots WHERE ${col} = ?`).get(idOrName) as SnapshotRow | undefined;
    const row = q("id") ?? q("name");
    return row ? snapFromRow(row) : null;
  }

  listSnapshots(): SnapshotRecord[] {
    return (this.db.prepare("SELECT * FROM snapshots ORDER BY created_at").all() as SnapshotRow[]).map(snapFromRow);
  }

  /** VMs and snapshots whose disks are layered on this snapshot's. */
  snapshotUsers(id: string): { vms: string[]; snapshots: string[] } {
    const vms = this.db.prepare("SELECT id FROM vms WHERE snapshot_id = ?").all(id) as { id: string }[];
    const snaps = this.db.prepare("SELECT id FROM snapshots WHERE parent_id = ?").all(id) as { id: string }[];
    return { vms: vms.map((r) => r.id), snapshots: snaps.map((r) => r.id) };
  }

  /** A snapshot's memory dropped (memBytes -1: a disk layer only) and its size now. */
  updateSnapshot(id: string, f: { memBytes: number; sizeBytes: number }): void {
    this.db.prepare("UPDATE snapshots SET mem_bytes = ?, size_bytes = ? WHERE id = ?").run(f.memBytes, f.sizeBytes, id);
  }

  deleteSnapshot(id: string): void {
    this.db.prepare("DELETE FROM snapshots WHERE id = ?").run(id);
  }
}
