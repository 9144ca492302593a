/** Backend choice: explicit argument > SMOLVM_BACKEND > platform default. */
import { BACKENDS, type BackendName } from "../config.js";
import { ConfigError } from "../errors.js";
import { FIRECRACKER_IMPLEMENTED, firecrackerBinary, firecrackerUnavailable } from "./firecracker/backend.js";
import { FirecrackerBackend } from "./firecracker/vmm.js";
import { QemuBackend } from "./qemu/backend.js";
import type { Backend, BackendKind } from "./types.js";

/**
 * Platform default: macOS -> qemu; Linux -> firecracker when its binary exists, KVM is usable and this release
 * drives it, else qemu.
 */
export function platformDefault(kvmUsable = false): BackendKind {
  if (process.platform === "linux" && FIRECRACKER_IMPLEMENTED && kvmUsable && firecrackerBinary()) return "firecracker";
  return "qemu";
}

export function resolveBackendName(explicit?: BackendName, kvmUsable = false): BackendKind {
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
  return platformDefault(kvmUsable);
}

export function getBackend(kind: BackendKind): Backend {
  if (kind === "qemu") return new QemuBackend();
  if (!FIRECRACKER_IMPLEMENTED) throw firecrackerUnavailable();
  return new FirecrackerBackend();
}
