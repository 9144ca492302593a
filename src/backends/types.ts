import type { AccelName } from "../config.js";

export type BackendKind = "qemu" | "firecracker";

/**
 * The VM's network device. `tap`: a TAP device on the host (firewalled by src/network), opened by the VMM's launcher;
 * with `create`, the launcher creates it (it must not exist), sets it up as given, and it goes when the VMM ends.
 * `stream`: one end of a socket pair speaking QEMU's stream netdev; `peer` (passt, with `--fd 3`) gets the other
 * end as its descriptor 3 and is started once the VMM is up, at low priority, in a session of its own, its stderr
 * to `errPath`, its pid to `pidPath`; it is not waited for (the guest's frames wait in the socket). `dummy`: a device connected to nothing (templates and snapshots taken with a NIC need one to restore into).
 * The MAC is the device's initial one; the agent sets the guest's.
 */
export type NicSpec = { mac: string } & (
  | { kind: "tap"; tap: string; create?: TapSetup }
  | { kind: "stream"; peer: { argv: string[]; errPath: string; pidPath: string } }
  | { kind: "dummy" }
);

/** A TAP set up by the launcher: the host end's MAC and address (`a.b.c.d/prefix`), one permanent neighbour. */
export interface TapSetup {
  mac: string;
  address: string;
  neighbor: { ip: string; mac: string };
}

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
  /** Serial console log (kept by the proxy, capped). */
  logPath: string;
  /** Where the proxy writes why the VM ended (a JSON line); default: beside the console log. */
  exitPath?: string;
  /** The smolvm-agent binary, which also serves as the host-side proxy. */
  agentBinary: string;
  accel: AccelName;
  /** Restore: start from this memory/device-state file instead of booting. */
  incoming?: string;
  /**
   * Guest RAM in a file: `share: true` writes through to it (a template being captured), `share: false` maps it
   * privately (copy-on-write: clones of one template share its pages until they write them).
   */
  ram?: { path: string; share: boolean };
  /** The state file holds device state only; RAM comes from `ram` (QEMU's x-ignore-shared). */
  ignoreShared?: boolean;
  /** Restore but leave the vCPUs stopped (to capture the state again without running the guest). */
  startPaused?: boolean;
  /** A network device; absent: none. Saved guest state with a NIC restores only into a VM with one. */
  nic?: NicSpec | null;
  /**
   * Restore: called once the state is loaded; the vCPUs start only once the promise it returns settles (the VM's
   * firewall rules), and a rejection fails the start. Work that may run meanwhile starts in `onStarted`.
   */
  beforeRun?: () => Promise<void>;
  /** Called once the VMM process is up (its NIC exists), before a restore loads; not called if it fails to start. */
  onStarted?: () => void;
  /**
   * The VM's lease (src/lifecycle/lease.ts), held by whatever outlives the caller (QEMU: the VMM's supervisor): when
   * it ends, `onExpire` runs with the reason (`timeout` or `owner`) appended; if that fails, the VMM is killed.
   */
  lease?: { path: string; onExpire: string[] };
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
  /** What the VM was booted with; a restore must use the same. */
  boot: { kernelPath: string; initrdPath: string; hostname: string; bootArgs: string };
  /** The agent binary (also the proxy, the launcher and the descriptor-passing QMP client). */
  agentBinary?: string;
  /** The identity the VMM and proxy dropped to (absent: they run as the caller). */
  uid?: number;
  gid?: number;
  /** The VM's cgroup directories (removed when it ends). */
  cgroups?: string[];
  /** The QMP monitor for requests that pass a descriptor (absent on VMs started before it existed). */
  ctlSocket?: string;
  /** The root disk was given as descriptors (fd set 1): new layers must be given the same way. */
  diskFds?: boolean;
  consoleLog?: string;
  exitPath?: string;
  /** Where the VMM's supervisor writes its exit code or signal. */
  statusPath?: string;
  /**
   * Firecracker: the VM's folder as Firecracker sees it (or its chroot), the TAP made for it (removed with it), and
   * the RAM file a capture saves its memory to.
   */
  fc?: { dir: string; jailBase?: string; tap?: string; ramPath?: string };
}

/** Why a VM whose VMM is gone ended, as far as the host can tell. */
export interface ExitInfo {
  /** vmm-exited (the VMM ended), guest-protocol (the guest broke the agent protocol), proxy-error, unknown. */
  reason: string;
  /** The last shutdown or panic event the VMM reported (e.g. "SHUTDOWN guest-panic"), if any. */
  event: string;
  at: number | null;
  /** The VMM's exit code (null: killed by a signal, or not known). */
  code: number | null;
  /** The signal that ended the VMM, if any. */
  signal: number | null;
}

export interface DiskSpec {
  base: string;
  /** raw (an image) or qcow2 (a snapshot's disk layer). */
  baseFormat?: "raw" | "qcow2";
  mode: "isolated" | "shared";
  /** Folder where an isolated VM's private layer lives. */
  vmDir: string;
}

export interface SnapshotResult {
  /** The disk layer that was the VM's top one, now inside the snapshot folder (read-only from here on). */
  diskFile: string;
  /** Memory and device state. */
  memFile: string;
  /** The VM's new top disk layer (its backing is `diskFile`). */
  newDiskPath: string;
}

/** Backend-specific, JSON-serialisable facts about a split state file. */
export type SplitInfo = Record<string, unknown>;

/** One interface for every VMM; the SmolVM facade never knows which one it drives. */
export interface Backend {
  readonly kind: BackendKind;
  /**
   * A saved state loads fast as it is (Firecracker maps its memory file copy-on-write), so snapshots need no split
   * "fast image" and templates are captured with `saveState(h, file, false)`. QEMU: false.
   */
  readonly restoresDirectly: boolean;
  /** Make the VM's root disk: a private copy-on-write layer for `isolated`, the base itself for `shared`. */
  prepareDisk(spec: DiskSpec): Promise<{ path: string; format: "raw" | "qcow2" }>;
  /** Identity of the VMM build (restored state is only valid for the same one). */
  identity(): string;
  /** The accelerator a boot with this request would use (kvm, hvf, tcg). */
  resolveAccel(requested: AccelName, image: { kernelPath: string; initrdPath: string }): Promise<AccelName>;
  /** Start the VMM with the guest booting; resolves once the agent socket accepts connections. */
  boot(spec: BootSpec): Promise<VMHandle>;
  /**
   * Stop the vCPUs. `resumeSoon`: a resume is the next thing this process does with the VM (a pool VM waiting to be
   * handed out), so a backend may keep what makes it faster ready (QEMU: its QMP connection, negotiated).
   */
  pause(h: VMHandle, opts?: { resumeSoon?: boolean }): Promise<void>;
  /**
   * Stop the vCPUs and save device state (and RAM, unless `ramInFile`: then only device state, the RAM being in the
   * VM's shared RAM file) to `file`. The VM stays stopped.
   */
  saveState(h: VMHandle, file: string, ramInFile: boolean): Promise<void>;
  /**
   * Snapshot memory, device state and disk consistently into `dir`. The VM is paused meanwhile and resumed after
   * unless `leavePaused`. Disk: no copy, the current top layer moves into the snapshot.
   */
  snapshot(
    h: VMHandle,
    disk: { path: string; vmDir: string },
    dir: string,
    leavePaused: boolean,
    /** Called the moment the VM writes to its new top layer: from then on the snapshot's disk layer must be kept. */
    onSwitched: (newDiskPath: string) => void,
  ): Promise<SnapshotResult>;
  resume(h: VMHandle): Promise<void>;
  /**
   * Write the guest RAM held in the full state file `stateFile` into `ramPath` (a sparse file of `ramBytes`) and the
   * rest of the state to `restPath`. A VM booted with `ram: { path: ramPath }` and `incoming: restPath` (not
   * `ignoreShared`) resumes exactly where `stateFile` would, without loading all of RAM through the VMM. Returns
   * what `joinState` needs to undo it (JSON-serialisable), or null when this file's format is not understood.
   */
  splitState(
    stateFile: string,
    out: { ramPath: string; ramBytes: number; restPath: string },
  ): Promise<SplitInfo | null>;
  /** The inverse of `splitState`: one full state file again. */
  joinState(
    split: { ramPath: string; ramBytes: number; restPath: string; info: SplitInfo },
    outFile: string,
  ): Promise<void>;
  /** Stop the VMM at once and remove its sockets and pid files. Safe to call on a dead VM. */
  kill(h: VMHandle): Promise<void>;
  /** Whether the VMM process of this handle is still running. */
  isAlive(h: VMHandle): boolean;
  /** Path of the Unix socket speaking the guest protocol (checked to be still private). */
  agentChannel(h: VMHandle): string;
  /** Whether the per-VM agent proxy is running. */
  proxyAlive(h: VMHandle): boolean;
  /** Start the proxy again for a VM whose VMM still runs (its proxy was killed or crashed). */
  restartProxy(h: VMHandle): Promise<VMHandle>;
  /** What the proxy recorded about the end of the VM (or of itself), or null. */
  exitInfo(h: VMHandle): ExitInfo | null;
}
