/**
 * The journal: every operation that a `kill -9` could leave half done (creating a VM, a snapshot, a deletion, a
 * temporary file outside the VM's own folders) is written here first and removed when it ends, whatever way it
 * ends. `reconcile` finishes or rolls back the ones whose process is gone (lifecycle/recover.ts), so a crash at any
 * point leaves no process, socket, file or row behind.
 */
import { readFileSync, rmSync } from "node:fs";
import type { StateStore } from "./store.js";

export type OpKind = "create" | "snapshot" | "delete" | "temp";

export interface Op {
  id: number;
  kind: OpKind;
  vmId: string | null;
  path: string | null;
  data: Record<string, unknown>;
  pid: number;
  pidStart: string;
  startedAt: string;
}

/** A process's start time (field 22 of /proc/PID/stat): with the pid, it names one process even if pids are reused. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (rest[0] === "Z" || rest[0] === "X") return null;
    return rest[19] ?? null;
  } catch {
    return null;
  }
}

const SELF_START = processStart(process.pid) ?? "";

export function beginOp(
  store: StateStore,
  kind: OpKind,
  f: { vmId?: string | null; path?: string | null; data?: Record<string, unknown> } = {},
): number {
  const r = store.db
    .prepare("INSERT INTO ops (kind, vm_id, path, data, pid, pid_start, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
    .run(
      kind,
      f.vmId ?? null,
      f.path ?? null,
      JSON.stringify(f.data ?? {}),
      process.pid,
      SELF_START,
      new Date().toISOString(),
    );
  return Number(r.lastInsertRowid);
}

export function updateOp(store: StateStore, id: number, data: Record<string, unknown>): void {
  store.db.prepare("UPDATE ops SET data = ? WHERE id = ?").run(JSON.stringify(data), id);
}

export function endOp(store: StateStore, id: number): void {
  store.db.prepare("DELETE FROM ops WHERE id = ?").run(id);
}

/** Take an abandoned op for recovery: true for exactly one caller, however many reconcile at once. */
export function claimOp(store: StateStore, id: number): boolean {
  return store.db.prepare("DELETE FROM ops WHERE id = ?").run(id).changes === 1;
}

interface OpRow {
  id: number;
  kind: string;
  vm_id: string | null;
  path: string | null;
  data: string;
  pid: number;
  pid_start: string;
  started_at: string;
}

export function listOps(store: StateStore): Op[] {
  return (store.db.prepare("SELECT * FROM ops ORDER BY id").all() as OpRow[]).map((r) => ({
    id: r.id,
    kind: r.kind as OpKind,
    vmId: r.vm_id,
    path: r.path,
    data: JSON.parse(r.data) as Record<string, unknown>,
    pid: r.pid,
    pidStart: r.pid_start,
    startedAt: r.started_at,
  }));
}

/** Whether the process that began `op` is gone. */
export function abandoned(op: Op): boolean {
  return processStart(op.pid) !== op.pidStart;
}

/**
 * A temporary file or folder (a download in progress, an archive being written, a pack being unpacked): recorded
 * so that it is removed even if this process is killed, by the next `reconcile`. Call `done()` once it has been
 * renamed into place or removed.
 */
export function tempPath(
  store: StateStore,
  path: string,
  /** A VM that works in this folder (a template being captured): its processes are killed too. */
  vm?: { vmId: string; runDir: string },
): { path: string; done: () => void; discard: () => void } {
  const id = beginOp(store, "temp", { path, data: vm ? { ...vm } : {} });
  return {
    path,
    done: () => endOp(store, id),
    discard: () => {
      rmSync(path, { recursive: true, force: true });
      endOp(store, id);
    },
  };
}
