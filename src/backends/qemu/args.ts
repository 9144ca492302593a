import type { BootSpec } from "../types.js";
import { hostTscKhz } from "./tsc.js";

export interface QemuPaths {
  qmpSocket: string;
  channelSocket: string;
  pidFile: string;
}

/** Kernel command line: our fixed part, then the user's extra arguments (which may override ours). */
export function kernelCmdline(
  spec: Pick<BootSpec, "hostname" | "bootArgs">,
  accel: string,
  tscKhz = hostTscKhz(),
): string {
  const base = ["console=ttyS0", "quiet", "panic=-1", "smolvm.channel=vport", `smolvm.hostname=${spec.hostname}`];
  if (accel === "tcg" && tscKhz && process.arch === "x64") base.push(`tsc_early_khz=${tscKhz}`);
  return [...base, spec.bootArgs].filter(Boolean).join(" ");
}

export function accelArgs(accel: string): string[] {
  if (accel === "kvm") return ["-accel", "kvm", "-cpu", "host"];
  if (accel === "hvf") return ["-accel", "hvf", "-cpu", "host"];
  return ["-accel", "tcg"];
}

/** QEMU command line for a microvm with virtio-mmio disk, agent port and RNG, daemonized, QMP on a socket. */
export function buildQemuArgs(spec: BootSpec, accel: string, p: QemuPaths): string[] {
  const esc = (s: string) => s.replace(/,/g, ",,"); // QEMU option values escape commas by doubling
  return [
    "-name",
    `smolvm-${spec.vmId}`,
    // RAM is always the memory backend "ram0" (in a file or anonymous): saved state names its RAM block, so
    // every VM must name it alike for any state to load into any other
    "-M",
    "microvm,acpi=on,memory-backend=ram0",
    "-object",
    spec.ram
      ? `memory-backend-file,id=ram0,size=${spec.memSizeMib}M,mem-path=${esc(spec.ram.path)},share=${spec.ram.share ? "on" : "off"}`
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
    `file,id=con,path=${esc(spec.logPath)},append=on`,
    "-serial",
    "chardev:con",
    "-kernel",
    spec.kernelPath,
    "-initrd",
    spec.initrdPath,
    "-append",
    kernelCmdline(spec, accel),
    "-no-reboot",
    "-drive",
    `id=root,file=${esc(spec.diskPath)},format=${spec.diskFormat},if=none,discard=unmap`,
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
    "-qmp",
    `unix:${esc(p.qmpSocket)},server=on,wait=off`,
    "-daemonize",
    "-pidfile",
    p.pidFile,
  ];
}
