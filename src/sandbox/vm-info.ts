/** What `list` and `status` show about a VM. */
import type { BackendKind } from "../backends/types.js";
import { labelsOf, lifetimeOf, type TimeoutAction } from "../config.js";
import { readLease, timeLeft } from "../lifecycle/lease.js";
import type { VMRecord, VMStatus } from "../state/store.js";

/** A summary of a VM, as `list` and `status` show it. */
export interface VMInfo {
  vmId: string;
  name: string | null;
  status: VMStatus;
  /** The image as it was asked for (`python`, `python:3.12-slim`), or `base`. */
  image: string;
  /** Its id in the image store (null: the built-in image or a rootfsPath). */
  imageId: string | null;
  backend: BackendKind;
  accel: string | null;
  pid: number | null;
  vcpuCount: number;
  memSizeMib: number;
  diskMode: string;
  labels: Record<string, string>;
  createdAt: string;
  error: string | null;
  /** When its lifetime ends (ISO time; null: none, or not running), what happens then, and the ms left. */
  expiresAt: string | null;
  timeLeftMs: number | null;
  onTimeout: TimeoutAction;
  /** Kept when the process that started it exits (false: deleted then). */
  keep: boolean;
  /** The process it lives for (not kept), while it runs. */
  ownerPid: number | null;
}

export function info(rec: VMRecord): VMInfo {
  return {
    vmId: rec.id,
    name: rec.name,
    status: rec.status,
    image: rec.config.image ?? (rec.config.rootfsPath ? "rootfs" : "base"),
    imageId: rec.config.imageInfo?.id || null,
    backend: rec.backend,
    accel: rec.handle?.accel ?? null,
    pid: rec.handle?.pid ?? null,
    vcpuCount: rec.config.vcpuCount,
    memSizeMib: rec.config.memSizeMib,
    diskMode: rec.config.diskMode,
    labels: labelsOf(rec.config),
    createdAt: rec.createdAt,
    error: rec.error,
    ...lifetimeInfo(rec),
  };
}

function lifetimeInfo(rec: VMRecord): Pick<VMInfo, "expiresAt" | "timeLeftMs" | "onTimeout" | "keep" | "ownerPid"> {
  const l = lifetimeOf(rec.config);
  const live = rec.status === "running" || rec.status === "paused";
  const lease = live ? readLease(rec.vmDir) : null;
  return {
    expiresAt: lease?.expiresAt ? new Date(lease.expiresAt).toISOString() : null,
    timeLeftMs: timeLeft(lease),
    onTimeout: lease?.action ?? l.onTimeout,
    keep: l.keep,
    ownerPid: lease?.owner?.pid ?? null,
  };
}
