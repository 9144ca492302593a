/** Typed errors of the OCI distribution client. Each one says what failed and, where it can, what to do. */
import { ImageError } from "../../errors.js";
import type { Platform } from "./manifest.js";

/** The registry knows no such repository or tag/digest. */
export class ImageNotFoundError extends ImageError {
  constructor(
    readonly reference: string,
    detail?: string,
  ) {
    super(`image not found: ${reference}${detail ? ` (${detail})` : ""}`);
  }
}

/** The registry could not be reached at all: refused connection, DNS failure, TLS failure, timeout. */
export class RegistryUnreachableError extends ImageError {
  constructor(
    readonly registry: string,
    readonly url: string,
    reason: string,
    options?: { cause?: unknown; plainHttpSuspected?: boolean },
  ) {
    let msg = `cannot reach registry ${registry} at ${url}: ${reason}`;
    if (options?.plainHttpSuspected) {
      msg +=
        `. The registry seems to speak plain HTTP, not HTTPS; if you trust it, pass --insecure ` +
        `or add "${registry}" to SMOLVM_INSECURE_REGISTRIES (comma separated)`;
    }
    super(msg, { cause: options?.cause });
  }
}

/** The registry refused us (401/403) even after authenticating, or the token service refused the credentials. */
export class RegistryAuthError extends ImageError {
  constructor(
    readonly registry: string,
    reason: string,
    /** Where credentials were looked for / came from, e.g. "no credentials (looked in …)". */
    readonly credentialsHint: string,
  ) {
    super(`registry ${registry} denied access: ${reason}; ${credentialsHint}`);
  }
}

/** Downloaded content does not hash to the digest that named it. */
export class DigestMismatchError extends ImageError {
  constructor(
    readonly what: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`digest mismatch for ${what}: expected ${expected}, got ${actual}`);
  }
}

/** The image has no variant for the wanted platform. `available` lists what it has. */
export class UnsupportedPlatformError extends ImageError {
  constructor(
    readonly reference: string,
    readonly wanted: Platform,
    readonly available: Platform[],
  ) {
    const list = available.length ? available.map(platformString).join(", ") : "none";
    super(`image ${reference} has no ${platformString(wanted)} variant; available platforms: ${list}`);
  }
}

/** Any other unexpected answer from the registry. */
export class RegistryError extends ImageError {
  constructor(
    readonly registry: string,
    readonly status: number,
    readonly url: string,
    /** The message(s) from the registry's {"errors":[{code,message}]} body, if it sent one. */
    readonly registryMessage: string | null,
  ) {
    super(`registry ${registry} answered HTTP ${status} for ${url}${registryMessage ? `: ${registryMessage}` : ""}`);
  }
}

/** "linux/arm64/v8", "linux/amd64". */
export function platformString(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}
