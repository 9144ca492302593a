/**
 * Can this guest kernel boot under this Firecracker (x86_64)? Firecracker loads an uncompressed ELF `vmlinux`
 * (SmolVM extracts it from a bzImage: src/images/vmlinux.ts) and gives the guest virtio-mmio devices, which a
 * kernel finds through the command line (`virtio_mmio.device=`, needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y) or, on
 * Firecracker >= 1.8.0, through ACPI (CONFIG_ACPI=y and CONFIG_PCI=y, per Firecracker's docs/kernel-policy.md).
 * SmolVM also needs an initrd, virtio-blk and virtio-vsock; built in, or as modules the initrd carries.
 */
import { readFileSync, statSync } from "node:fs";
import { basename } from "node:path";
import { findKernel, type KernelInfo, kernelConfigPath } from "../../images/kernel.js";
import { inspectKernelImage, type KernelImage } from "../../images/vmlinux.js";
import { compareSemver, FIRECRACKER_MIN_VERSION } from "./binary.js";

/** The first Firecracker release that describes its devices to x86_64 guests through ACPI (its CHANGELOG, #4428). */
export const FIRECRACKER_ACPI_VERSION = "1.8.0";

export interface KernelCheckInput {
  kernelPath: string;
  /** What the kernel file is (inspectKernelImage). */
  image: KernelImage;
  /** The kernel's build configuration (.config text); null when none was found. */
  configText: string | null;
  /** The installed Firecracker's version; null when there is no binary to ask. */
  fcVersion: string | null;
  /** Module names the guest's initrd can load (e.g. "virtio_blk"); null when unknown. */
  modules: string[] | null;
  /** Host architecture (process.arch); only x64 is checked. */
  arch?: string;
}

export interface KernelCheck {
  /** The kernel file checked; null when there is none. */
  kernelPath: string | null;
  /** true: it boots; false: it cannot; null: could not tell (reasons say what could not be checked). */
  ok: boolean | null;
  reasons: string[];
  /** What to do when ok is not true. */
  fix: string | null;
  /** One line for doctor when ok. */
  summary: string;
}

export function parseKernelConfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const set = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (set) out.set(set[1] as string, set[2] as string);
    const unset = /^# (CONFIG_\w+) is not set/.exec(line);
    if (unset) out.set(unset[1] as string, "n");
  }
  return out;
}

const KERNEL_FIX =
  "set SMOLVM_KERNEL=/path/to/vmlinux, an x86_64 kernel built for Firecracker (e.g. one of Firecracker's CI " +
  "kernels, whose drivers are built in), with its config as /path/to/vmlinux.config or SMOLVM_KERNEL_CONFIG";

export function checkFirecrackerKernel(input: KernelCheckInput): KernelCheck {
  const arch = input.arch ?? process.arch;
  const name = input.kernelPath;
  if (arch !== "x64") {
    return {
      kernelPath: name,
      ok: null,
      reasons: [`only x86_64 guest kernels are checked (this host is ${arch})`],
      fix: null,
      summary: "",
    };
  }
  const bad: string[] = [];
  const unknown: string[] = [];
  let acpiVersion = false;
  const img = input.image;
  let how = "an ELF vmlinux";
  if (img.kind === "unknown") bad.push(`${name} is ${img.problem}`);
  else if (img.kind === "elf" && img.problem) bad.push(`${name} is ${img.problem}`);
  else if (img.kind === "bzimage") {
    if (img.format) how = `a ${img.format} bzImage (SmolVM extracts its vmlinux)`;
    else bad.push(`${name} is a bzImage whose payload compression is unknown, so no vmlinux can be extracted`);
  }
  let discovery = "";
  if (input.configText === null) {
    unknown.push(
      `no build configuration for ${name} (looked for SMOLVM_KERNEL_CONFIG, <kernel>.config, config beside it), ` +
        "so its virtio-mmio, ACPI, virtio-blk and vsock support cannot be checked",
    );
  } else {
    const cfg = parseKernelConfig(input.configText);
    const state = (opt: string) => {
      const v = cfg.get(opt);
      return v === undefined || v === "n" ? "not set" : `=${v}`;
    };
    const need = (opt: string, what: string, module?: string) => {
      const v = cfg.get(opt);
      if (v === "y") return;
      if (v === "m" && module) {
        if (input.modules === null || input.modules.includes(module)) return;
        bad.push(`${opt}=m (${what}) but the guest's initrd has no ${module} module`);
        return;
      }
      bad.push(`${opt} is ${state(opt)} (${what})`);
    };
    need("CONFIG_BLK_DEV_INITRD", "initrd");
    need("CONFIG_KVM_GUEST", "KVM guest support");
    need("CONFIG_VIRTIO_MMIO", "virtio-mmio transport", "virtio_mmio");
    need("CONFIG_VIRTIO_BLK", "virtio-blk, the root disk", "virtio_blk");
    need("CONFIG_VIRTIO_VSOCKETS", "virtio-vsock, the agent's channel", "vmw_vsock_virtio_transport");
    const cmdline = cfg.get("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES") === "y";
    const acpi = cfg.get("CONFIG_ACPI") === "y" && cfg.get("CONFIG_PCI") === "y";
    const only = `it finds virtio-mmio devices only through ACPI (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is ${state("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES")}), which Firecracker offers on x86_64 since v${FIRECRACKER_ACPI_VERSION}`;
    if (cmdline) discovery = "virtio-mmio devices from the command line";
    else if (!acpi) {
      bad.push(
        `it cannot find Firecracker's virtio-mmio devices: CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is ${state("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES")}, ` +
          `and ACPI discovery needs CONFIG_ACPI=y and CONFIG_PCI=y (CONFIG_ACPI is ${state("CONFIG_ACPI")}, CONFIG_PCI is ${state("CONFIG_PCI")})`,
      );
    } else if (input.fcVersion === null) {
      unknown.push(`${only}; there is no Firecracker version to compare (no binary found, or it printed none)`);
      acpiVersion = true;
    } else if (compareSemver(input.fcVersion, FIRECRACKER_ACPI_VERSION) < 0) {
      bad.push(`${only}, and the installed Firecracker is v${input.fcVersion}`);
      acpiVersion = true;
    } else
      discovery = `virtio-mmio devices through ACPI (Firecracker v${input.fcVersion} >= v${FIRECRACKER_ACPI_VERSION})`;
  }
  const ok = bad.length ? false : unknown.length ? null : true;
  const fixes: string[] = [];
  if (acpiVersion) {
    fixes.push(
      `install Firecracker >= v${FIRECRACKER_ACPI_VERSION} for ACPI (SmolVM needs >= v${FIRECRACKER_MIN_VERSION} anyway: smolvm setup --firecracker PATH)`,
    );
  }
  if (input.configText === null) fixes.push("point SMOLVM_KERNEL_CONFIG at the kernel's .config");
  fixes.push(KERNEL_FIX);
  return {
    kernelPath: name,
    ok,
    reasons: [...bad, ...unknown],
    fix: ok === true ? null : fixes.join("; or "),
    summary: ok === true ? `${basename(name)}: ${how}, ${discovery}, initrd, virtio-blk and vsock` : "",
  };
}

const cache = new Map<string, KernelCheck>();

function stamp(path: string | null): string {
  if (!path) return "-";
  try {
    const s = statSync(path);
    return `${path}:${s.size}:${s.mtimeMs}`;
  } catch {
    return `${path}:missing`;
  }
}

/** Module names from the kernel's module files ("03-virtio_blk.ko" -> "virtio_blk"). */
export const moduleNames = (kernel: KernelInfo) =>
  kernel.modules.map((m) =>
    basename(m)
      .replace(/^\d+-/, "")
      .replace(/\.ko(\.\w+)?$/, ""),
  );

/**
 * checkFirecrackerKernel for the installed kernel (findKernel) and `fcVersion`, gathering its inputs from disk;
 * remembered per kernel and config file (path, size, mtime) and version, so repeated calls cost a few stat()s.
 */
export function firecrackerKernelCheck(fcVersion: string | null, kernel?: KernelInfo | null): KernelCheck {
  let k: KernelInfo | null;
  try {
    k = kernel === undefined ? findKernel() : kernel;
  } catch (e) {
    return { kernelPath: null, ok: false, reasons: [(e as Error).message], fix: KERNEL_FIX, summary: "" };
  }
  if (!k)
    return {
      kernelPath: null,
      ok: null,
      reasons: ["no guest kernel installed"],
      fix: "run 'smolvm setup'",
      summary: "",
    };
  const configPath = kernelConfigPath(k);
  const key = [stamp(k.kernelPath), stamp(configPath), fcVersion ?? "-", k.modules.join(",")].join("\0");
  const hit = cache.get(key);
  if (hit) return hit;
  let result: KernelCheck;
  try {
    result = checkFirecrackerKernel({
      kernelPath: k.kernelPath,
      image: inspectKernelImage(k.kernelPath),
      configText: configPath ? readFileSync(configPath, "utf8") : null,
      fcVersion,
      modules: moduleNames(k),
    });
  } catch (e) {
    result = { kernelPath: k.kernelPath, ok: false, reasons: [(e as Error).message], fix: KERNEL_FIX, summary: "" };
  }
  cache.set(key, result);
  return result;
}
