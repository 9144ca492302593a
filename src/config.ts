import { existsSync, statSync } from "node:fs";
import { ConfigError } from "./errors.js";
import { cidrText, parseCidr } from "./network/addr.js";

export const BACKENDS = ["auto", "firecracker", "qemu"] as const;
export type BackendName = (typeof BACKENDS)[number];
export const ACCELS = ["auto", "kvm", "hvf", "tcg"] as const;
export type AccelName = (typeof ACCELS)[number];
export const DISK_MODES = ["isolated", "shared"] as const;
export type DiskMode = (typeof DISK_MODES)[number];
export const NETWORK_MODES = ["none", "user", "tap"] as const;
export type NetworkMode = (typeof NETWORK_MODES)[number];

/**
 * Where a guest may connect to. `open`: the internet, but never the host, its private networks, link-local or the
 * cloud metadata address. `off`: nowhere (no DNS either). An allowlist: only these CIDRs (which may name private
 * ranges: an explicit CIDR is the one way to reach them) and the addresses that SmolVM's resolver returned for these
 * names (`pypi.org` or `*.pypi.org`: the name and every name below it; tap mode only).
 */
export type InternetPolicy = "open" | "off" | { allowCidrs?: string[]; allowDomains?: string[] };
export type ResolvedInternet = "open" | "off" | { allowCidrs: string[]; allowDomains: string[] };

/** `network` as a caller may write it: a mode, or the mode with options. */
export type NetworkOption = NetworkMode | { mode?: NetworkMode; internet?: InternetPolicy };

export interface ResolvedNetwork {
  mode: NetworkMode;
  internet: ResolvedInternet;
}

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
  /** ext4 root filesystem image; default: the built-in busybox image. Not together with `image`. */
  rootfsPath?: string;
  /**
   * The image to run: a preset (`base`, the default busybox; `python`; `node`), an OCI reference
   * (`python:3.12-slim`, `ghcr.io/org/app@sha256:...`: pulled on first use), or a local image id.
   */
  image?: string;
  /** Size of the guest's root file system in MiB (64-1048576); default: the image's (pulled images get 1 GiB free). */
  diskSizeMib?: number;
  /** Extra kernel command-line arguments. */
  bootArgs?: string;
  /** Environment given to every command run in the VM. */
  env?: Record<string, string>;
  /**
   * Labels: your own key/value strings (owner, task, session...), shown by `list` and `status`, filtered on by
   * `list --filter label=k=v`, kept through snapshots, forks and packs. At most 64; keys 1-128 of letters, digits and
   * `._/-`; values up to 256 printable characters.
   */
  labels?: Record<string, string>;
  /** Accelerator: `auto` (default: `SMOLVM_ACCEL`, else KVM/HVF when proven to work, else TCG). */
  accel?: AccelName;
  /**
   * Boot the kernel instead of restoring the image's warm-start snapshot (default false; `SMOLVM_COLD_BOOT=1`
   * makes it the default).
   */
  coldBoot?: boolean;
  /**
   * `none` (default: no network device; ports can still be exposed through the agent), `user` (unprivileged,
   * through passt), or `tap` (a routed TAP device per VM; needs root or CAP_NET_ADMIN). With a mode, `internet`
   * defaults to `open`. The guest never reaches the host or its private networks unless a CIDR allows it.
   */
  network?: NetworkOption;
  /**
   * Lifetime of the running VM in ms (1 s to 366 days), counted from each start; `vm.setTimeout()` sets a new one.
   * Enforced by the VM's own supervisor process, so it holds with no client running. Default: none.
   */
  timeoutMs?: number | null;
  /** What happens when the lifetime ends: `delete` (default) or `pause`. */
  onTimeout?: TimeoutAction;
  /**
   * Keep the VM when the process that started it exits (default false: a VM is deleted, by its supervisor, within
   * a second or two of its owner process ending, however it ends: `kill -9`, a closed terminal, a crash). The CLI's
   * `create`, `fork` and `snapshot restore` keep their VMs; `smolvm run` does not.
   */
  keep?: boolean;
}

export const TIMEOUT_ACTIONS = ["delete", "pause"] as const;
export type TimeoutAction = (typeof TIMEOUT_ACTIONS)[number];
export const LIFETIME_MS = [1000, 366 * 86_400_000] as const;

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
  /** The image as the caller named it, or null (the default image, or `rootfsPath`). */
  image: string | null;
  diskSizeMib: number | null;
  /** What the image was resolved to at the VM's first start (kept through snapshots, forks and packs). */
  imageInfo?: ImageDefaults;
  bootArgs: string;
  env: Record<string, string>;
  /** Absent in records from before labels existed: read it through `labelsOf`. */
  labels: Record<string, string>;
  accel: AccelName;
  coldBoot: boolean;
  network: ResolvedNetwork;
  /** Absent in records from before lifetimes existed: read these three through `lifetimeOf`. */
  timeoutMs?: number | null;
  onTimeout?: TimeoutAction;
  keep?: boolean;
}

/** A VM's lifetime settings (records from before lifetimes existed: none, and kept). */
export function lifetimeOf(c: ResolvedVMConfig): { timeoutMs: number | null; onTimeout: TimeoutAction; keep: boolean } {
  return { timeoutMs: c.timeoutMs ?? null, onTimeout: c.onTimeout ?? "delete", keep: c.keep !== false };
}

/** What an image gives the commands run in it (its OCI config): defaults for `run`, `spawn` and the terminal. */
export interface ImageDefaults {
  /** The image's id in the image store. */
  id: string;
  /** The reference it was resolved from (`docker.io/library/python:3.12-slim`, `preset:python`). */
  ref: string;
  workingDir?: string;
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
}

export const DEFAULTS = { vcpuCount: 2, memSizeMib: 512, diskMode: "isolated" as DiskMode };
/** Images whose programs need more than the default memory: their default `memSizeMib` (Chromium: docs/BROWSER.md). */
export const IMAGE_MEMORY_MIB: Readonly<Record<string, number>> = { browser: 2048 };
export const LIMITS = { vcpuCount: [1, 32], memSizeMib: [128, 16384], diskSizeMib: [64, 1048576] } as const;
const IMAGE_RE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@]{0,510}$/;

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
  "image",
  "diskSizeMib",
  "bootArgs",
  "env",
  "labels",
  "accel",
  "coldBoot",
  "network",
  "timeoutMs",
  "onTimeout",
  "keep",
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
  let image: string | null = null;
  if (c.image !== undefined && c.image !== null) {
    if (typeof c.image !== "string" || !IMAGE_RE.test(c.image)) {
      throw new ConfigError(
        "image",
        `must be a preset name, an OCI reference or an image id, got ${JSON.stringify(c.image)}`,
      );
    }
    if (c.rootfsPath !== undefined && c.rootfsPath !== null) {
      throw new ConfigError("image", "give either image or rootfsPath, not both");
    }
    image = c.image;
  }
  const diskSizeMib =
    c.diskSizeMib === undefined || c.diskSizeMib === null
      ? null
      : intIn("diskSizeMib", c.diskSizeMib, LIMITS.diskSizeMib);
  if (diskSizeMib !== null && c.rootfsPath !== undefined && c.rootfsPath !== null) {
    throw new ConfigError("diskSizeMib", "applies to images; grow your own rootfsPath file with resize2fs");
  }
  if (diskSizeMib !== null && diskMode === "shared") {
    throw new ConfigError("diskSizeMib", 'cannot resize an image written in place (diskMode "shared")');
  }
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
    memSizeMib:
      c.memSizeMib === undefined
        ? ((image !== null ? IMAGE_MEMORY_MIB[image] : undefined) ?? DEFAULTS.memSizeMib)
        : intIn("memSizeMib", c.memSizeMib, LIMITS.memSizeMib),
    diskMode,
    kernelPath: filePath("kernelPath", c.kernelPath),
    initrdPath: filePath("initrdPath", c.initrdPath),
    rootfsPath: filePath("rootfsPath", c.rootfsPath),
    image,
    diskSizeMib,
    bootArgs: (c.bootArgs as string | undefined) ?? "",
    env,
    labels: resolveLabels(c.labels),
    accel: c.accel === undefined ? "auto" : oneOf("accel", c.accel, ACCELS),
    coldBoot: coldBootOf(c.coldBoot),
    network: resolveNetwork(c.network),
    timeoutMs: c.timeoutMs === undefined || c.timeoutMs === null ? null : intIn("timeoutMs", c.timeoutMs, LIFETIME_MS),
    onTimeout: c.onTimeout === undefined ? "delete" : oneOf("onTimeout", c.onTimeout, TIMEOUT_ACTIONS),
    keep: boolOf("keep", c.keep),
  };
}

function boolOf(field: string, v: unknown): boolean {
  if (v === undefined) return false;
  if (typeof v !== "boolean") throw new ConfigError(field, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

const LABEL_KEY_RE = /^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
const LABEL_VALUE_BAD = /[\u0000-\u001f\u007f-\u009f]/;
export const MAX_LABELS = 64;

/** Labels, validated (ConfigError naming the bad key). */
export function resolveLabels(v: unknown, field = "labels"): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) throw new ConfigError(field, "must be an object of string values");
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > MAX_LABELS) throw new ConfigError(field, `at most ${MAX_LABELS} labels, got ${entries.length}`);
  const out: Record<string, string> = {};
  for (const [k, val] of entries) {
    if (!LABEL_KEY_RE.test(k)) {
      throw new ConfigError(
        `${field}.${k}`,
        "keys are 1-128 letters, digits, '.', '_', '/' or '-', starting and ending with a letter or digit",
      );
    }
    if (typeof val !== "string" || val.length > 256 || LABEL_VALUE_BAD.test(val)) {
      throw new ConfigError(`${field}.${k}`, "must be a string of at most 256 printable characters");
    }
    out[k] = val;
  }
  return out;
}

/** A VM's labels (records from before labels existed have none). */
export const labelsOf = (c: ResolvedVMConfig): Record<string, string> => c.labels ?? {};

const DOMAIN_RE = /^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MAX_RULES = 256;

function stringList(field: string, v: unknown, check: (s: string) => string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw new ConfigError(field, "must be an array of strings");
  if (v.length > MAX_RULES) throw new ConfigError(field, `at most ${MAX_RULES} entries`);
  return [
    ...new Set(
      v.map((x, i) => {
        if (typeof x !== "string") throw new ConfigError(`${field}[${i}]`, "must be a string");
        return check(x);
      }),
    ),
  ];
}

/** The egress policy, validated: CIDRs normalised ("10.1.2.3" is "10.1.2.3/32"), names lowercased. */
export function resolveInternet(v: unknown, field = "network.internet"): ResolvedInternet {
  if (v === undefined || v === "open") return "open";
  if (v === "off") return "off";
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new ConfigError(field, `must be "open", "off" or { allowCidrs?, allowDomains? }, got ${JSON.stringify(v)}`);
  }
  for (const k of Object.keys(v)) {
    if (k !== "allowCidrs" && k !== "allowDomains") {
      throw new ConfigError(`${field}.${k}`, "unknown field; known fields: allowCidrs, allowDomains");
    }
  }
  const o = v as { allowCidrs?: unknown; allowDomains?: unknown };
  const allowCidrs = stringList(`${field}.allowCidrs`, o.allowCidrs, (s) => {
    const c = parseCidr(s.trim());
    if (!c) throw new ConfigError(`${field}.allowCidrs`, `${JSON.stringify(s)} is not an IPv4 address or CIDR`);
    return cidrText(c);
  });
  const allowDomains = stringList(`${field}.allowDomains`, o.allowDomains, (s) => {
    const d = s.trim().toLowerCase().replace(/\.$/, "");
    if (d.length > 253 || !DOMAIN_RE.test(d)) {
      throw new ConfigError(`${field}.allowDomains`, `${JSON.stringify(s)} is not a domain name (or *.name)`);
    }
    return d;
  });
  return { allowCidrs, allowDomains };
}

export function resolveNetwork(v: unknown): ResolvedNetwork {
  if (v === undefined || v === null) return { mode: "none", internet: "off" };
  if (typeof v === "string") {
    const mode = oneOf("network", v, NETWORK_MODES);
    return { mode, internet: mode === "none" ? "off" : "open" };
  }
  if (typeof v !== "object" || Array.isArray(v)) {
    throw new ConfigError("network", `must be ${NETWORK_MODES.join(" | ")} or { mode, internet }`);
  }
  for (const k of Object.keys(v)) {
    if (k !== "mode" && k !== "internet")
      throw new ConfigError(`network.${k}`, "unknown field; known fields: mode, internet");
  }
  const o = v as { mode?: unknown; internet?: unknown };
  const mode = o.mode === undefined ? "user" : oneOf("network.mode", o.mode, NETWORK_MODES);
  if (mode === "none") {
    if (o.internet !== undefined && o.internet !== "off") {
      throw new ConfigError("network.internet", 'mode "none" has no network device: choose mode "user" or "tap"');
    }
    return { mode, internet: "off" };
  }
  const internet = resolveInternet(o.internet);
  checkPolicyForMode(mode, internet);
  return { mode, internet };
}

/** What a mode can enforce: domain allowlists need SmolVM's resolver, which only tap mode has. */
export function checkPolicyForMode(mode: NetworkMode, internet: ResolvedInternet): void {
  if (mode === "user" && typeof internet === "object" && internet.allowDomains.length) {
    throw new ConfigError(
      "network.internet.allowDomains",
      'needs mode "tap" (user mode forwards DNS as it is; it cannot tie addresses to names): use allowCidrs or tap',
    );
  }
}

/** A VM record written before networking existed has no `network`: it has none. */
export function networkOf(c: ResolvedVMConfig): ResolvedNetwork {
  return c.network ?? { mode: "none", internet: "off" };
}
