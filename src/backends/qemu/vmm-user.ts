/**
 * The identity a VM's QEMU and agent proxy run as when smolvm runs as root: one uid/gid per VM, from a range that no
 * distribution hands out (0x6d000000 + 20 bits of a hash of the VM's run dir), with no home, no groups, no files.
 * An escaped VMM then cannot read the host's files, nor signal, ptrace or read another VM's processes. As any other
 * user, VMs run as that user (an unprivileged user cannot switch identity).
 */
import { createHash } from "node:crypto";

export const VMM_UID_BASE = 0x6d000000;
const RANGE = 1 << 20;

export interface VmmIdentity {
  uid: number;
  gid: number;
}

export function vmmIdentity(key: string): VmmIdentity | null {
  if (process.getuid?.() !== 0 || process.platform !== "linux") return null;
  const n = Number.parseInt(createHash("sha256").update(key).digest("hex").slice(0, 8), 16) % RANGE;
  return { uid: VMM_UID_BASE + n, gid: VMM_UID_BASE + n };
}
