import { BackendUnavailableError } from "../../errors.js";
import { which } from "../../util/run.js";

/** Whether this release can drive Firecracker. It cannot yet: the backend arrives with its own issue. */
export const FIRECRACKER_IMPLEMENTED = false;

export function firecrackerBinary(): string | null {
  return process.env.SMOLVM_FIRECRACKER || which("firecracker");
}

export function firecrackerUnavailable(): BackendUnavailableError {
  return new BackendUnavailableError(
    "firecracker",
    "this SmolVM release does not drive Firecracker yet; use backend 'qemu' (or leave backend unset / 'auto')",
  );
}
