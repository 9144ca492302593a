import type { BootSpec } from "../types.js";
import { hostTscKhz } from "./tsc.js";

/** The files of one VM's QEMU, all in its private run dir. */
export interface QemuPaths {
  /** QMP for SmolVM's own requests. */
  qmpSocket: string;
  /** QMP for requests that hand QEMU a file descriptor (the agent binary's `qmp` mode). */
  ctlSocket: string;
  /** QMP held by the proxy, which watches shutdown and panic events. */
  eventsSocket: string;
  channelSocket: string;
  consoleSocket: string;
  pidFile: string;
  /** QEMU's own stdout and stderr. */
  logFile: string;
}

export const qemuPaths = (runDir: string): QemuPaths => ({
  qmpSocket: `${runDir}/qmp.sock`,
  ctlSocket: `${runDir}/ctl.sock`,
  eventsSocket: `${runDir}/events.sock`,
  channelSocket: `${runDir}/channel.sock`,
  consoleSocket: `${runDir}/console.sock`,
  pidFile: `${runDir}/qemu.pid`,
  logFile: `${runDir}/qemu.log`,
});

/** How QEMU is confined. */
export interface Confinement {
  /** Drop to this identity once initialized (SmolVM runs as root). */
  runas?: { uid: number; gid: number } | null;
  /** `-run-with user=` instead of `-runas` (QEMU 8.1+). */
  runWith?: boolean;
  /** With `runas`: once initialized, QEMU's root directory is this empty folder (it opens no path after that). */
  chroot?: string;
  /** The root disk comes as descriptors 3 (read-write) and 4 (read-only) in fd set 1, not by path. */
  diskFds?: boolean;
  /** A private RAM file is opened read-only (QEMU 8.2+ `rom=off`). */
  ramReadonly?: boolean;
}

/**
 * QEMU's seccomp filter: no obsolete system calls, no new processes (so no `exec:` migration and no -daemonize),
 * no scheduler or resource-limit changes; no set*id either, except when QEMU itself must drop root with -runas
 * (QEMU 7.2 installs the filter before the drop). After the drop it has no capabilities and no_new_privs, so a
 * set*id call can only lower, never raise, its privileges.
 */
export function sandboxArg(c: Confinement): string {
  return `on,obsolete=deny,spawn=deny,resourcecontrol=deny${c.runas ? "" : ",elevateprivileges=deny"}`;
}

/**
 * SMOLVM_IDLE_TUNING=0 brings back the CPU and kernel arguments (and the guest's running PIT) from before the idle-CPU work (docs/DENSITY.md),
 * so a benchmark can measure both in one run. It is part of the VMM's identity: templates of the two never mix.
 */
export const idleTuning = (): boolean => process.env.SMOLVM_IDLE_TUNING !== "0";

/**
 * What an idle guest stops doing (docs/DENSITY.md has the measurements). Under TCG the guest's local APIC timer has no
 * ARAT and its TSC is checked by the clocksource watchdog against jiffies: the kernel never leaves its periodic 250 Hz
 * tick, and each tick is a TCG exit. `tsc=reliable` (QEMU's TCG TSC follows the host's monotonic clock) with ARAT on
 * the CPU (see accelArgs) let it switch to one-shot timers and stop the tick when idle. On every accelerator: no
 * soft/hard lockup watchdog (an hrtimer every 4 s) and no proactive compaction (kcompactd wakes twice a second).
 */
export function idleArgs(accel: string): string[] {
  if (!idleTuning()) return ["smolvm.pit=keep"]; // the agent leaves the firmware's PIT running, as it used to
  return [...(accel === "tcg" ? ["tsc=reliable"] : []), "nowatchdog", "sysctl.vm.compaction_proactiveness=0"];
}

/** Kernel command line: our fixed part, then the user's extra arguments (which may override ours). */
export function kernelCmdline(
  spec: Pick<BootSpec, "hostname" | "bootArgs">,
  accel: string,
  tscKhz = hostTscKhz(),
): string {
  // panic=-1 reboot=t: a panicking guest resets at once by a triple fault, which QEMU (-no-reboot) ends on. The
  // kernel's default way (efi, then acpi, then the keyboard controller, with delays between) hung forever in guests
  // restored from some warm templates (those captured under load), leaving a dead VM running.
  const base = [
    "console=ttyS0",
    "quiet",
    "panic=-1",
    "reboot=t",
    "smolvm.channel=vport",
    `smolvm.hostname=${spec.hostname}`,
  ];
  if (accel === "tcg" && tscKhz && process.arch === "x64") base.push(`tsc_early_khz=${tscKhz}`);
  base.push(...idleArgs(accel));
  return [...base, spec.bootArgs].filter(Boolean).join(" ");
}

/** TCG's translation buffer (MiB), counted in the VMM's memory limit (see cgroups.ts). */
export const TCG_TB_MIB = 256;

export function accelArgs(accel: string): string[] {
  if (accel === "kvm") return ["-accel", "kvm", "-cpu", "host"];
  if (accel === "hvf") return ["-accel", "hvf", "-cpu", "host"];
  // TCG's translated-code buffer defaults to 1 GiB in QEMU 7.2 and fills up under a long, busy workload: with guest
  // RAM it outgrew the VMM's memory limit (guest RAM x 1.25 + 512 MiB) and the cgroup OOM-killed QEMU (seen with 16
  // commands in flight for a few minutes). 256 MiB keeps it inside the limit; a full buffer is flushed and refilled.
  // +arat: the guest may keep its APIC timer in one-shot mode when idle (without it Linux wants a broadcast timer,
  // which a microvm does not have, and stays periodic)
  return ["-accel", `tcg,tb-size=${TCG_TB_MIB}`, ...(idleTuning() ? ["-cpu", "qemu64,+arat"] : [])];
}

/** Descriptor number of the NIC's backend in QEMU: the TAP (opened there by the launcher) or passt's socket. 3 and 4
 * are the disk's. */
export const NIC_FD = 5;

/** The network device: always `net0`, a virtio-net on virtio-mmio, so saved state with a NIC loads into any NIC. */
export function nicArgs(spec: BootSpec): string[] {
  const n = spec.nic;
  if (!n) return [];
  const netdev =
    n.kind === "tap"
      ? `tap,id=net0,fd=${NIC_FD},vhost=off`
      : n.kind === "stream"
        ? `socket,id=net0,fd=${NIC_FD}`
        : "hubport,id=net0,hubid=0";
  // offloads off: a TAP (with its vnet header) would offer features that passt's socket and an unconnected NIC
  // cannot, and saved state only loads into a device offering the same features. With them off, state saved with
  // any backend restores with any other (a tap VM's snapshot forked into user mode, a pack run elsewhere)
  const same = "csum=off,guest_csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off";
  const host = "host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off";
  return ["-netdev", netdev, "-device", `virtio-net-device,netdev=net0,mac=${n.mac},${same},${host}`];
}

/**
 * QEMU command line for a microvm with virtio-mmio disk, agent port and RNG, QMP on sockets, confined (seccomp,
 * unprivileged identity). It is started by the agent binary's `launch` mode, which waits for it to initialize.
 */
export function buildQemuArgs(spec: BootSpec, accel: string, p: QemuPaths, c: Confinement = {}): string[] {
  const esc = (s: string) => s.replace(/,/g, ",,"); // QEMU option values escape commas by doubling
  const ramOpts = spec.ram && !spec.ram.share && c.ramReadonly ? ",readonly=on,rom=off" : "";
  const drive = c.diskFds
    ? [
        "-add-fd",
        "fd=3,set=1,opaque=rw",
        "-add-fd",
        "fd=4,set=1,opaque=ro",
        "-drive",
        // QEMU reopens the layer read-only by its name when a snapshot puts a new layer on top: the fd set holds a
        // read-only descriptor for that. Image locking is off because the set's own descriptors would hold stale
        // locks against QEMU's; SmolVM never gives one writable layer to two VMs (the state store tracks layers).
        `id=root,file=/dev/fdset/1,file.locking=off,format=${spec.diskFormat},if=none,discard=unmap`,
      ]
    : ["-drive", `id=root,file=${esc(spec.diskPath)},format=${spec.diskFormat},if=none,discard=unmap`];
  const identity = c.runas
    ? c.runWith
      ? ["-run-with", `user=${c.runas.uid}:${c.runas.gid}${c.chroot ? `,chroot=${esc(c.chroot)}` : ""}`]
      : ["-runas", `${c.runas.uid}:${c.runas.gid}`, ...(c.chroot ? ["-chroot", c.chroot] : [])]
    : [];
  return [
    "-name",
    `smolvm-${spec.vmId}`,
    // RAM is always the memory backend "ram0" (in a file or anonymous): saved state names its RAM block, so
    // every VM must name it alike for any state to load into any other
    "-M",
    "microvm,acpi=on,memory-backend=ram0",
    "-object",
    spec.ram
      ? `memory-backend-file,id=ram0,size=${spec.memSizeMib}M,mem-path=${esc(spec.ram.path)},share=${spec.ram.share ? "on" : "off"}${ramOpts}`
      : `memory-backend-ram,id=ram0,size=${spec.memSizeMib}M`,
    ...(spec.startPaused ? ["-S"] : []),
    ...accelArgs(accel),
    "-m",
    String(spec.memSizeMib),
    "-smp",
    String(spec.vcpuCount),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-chardev",
    // the console goes to the proxy, which keeps a capped log (a guest cannot fill the host's disk through it)
    `socket,id=con,path=${esc(p.consoleSocket)},server=on,wait=off`,
    "-serial",
    "chardev:con",
    "-kernel",
    spec.kernelPath,
    ...(spec.initrdPath ? ["-initrd", spec.initrdPath] : []),
    "-append",
    kernelCmdline(spec, accel),
    "-no-reboot",
    ...drive,
    "-device",
    "virtio-blk-device,drive=root",
    "-device",
    "virtio-serial-device",
    "-chardev",
    `socket,id=agent,path=${esc(p.channelSocket)},server=on,wait=off`,
    "-device",
    "virtserialport,chardev=agent,name=agent",
    "-object",
    "rng-random,id=rng0,filename=/dev/urandom",
    "-device",
    "virtio-rng-device,rng=rng0",
    ...nicArgs(spec),
    "-qmp",
    `unix:${esc(p.qmpSocket)},server=on,wait=off`,
    "-qmp",
    `unix:${esc(p.ctlSocket)},server=on,wait=off`,
    "-qmp",
    `unix:${esc(p.eventsSocket)},server=on,wait=off`,
    "-sandbox",
    sandboxArg(c),
    ...identity,
  ];
}
