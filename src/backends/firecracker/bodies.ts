/**
 * The bodies SmolVM sends to Firecracker's API, built from SmolVM's own inputs by pure functions. Field names are
 * exactly those of Firecracker's OpenAPI description (v1.17, checked against it by test/firecracker-contract.test.ts);
 * the interfaces below carry only the fields SmolVM uses. Impossible inputs throw here, before any VMM sees them.
 */
import { SmolVMError } from "../../errors.js";

export interface BootSource {
  kernel_image_path: string;
  boot_args?: string;
  initrd_path?: string;
}

export interface MachineConfiguration {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: "None" | "Transparent" | "2M";
}

export interface Drive {
  drive_id: string;
  is_root_device: boolean;
  is_read_only: boolean;
  path_on_host: string;
  cache_type?: "Unsafe" | "Writeback";
  io_engine?: "Sync" | "Async";
}

export interface PartialDrive {
  drive_id: string;
  path_on_host?: string;
}

export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  mtu?: number;
}

export interface Vsock {
  guest_cid: number;
  uds_path: string;
}

/** Nothing to configure unless the guest's reads are rate-limited (not used by SmolVM). */
export type EntropyDevice = Record<string, never>;

export type LogLevel = "Error" | "Warning" | "Info" | "Debug" | "Trace" | "Off";

export interface Logger {
  log_path: string;
  level?: LogLevel;
  show_level?: boolean;
  show_log_origin?: boolean;
}

export interface Metrics {
  metrics_path: string;
}

export type ActionType = "InstanceStart" | "SendCtrlAltDel" | "FlushMetrics";

export interface InstanceActionInfo {
  action_type: ActionType;
}

export interface Vm {
  state: "Paused" | "Resumed";
}

export type SnapshotType = "Full" | "Diff";

export interface SnapshotCreateParams {
  snapshot_type: SnapshotType;
  snapshot_path: string;
  mem_file_path: string;
}

export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend: { backend_type: "File" | "Uffd"; backend_path: string };
  resume_vm: boolean;
  track_dirty_pages?: boolean;
  network_overrides?: Array<{ iface_id: string; host_dev_name: string }>;
  vsock_override?: { uds_path: string };
  clock_realtime?: boolean;
}

function fail(field: string, message: string): never {
  throw new SmolVMError(`Firecracker ${field}: ${message}`);
}

function intIn(field: string, v: number, min: number, max: number): number {
  if (!Number.isSafeInteger(v) || v < min || v > max) fail(field, `must be an integer from ${min} to ${max}, got ${v}`);
  return v;
}

/**
 * A path as Firecracker opens it: absolute, or a bare file name (resolved against its working directory, the VM's
 * own folder or chroot: see sequence.ts). Nothing relative with a directory in it.
 */
function absPath(field: string, p: string): string {
  const bare = typeof p === "string" && /^[A-Za-z0-9_.-]{1,255}$/.test(p) && p !== "." && p !== "..";
  if (typeof p !== "string" || (!bare && !p.startsWith("/")) || p.includes("\0"))
    fail(field, `must be an absolute path or a bare file name, got ${p}`);
  return p;
}

/** Firecracker's rule for drive and interface ids (they appear in URL paths): ASCII letters, digits and `_`. */
export function checkId(field: string, id: string): string {
  if (typeof id !== "string" || !/^[A-Za-z0-9_]{1,64}$/.test(id)) {
    fail(field, `must be 1 to 64 ASCII letters, digits or _, got ${JSON.stringify(id)}`);
  }
  return id;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

/** A Linux interface name (IFNAMSIZ - 1 bytes at most). */
function checkTap(tap: string): string {
  if (typeof tap !== "string" || !/^[A-Za-z0-9_.-]{1,15}$/.test(tap)) {
    fail("TAP name", `must be 1 to 15 letters, digits, _, . or -, got ${JSON.stringify(tap)}`);
  }
  return tap;
}

export function bootSourceBody(spec: { kernelPath: string; bootArgs: string; initrdPath?: string }): BootSource {
  const body: BootSource = { kernel_image_path: absPath("kernel", spec.kernelPath), boot_args: spec.bootArgs };
  if (spec.initrdPath !== undefined) body.initrd_path = absPath("initrd", spec.initrdPath);
  return body;
}

export function machineConfigBody(spec: {
  vcpuCount: number;
  memSizeMib: number;
  /** Dirty page tracking, for Diff snapshots later. */
  trackDirtyPages?: boolean;
  hugePages?: "None" | "Transparent" | "2M";
}): MachineConfiguration {
  const body: MachineConfiguration = {
    vcpu_count: intIn("vcpu count", spec.vcpuCount, 1, 32),
    mem_size_mib: intIn("memory (MiB)", spec.memSizeMib, 1, 1 << 30),
    smt: false,
    track_dirty_pages: spec.trackDirtyPages ?? false,
  };
  if (spec.hugePages !== undefined) {
    if (spec.hugePages === "2M" && body.mem_size_mib % 2 !== 0) fail("memory (MiB)", "must be even with 2M huge pages");
    body.huge_pages = spec.hugePages;
  }
  return body;
}

export function driveBody(
  id: string,
  spec: { path: string; readOnly: boolean; root: boolean; cache?: "Unsafe" | "Writeback"; ioEngine?: "Sync" | "Async" },
): Drive {
  const body: Drive = {
    drive_id: checkId("drive id", id),
    is_root_device: spec.root,
    is_read_only: spec.readOnly,
    path_on_host: absPath("drive path", spec.path),
  };
  if (spec.cache !== undefined) body.cache_type = spec.cache;
  if (spec.ioEngine !== undefined) body.io_engine = spec.ioEngine;
  return body;
}

/** After boot: point a drive at another file (the guest sees a media change). */
export function partialDriveBody(id: string, spec: { path: string }): PartialDrive {
  return { drive_id: checkId("drive id", id), path_on_host: absPath("drive path", spec.path) };
}

export function networkInterfaceBody(id: string, spec: { tap: string; mac: string; mtu?: number }): NetworkInterface {
  if (!MAC.test(spec.mac)) fail("MAC", `must be six hex bytes separated by ':', got ${JSON.stringify(spec.mac)}`);
  const body: NetworkInterface = {
    iface_id: checkId("interface id", id),
    host_dev_name: checkTap(spec.tap),
    guest_mac: spec.mac,
  };
  if (spec.mtu !== undefined) body.mtu = intIn("MTU", spec.mtu, 68, 65535);
  return body;
}

/** The guest's CID (3 and up: 0-2 are reserved) and the host Unix socket Firecracker listens on. */
export function vsockBody(spec: { guestCid: number; udsPath: string }): Vsock {
  return {
    guest_cid: intIn("vsock CID", spec.guestCid, 3, 0xffff_fffe),
    uds_path: absPath("vsock socket", spec.udsPath),
  };
}

export function entropyBody(): EntropyDevice {
  return {};
}

export function loggerBody(spec: {
  logPath: string;
  level?: LogLevel;
  showLevel?: boolean;
  showOrigin?: boolean;
}): Logger {
  return {
    log_path: absPath("log path", spec.logPath),
    level: spec.level ?? "Warning",
    show_level: spec.showLevel ?? true,
    show_log_origin: spec.showOrigin ?? false,
  };
}

export function metricsBody(spec: { metricsPath: string }): Metrics {
  return { metrics_path: absPath("metrics path", spec.metricsPath) };
}

export function actionBody(action: ActionType): InstanceActionInfo {
  return { action_type: action };
}

export function vmStateBody(state: "Paused" | "Resumed"): Vm {
  return { state };
}

export function snapshotCreateBody(spec: {
  /** Diff: only the pages written since the last snapshot (needs dirty page tracking). */
  type: SnapshotType;
  statePath: string;
  memPath: string;
}): SnapshotCreateParams {
  if (spec.type !== "Full" && spec.type !== "Diff") fail("snapshot type", `must be Full or Diff, got ${spec.type}`);
  return {
    snapshot_type: spec.type,
    snapshot_path: absPath("snapshot state path", spec.statePath),
    mem_file_path: absPath("snapshot memory path", spec.memPath),
  };
}

export function snapshotLoadBody(spec: {
  statePath: string;
  /** File: the memory file, mapped privately (copy-on-write). Uffd: the socket of a page-fault handler. */
  mem: { backend: "File" | "Uffd"; path: string };
  resume: boolean;
  trackDirtyPages?: boolean;
  /** The TAP each saved interface is to use now (a clone's own). */
  networkOverrides?: Array<{ ifaceId: string; tap: string }>;
  /** The vsock Unix socket to listen on now (a clone's own). */
  vsockUdsPath?: string;
  /** Advance the guest's kvmclock by the wall time passed since the snapshot (x86_64). */
  clockRealtime?: boolean;
}): SnapshotLoadParams {
  const body: SnapshotLoadParams = {
    snapshot_path: absPath("snapshot state path", spec.statePath),
    mem_backend: { backend_type: spec.mem.backend, backend_path: absPath("memory backend path", spec.mem.path) },
    resume_vm: spec.resume,
  };
  if (spec.trackDirtyPages !== undefined) body.track_dirty_pages = spec.trackDirtyPages;
  if (spec.networkOverrides?.length) {
    body.network_overrides = spec.networkOverrides.map((o) => ({
      iface_id: checkId("interface id", o.ifaceId),
      host_dev_name: checkTap(o.tap),
    }));
  }
  if (spec.vsockUdsPath !== undefined) body.vsock_override = { uds_path: absPath("vsock socket", spec.vsockUdsPath) };
  if (spec.clockRealtime !== undefined) body.clock_realtime = spec.clockRealtime;
  return body;
}
