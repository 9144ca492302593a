import { existsSync, statSync } from "node:fs";
import { ConfigError } from "./errors.js";

export const BACKENDS = ["auto", "firecracker", "qemu"] as const;
export type BackendName = (typeof BACKENDS)[number];
export const ACCELS = ["auto", "kvm", "hvf", "tcg"] as const;
export type AccelName = (typeof ACCELS)[number];
export const DISK_MODES = ["isolated", "shared"] as const;
export type DiskMode = (typeof DISK_MODES)[number];

/** What a caller may say about a VM. Every field is optional; `resolveConfig` fills the defaults. */
export interface VMConfig {
  /** Id to give the VM (lowercase letters, digits, dashes); generated when absent. */
  vmId?: string;
  /** Optional unique, human-friendly name. */
  name?: string;
  /** `auto` (default): `SMOLVM_BACKEND`, else the platform default. */
  backend?: BackendName;
  /** Virtual CPUs, 1-32 (default 2). */
  vcpuCount?: number;
  /** Guest memory in MiB, 128-16384 (default 512). */
  memSizeMib?: number;
  /** `isolated` (default): a private copy-on-write layer over the image. `shared`: write the image in place. */
  diskMode?: DiskMode;
  /** Guest kernel (bzImage); default: the one `smolvm setup` installed. */
  kernelPath?: string;
  /** Initramfs holding the SmolVM agent; default: the one `smolvm setup` built. */
  initrdPath?: string;
  /** ext4 root filesystem image; default: the built-in busybox image. */
  rootfsPath?: string;
  /** Extra kernel command-line arguments. */
  bootArgs?: string;
  /** Environment given to every command run in the VM. */
  env?: Record<string, string>;
  /** Accelerator: `auto` (default: `SMOLVM_ACCEL`, else KVM/HVF when proven to work, else TCG). */
  accel?: AccelName;
  /**
   * Boot the kernel instead of restoring the image's warm-start snapshot (default false; `SMOLVM_COLD_BOOT=1`
   * makes it the default).
   */
  coldBoot?: boolean;
}

/** A validated configuration: every field has its value. */
export interface ResolvedVMConfig {
  vmId: string;
  name: string | null;
  backend: BackendName;
  vcpuCount: number;
  memSizeMib: number;
  diskMode: DiskMode;
  kernelPath: string | null;
  initrdPath: string | null;
  rootfsPath: string | null;
  bootArgs: string;
  env: Record<string, string>;
  accel: AccelName;
  coldBoot: boolean;
}

export const DEFAULTS = { vcpuCount: 2, memSizeMib: 512, diskMode: "isolated" as DiskMode };
export const LIMITS = { vcpuCount: [1, 32], memSizeMib: [128, 16384] } as const;

const ID_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
/** The shape of generated VM ids: names may not take it, so an id never resolves to another VM by name. */
const GENERATED_ID_RE = /^vm-[a-z0-9]{10}$/;
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const KNOWN = new Set<string>([
  "vmId",
  "name",
  "backend",
  "vcpuCount",
  "memSizeMib",
  "diskMode",
  "kernelPath",
  "initrdPath",
  "rootfsPath",
  "bootArgs",
  "env",
  "accel",
  "coldBoot",
]);

function camel(s: string): string {
  return s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

function oneOf<T extends string>(field: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(field, `must be one of ${allowed.join(" | ")}, got ${JSON.stringify(value)}`);
  }
  return value as T;
}

function intIn(field: string, value: unknown, [lo, hi]: readonly [number, number]): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < lo || value > hi) {
    throw new ConfigError(field, `must be an integer from ${lo} to ${hi}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function filePath(field: string, value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "string" || value === "") throw new ConfigError(field, "must be a file path");
  if (!existsSync(value)) throw new ConfigError(field, `file not found: ${value}`);
  if (!statSync(value).isFile()) throw new ConfigError(field, `not a regular file: ${value}`);
  return value;
}

function coldBootOf(v: unknown): boolean {
  if (v === undefined) return ["1", "true", "yes"].includes((process.env.SMOLVM_COLD_BOOT ?? "").toLowerCase());
  if (typeof v !== "boolean") throw new ConfigError("coldBoot", `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

export function newVmId(): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = crypto.getRandomValues(new Uint8Array(10));
  return `vm-${Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("")}`;
}

/** Validate a user's configuration and fill in defaults. Throws `ConfigError` naming the first bad field. */
export function resolveConfig(input: VMConfig = {}): ResolvedVMConfig {
  if (typeof input !== "object" || input === null || Array.isArray(input)) {
    throw new ConfigError("config", "must be an object");
  }
  for (const key of Object.keys(input)) {
    if (KNOWN.has(key)) continue;
    const hint = KNOWN.has(camel(key)) ? ` (did you mean ${camel(key)}?)` : "";
    throw new ConfigError(key, `unknown field${hint}; known fields: ${[...KNOWN].join(", ")}`);
  }
  const c = input as Record<string, unknown>;
  const vmId = c.vmId === undefined ? newVmId() : c.vmId;
  if (typeof vmId !== "string" || !ID_RE.test(vmId)) {
    throw new ConfigError("vmId", "must be 1-63 lowercase letters, digits or dashes, starting with a letter or digit");
  }
  let name: string | null = null;
  if (c.name !== undefined && c.name !== null) {
    if (typeof c.name !== "string" || !ID_RE.test(c.name)) {
      throw new ConfigError(
        "name",
        "must be 1-63 lowercase letters, digits or dashes, starting with a letter or digit",
      );
    }
    if (GENERATED_ID_RE.test(c.name)) {
      throw new ConfigError("name", `${JSON.stringify(c.name)} looks like a VM id (vm-xxxxxxxxxx); choose another`);
    }
    name = c.name;
  }
  const env: Record<string, string> = {};
  if (c.env !== undefined) {
    if (typeof c.env !== "object" || c.env === null || Array.isArray(c.env)) {
      throw new ConfigError("env", "must be an object of string values");
    }
    for (const [k, v] of Object.entries(c.env)) {
      if (!ENV_KEY_RE.test(k)) throw new ConfigError(`env.${k}`, "is not a valid variable name");
      if (typeof v !== "string" || v.includes("\0")) {
        throw new ConfigError(`env.${k}`, "must be a string without NUL bytes");
      }
      env[k] = v;
    }
  }
  if (c.bootArgs !== undefined && (typeof c.bootArgs !== "string" || /[\0\n]/.test(c.bootArgs))) {
    throw new ConfigError("bootArgs", "must be a single-line string");
  }
  const diskMode = c.diskMode === undefined ? DEFAULTS.diskMode : oneOf("diskMode", c.diskMode, DISK_MODES);
  if (diskMode === "shared" && (c.rootfsPath === undefined || c.rootfsPath === null)) {
    throw new ConfigError(
      "diskMode",
      '"shared" writes the image in place; the built-in image is shared by every VM and warm template: ' +
        "pass rootfsPath with an image of your own",
    );
  }
  return {
    vmId,
    name,
    backend: c.backend === undefined ? "auto" : oneOf("backend", c.backend, BACKENDS),
    vcpuCount: c.vcpuCount === undefined ? DEFAULTS.vcpuCount : intIn("vcpuCount", c.vcpuCount, LIMITS.vcpuCount),
    memSizeMib: c.memSizeMib === undefined ? DEFAULTS.memSizeMib : intIn("memSizeMib", c.memSizeMib, LIMITS.memSizeMib),
    diskMode,
    kernelPath: filePath("kernelPath", c.kernelPath),
    initrdPath: filePath("initrdPath", c.initrdPath),
    rootfsPath: filePath("rootfsPath", c.rootfsPath),
    bootArgs: (c.bootArgs as string | undefined) ?? "",
    env,
    accel: c.accel === undefined ? "auto" : oneOf("accel", c.accel, ACCELS),
    coldBoot: coldBootOf(c.coldBoot),
  };
}
