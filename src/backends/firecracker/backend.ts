import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { BackendUnavailableError } from "../../errors.js";
import { which } from "../../util/run.js";

/** Whether this release can drive Firecracker. It cannot yet: the backend arrives with its own issue. */
export const FIRECRACKER_IMPLEMENTED = false;

/** Where a Firecracker binary is looked for, in order: `SMOLVM_FIRECRACKER_BIN`, `PATH`, `~/.local/bin`. */
export const FIRECRACKER_SEARCH = "SMOLVM_FIRECRACKER_BIN, PATH, ~/.local/bin";

export function firecrackerBinary(): string | null {
  const env = process.env.SMOLVM_FIRECRACKER_BIN;
  if (env) return existsSync(env) ? env : null;
  const local = join(homedir(), ".local", "bin", "firecracker");
  return which("firecracker") ?? (existsSync(local) ? local : null);
}

/**
 * Every reason Firecracker cannot run VMs on this host, for `doctor`: the binary, KVM (Firecracker has no software
 * emulation), and this release (which has its API client, not yet its backend: docs/FIRECRACKER.md).
 */
export function firecrackerBlockers(kvm: { usable: boolean; reason: string }): string[] {
  const out: string[] = [];
  const bin = firecrackerBinary();
  if (!bin) {
    const env = process.env.SMOLVM_FIRECRACKER_BIN;
    out.push(
      env ? `SMOLVM_FIRECRACKER_BIN=${env} does not exist` : `no firecracker binary (looked in ${FIRECRACKER_SEARCH})`,
    );
  }
  if (!kvm.usable) out.push(`KVM cannot run a guest here (${kvm.reason}); Firecracker needs KVM`);
  if (!FIRECRACKER_IMPLEMENTED)
    out.push("this release has Firecracker's API client, not yet its backend (docs/FIRECRACKER.md)");
  return out;
}

export function firecrackerUnavailable(): BackendUnavailableError {
  return new BackendUnavailableError(
    "firecracker",
    "this SmolVM release does not drive Firecracker yet; use backend 'qemu' (or leave backend unset / 'auto')",
  );
}
