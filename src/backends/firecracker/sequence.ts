/**
 * The requests SmolVM sends Firecracker, in order, for each thing it does with a VM: boot, restore, pause, resume,
 * snapshot. Pure sequences over the API client (no process, no file), so the contract tests can run each of them
 * against the fake API server and check every body against Firecracker's OpenAPI description.
 *
 * Every path here is as Firecracker sees it: a bare file name, resolved against its working directory, which is the
 * VM's own folder (or, under the jailer, the root of its chroot). A snapshot records the drive's and the vsock
 * socket's paths as given; bare names make them resolve to each clone's own files when the snapshot is loaded in
 * another folder, without `drive` or `vsock` overrides (which older releases do not have).
 */
import type { FirecrackerClient } from "./api.js";

/** The guest's vsock CID (any value >= 3; each VM has its own device, so all can use the same). */
export const GUEST_CID = 3;
/** The port the guest agent listens on (guest/agent/init.c, `smolvm.channel=vsock`). */
export const AGENT_VSOCK_PORT = 1024;
/** The names inside the VM's folder (or chroot). */
export const JAIL_NAMES = {
  api: "api.sock",
  vsock: "v.sock",
  kernel: "vmlinux",
  initrd: "initrd",
  disk: "rootfs",
} as const;
/** The root drive's and the NIC's ids (a snapshot names them; a clone's NIC is overridden by this id). */
export const ROOT_DRIVE = "root";
export const NIC_ID = "net0";

export interface BootRequests {
  vcpuCount: number;
  memSizeMib: number;
  bootArgs: string;
  /** The disk is the image itself (diskMode "shared" never writes through Firecracker's cache differently). */
  readOnly: boolean;
  tap?: { name: string; mac: string };
  /** Keep dirty-page tracking on, for Diff snapshots. */
  trackDirtyPages?: boolean;
}

/**
 * Configure a fresh Firecracker process and start the guest. No logger: unconfigured, Firecracker writes its log to
 * its stdout (at the `--level` it was started with), which is the console FIFO, so its lines land in the VM's
 * console log, capped like the guest's output; a log file of its own would grow without bound.
 */
export async function bootSequence(fc: FirecrackerClient, r: BootRequests): Promise<void> {
  await fc.putMachineConfig({
    vcpuCount: r.vcpuCount,
    memSizeMib: r.memSizeMib,
    trackDirtyPages: r.trackDirtyPages ?? false,
  });
  await fc.putBootSource({ kernelPath: JAIL_NAMES.kernel, initrdPath: JAIL_NAMES.initrd, bootArgs: r.bootArgs });
  await fc.putDrive(ROOT_DRIVE, { path: JAIL_NAMES.disk, readOnly: r.readOnly, root: false });
  await fc.putVsock({ guestCid: GUEST_CID, udsPath: JAIL_NAMES.vsock });
  await fc.putEntropy();
  if (r.tap) await fc.putNetworkInterface(NIC_ID, { tap: r.tap.name, mac: r.tap.mac });
  await fc.instanceStart();
}

export interface RestoreRequests {
  /** The snapshot's state and memory files, as Firecracker sees them. */
  statePath: string;
  memPath: string;
  /** The clone's own TAP (the snapshot's NIC is given this host device). */
  tap?: string;
}

/**
 * Load a snapshot into a fresh Firecracker process, leaving the vCPUs stopped (the caller resumes once the VM's
 * firewall rules are in place). Memory is the snapshot's file mapped privately: clones share its pages until they
 * write them.
 */
export async function restoreSequence(fc: FirecrackerClient, r: RestoreRequests): Promise<void> {
  await fc.loadSnapshot({
    statePath: r.statePath,
    mem: { backend: "File", path: r.memPath },
    resume: false,
    ...(r.tap ? { networkOverrides: [{ ifaceId: NIC_ID, tap: r.tap }] } : {}),
  });
}

/** Pause (if running) and write a full snapshot: device state to `statePath`, guest memory to `memPath`. */
export async function snapshotSequence(
  fc: FirecrackerClient,
  r: { statePath: string; memPath: string; running: boolean; diff?: boolean },
): Promise<void> {
  if (r.running) await fc.pauseVm();
  await fc.createSnapshot({ type: r.diff ? "Diff" : "Full", statePath: r.statePath, memPath: r.memPath });
}
