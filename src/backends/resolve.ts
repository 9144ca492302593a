/** Backend choice: explicit argument > SMOLVM_BACKEND > platform default. */
import { BACKENDS, type BackendName } from "../config.js";
import { ConfigError } from "../errors.js";
import { checkFirecrackerVersion, firecrackerBinary, firecrackerVersion } from "./firecracker/binary.js";
import { firecrackerKernelCheck } from "./firecracker/kernel-check.js";
import { FirecrackerBackend } from "./firecracker/vmm.js";
import { cachedKvmUsable } from "./qemu/accel.js";
import { QemuBackend } from "./qemu/backend.js";
import { qemuBinary } from "./qemu/binary.js";
import type { Backend, BackendKind } from "./types.js";

/**
 * Platform default: macOS -> qemu; Linux -> firecracker when KVM passed the probe boot (the cached verdict), its
 * binary exists and speaks a supported version, and the guest kernel boots under it (kernel-check.ts); else qemu.
 * `doctor --backend firecracker` says which of these fails. Cheap: the probe's verdict is read from its cache, the
 * version and the kernel check are remembered per file (path, size, mtime).
 */
export function platformDefault(kvmUsable: () => boolean = () => cachedKvmUsable(qemuBinary())): BackendKind {
  if (process.platform !== "linux" || !firecrackerBinary() || !kvmUsable()) return "qemu";
  const bin = firecrackerBinary();
  const version = bin ? firecrackerVersion(bin) : null;
  if (!version || checkFirecrackerVersion(version) !== null) return "qemu";
  return firecrackerKernelCheck(version).ok === true ? "firecracker" : "qemu";
}

export function resolveBackendName(explicit?: BackendName, kvmUsable?: () => boolean): BackendKind {
  if (explicit !== undefined && !(BACKENDS as readonly string[]).includes(explicit)) {
    throw new ConfigError("backend", `must be one of ${BACKENDS.join(" | ")}, got ${JSON.stringify(explicit)}`);
  }
  if (explicit && explicit !== "auto") return explicit;
  const env = process.env.SMOLVM_BACKEND;
  if (env !== undefined && env !== "") {
    if (!(BACKENDS as readonly string[]).includes(env)) {
      throw new ConfigError("SMOLVM_BACKEND", `must be one of ${BACKENDS.join(" | ")}, got ${JSON.stringify(env)}`);
    }
    if (env !== "auto") return env as BackendKind;
  }
  if (kvmUsable) return platformDefault(kvmUsable);
  // looked up again at most every 30 s (a PATH search per create() is a measurable part of a pool hit): a binary
  // installed meanwhile is seen within that; a changed environment at once
  const key = `${process.env.PATH}\0${process.env.SMOLVM_FIRECRACKER_BIN}\0${process.env.HOME}`;
  const now = Date.now();
  if (!lastDefault || lastDefault.key !== key || now - lastDefault.at > PLATFORM_DEFAULT_TTL_MS) {
    lastDefault = { key, at: now, kind: platformDefault() };
  }
  return lastDefault.kind;
}

let lastDefault: { key: string; at: number; kind: BackendKind } | null = null;
const PLATFORM_DEFAULT_TTL_MS = 30_000;

export function getBackend(kind: BackendKind): Backend {
  if (kind === "qemu") return new QemuBackend();
  return new FirecrackerBackend();
}
