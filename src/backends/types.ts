import type { AccelName } from "../config.js";

export type BackendKind = "qemu" | "firecracker";

/** Everything a backend needs to boot one VM. Paths are absolute. */
export interface BootSpec {
  vmId: string;
  vcpuCount: number;
  memSizeMib: number;
  kernelPath: string;
  initrdPath: string;
  /** The root disk to attach, already prepared by `prepareDisk`. */
  diskPath: string;
  diskFormat: "raw" | "qcow2";
  /** Extra kernel arguments from the user. */
  bootArgs: string;
  hostname: string;
  /** Folder for sockets and pid files (short path). */
  runDir: string;
  /** Serial console log. */
  logPath: string;
  /** The smolvm-agent binary, which also serves as the host-side proxy. */
  agentBinary: string;
  accel: AccelName;
}

/** What the state store keeps about a running VM, enough for another process to reach and stop it. */
export interface VMHandle {
  vmId: string;
  pid: number;
  proxyPid: number | null;
  /** Accelerator actually in use (kvm, hvf, tcg). */
  accel: string;
  /** Unix socket speaking the guest protocol (docs/PROTOCOL.md). */
  agentSocket: string;
  /** Backend control socket (QMP for QEMU, the API socket for Firecracker). */
  controlSocket: string;
  runDir: string;
}

export interface DiskSpec {
  base: string;
  mode: "isolated" | "shared";
  /** Folder where an isolated VM's private layer lives. */
  vmDir: string;
}

/** One interface for every VMM; the SmolVM facade never knows which one it drives. */
export interface Backend {
  readonly kind: BackendKind;
  /** Make the VM's root disk: a private copy-on-write layer for `isolated`, the base itself for `shared`. */
  prepareDisk(spec: DiskSpec): Promise<{ path: string; format: "raw" | "qcow2" }>;
  /** Start the VMM with the guest booting; resolves once the agent socket accepts connections. */
  boot(spec: BootSpec): Promise<VMHandle>;
  pause(h: VMHandle): Promise<void>;
  resume(h: VMHandle): Promise<void>;
  /** Stop the VMM at once and remove its sockets and pid files. Safe to call on a dead VM. */
  kill(h: VMHandle): Promise<void>;
  /** Whether the VMM process of this handle is still running. */
  isAlive(h: VMHandle): boolean;
  /** Path of the Unix socket speaking the guest protocol. */
  agentChannel(h: VMHandle): string;
}
