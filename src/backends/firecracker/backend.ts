import type { KernelInfo } from "../../images/kernel.js";
import {
  checkFirecrackerVersion,
  FIRECRACKER_SEARCH,
  firecrackerBinary,
  firecrackerProbe,
  jailerBinary,
} from "./binary.js";
import { firecrackerKernelCheck, type KernelCheck } from "./kernel-check.js";

export { FIRECRACKER_SEARCH, firecrackerBinary } from "./binary.js";

export interface FirecrackerBlocker {
  what: "binary" | "version" | "kvm" | "kernel";
  reason: string;
  /** What to do about it, when there is something to do. */
  fix?: string;
}

export interface FirecrackerStatus {
  binary: string | null;
  version: string | null;
  jailer: string | null;
  /** Whether the guest kernel boots under this Firecracker (kernel-check.ts). */
  kernel: KernelCheck;
  /** Every reason Firecracker cannot run VMs here; empty when it can. */
  blockers: FirecrackerBlocker[];
}

/**
 * Everything `doctor` says about Firecracker on this host: the binary and its version (one the client speaks),
 * KVM (Firecracker has no software emulation), and the guest kernel; the jailer, which is not required.
 */
export function firecrackerStatus(
  kvm: { usable: boolean; reason: string },
  kernel?: KernelInfo | null,
): FirecrackerStatus {
  const out: FirecrackerBlocker[] = [];
  const bin = firecrackerBinary();
  let version: string | null = null;
  if (!bin) {
    const env = process.env.SMOLVM_FIRECRACKER_BIN;
    out.push({
      what: "binary",
      reason: env
        ? `SMOLVM_FIRECRACKER_BIN=${env} does not exist`
        : `no firecracker binary (looked in ${FIRECRACKER_SEARCH})`,
      fix: "smolvm setup --firecracker /path/to/firecracker",
    });
  } else {
    const probe = firecrackerProbe(bin);
    version = probe.version;
    const bad = version ? checkFirecrackerVersion(version) : `${bin}: ${probe.error}`;
    if (bad)
      out.push({ what: "version", reason: bad, fix: "install a supported release: smolvm setup --firecracker PATH" });
  }
  if (!kvm.usable)
    out.push({ what: "kvm", reason: `KVM cannot run a guest here (${kvm.reason}); Firecracker needs KVM` });
  const k = firecrackerKernelCheck(version, kernel);
  if (k.ok !== true) {
    const which = k.kernelPath ? `the guest kernel ${k.kernelPath}` : "the guest kernel";
    const head =
      k.ok === false
        ? `${which} cannot boot under Firecracker`
        : `cannot tell whether ${which} boots under Firecracker`;
    out.push({ what: "kernel", reason: `${head}: ${k.reasons.join("; ")}`, ...(k.fix ? { fix: k.fix } : {}) });
  }
  return { binary: bin, version, jailer: bin ? jailerBinary(bin) : null, kernel: k, blockers: out };
}

/** The blockers of firecrackerStatus as sentences (each with its fix). */
export function firecrackerBlockers(kvm: { usable: boolean; reason: string }, kernel?: KernelInfo | null): string[] {
  return firecrackerStatus(kvm, kernel).blockers.map((b) => (b.fix ? `${b.reason} (fix: ${b.fix})` : b.reason));
}
