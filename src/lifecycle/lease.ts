/**
 * Lifetimes: how long a running VM may live, and for which process. Both are held by the VM's own supervisor (the
 * `launch` process that is its VMM's parent, guest/agent/lease.c), so they hold with no client running: the host
 * library writes `<vmDir>/lease`, the supervisor watches it (inotify) and, when the deadline passes or the owner
 * process is gone (a pidfd, and the process's start time against pid reuse), runs `smolvm _expire`, which ends the
 * VM here, cleanly.
 *
 * The lease is one line, `DEADLINE ACTION OWNER_PID OWNER_START`: DEADLINE in ms since the epoch (0: none), ACTION
 * `delete` or `pause`, OWNER_PID/OWNER_START the owner process and field 22 of its /proc/PID/stat (0 0: kept).
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ResolvedVMConfig, TimeoutAction } from "../config.js";
import { lifetimeOf } from "../config.js";
import { packageRoot } from "../paths.js";
import { processStart } from "../state/journal.js";

export interface Owner {
  pid: number;
  /** Start time of the process (clock ticks since boot, as `processStart` gives it): a reused pid has another. */
  start: string;
}

export interface Lease {
  /** When the lifetime ends (ms since the epoch), or null. */
  expiresAt: number | null;
  action: TimeoutAction;
  /** The process the VM lives for, or null (kept). */
  owner: Owner | null;
}

export const leasePath = (vmDir: string) => join(vmDir, "lease");

/** This process, as an owner. */
let self: Owner | null = null;
export function selfOwner(): Owner {
  self ??= { pid: process.pid, start: processStart(process.pid) ?? "0" };
  return self;
}

export function ownerAlive(o: Owner): boolean {
  return processStart(o.pid) === o.start;
}

export function readLease(vmDir: string): Lease | null {
  let text: string;
  try {
    text = readFileSync(leasePath(vmDir), "utf8");
  } catch {
    return null;
  }
  const m = /^(\d{1,16}) (delete|pause) (\d{1,10}) (\d{1,20})\n?$/.exec(text);
  if (!m) return null;
  const pid = Number(m[3]);
  return {
    expiresAt: Number(m[1]) || null,
    action: m[2] as TimeoutAction,
    owner: pid > 0 ? { pid, start: m[4] as string } : null,
  };
}

/** Write the lease atomically (the supervisor sees the rename). */
export function writeLease(vmDir: string, l: Lease): void {
  const file = leasePath(vmDir);
  const tmp = `${file}.${process.pid}.tmp`;
  const line = `${l.expiresAt ?? 0} ${l.action} ${l.owner?.pid ?? 0} ${l.owner?.start ?? 0}\n`;
  writeFileSync(tmp, line, { mode: 0o600 });
  renameSync(tmp, file);
}

/**
 * The lease a start gives the VM of `c` (its lifetime counted from now, owned by this process unless kept), written
 * to its folder; returns what its supervisor needs: the file, and the command it runs when the lease ends.
 */
export function startLease(c: ResolvedVMConfig, vmDir: string, stateDir: string): { path: string; onExpire: string[] } {
  const l = lifetimeOf(c);
  writeLease(vmDir, {
    expiresAt: l.timeoutMs === null ? null : Date.now() + l.timeoutMs,
    action: l.onTimeout,
    owner: l.keep ? null : selfOwner(),
  });
  return {
    path: leasePath(vmDir),
    // the reason (timeout or owner) is appended by the supervisor
    onExpire: [process.execPath, join(packageRoot(), "bin", "smolvm.js"), "_expire", "--state-dir", stateDir, c.vmId],
  };
}

/**
 * A running VM's lease handed to the lifetime and owner of `c` (a pool VM given to its caller), from now. A lease
 * already saying the same (no deadline, the same owner and action: a pool VM handed to its own process with no
 * lifetime) is left as it is: no write, and no wake-up of the supervisor that watches it.
 */
export function handOverLease(c: ResolvedVMConfig, vmDir: string): void {
  const l = lifetimeOf(c);
  const next: Lease = {
    expiresAt: l.timeoutMs === null ? null : Date.now() + l.timeoutMs,
    action: l.onTimeout,
    owner: l.keep ? null : selfOwner(),
  };
  const now = next.expiresAt === null ? readLease(vmDir) : null;
  const same =
    now !== null &&
    now.expiresAt === null &&
    now.action === next.action &&
    now.owner?.pid === next.owner?.pid &&
    now.owner?.start === next.owner?.start;
  if (!same) writeLease(vmDir, next);
}

/** Time left of a lease in ms (0: ended), or null for none. */
export function timeLeft(l: Lease | null, now = Date.now()): number | null {
  if (!l?.expiresAt) return null;
  return Math.max(0, l.expiresAt - now);
}
