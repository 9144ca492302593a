/**
 * The `.smolmachine` manifest: its types, and the checks that turn a hostile file's JSON into a manifest every field
 * of which can be used as is. Every refusal is a `PackError` naming the file and the field or section.
 */
import { ACCELS, LIMITS, resolveLabels } from "../config.js";
import { SmolVMError } from "../errors.js";

export const PACK_VERSION = 1;
export const MAX_MANIFEST = 1 << 20;

/** `vmstate`: Firecracker's device state, beside its memory file `mem` (a QEMU state stream is `mem` alone). */
export const SECTION_NAMES = ["kernel", "initrd", "disk", "mem", "vmstate"] as const;
export type SectionName = (typeof SECTION_NAMES)[number];

/** The name each section is written under when extracted: fixed, never taken from the file. */
export const SECTION_FILES: Readonly<Record<SectionName, string>> = {
  kernel: "kernel",
  initrd: "initrd",
  disk: "disk.qcow2",
  mem: "mem",
  // where Firecracker's backend looks for the state of a memory file (stateFileOf in backends/firecracker/vmm.ts)
  vmstate: "mem.vmstate",
};

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The largest original size a section may declare. */
export const SECTION_MAX_SIZE: Readonly<Record<SectionName, number>> = {
  kernel: 256 * MiB,
  initrd: 1 * GiB,
  mem: 17 * GiB,
  vmstate: 64 * MiB,
  disk: 1024 * GiB,
};

export interface PackSection {
  name: SectionName;
  /** Offset of the stored bytes, counted from the end of the manifest. */
  offset: number;
  /** Stored (compressed) length. */
  length: number;
  /** Original length. */
  size: number;
  sha256: string;
  compression: "zstd";
}

/** HMAC of the manifest without this field, keyed with the host's pack key (see pack-key.ts). */
export interface PackSignature {
  alg: "hmac-sha256";
  /** First 16 hex digits of sha256(key). */
  keyId: string;
  value: string;
}

export interface PackManifest {
  formatVersion: number;
  createdAt: string;
  /** `nic`: the memory state has a network device (the VM that restores it needs one). */
  config: {
    vcpuCount: number;
    memSizeMib: number;
    bootArgs: string;
    env: Record<string, string>;
    nic?: boolean;
    labels?: Record<string, string>;
    /** The image the sandbox ran: its name and the defaults of its commands (working directory, user, command). */
    image?: PackImage;
  };
  backend: string;
  /** Identity of the VMM that wrote `mem`; memory is only restored by the same one. */
  vmm: string;
  accel: string;
  /** Kernel command-line hostname the memory state was captured with. */
  hostname: string;
  diskFormat: "qcow2";
  sections: PackSection[];
  signature?: PackSignature;
}

export class PackError extends SmolVMError {
  constructor(
    readonly file: string,
    reason: string,
  ) {
    super(`${file}: not a usable .smolmachine file: ${reason}`);
  }
}

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A value from the file, quoted and cut short for an error message (it may hold anything). */
export function shown(v: unknown): string {
  let s: string;
  try {
    s = JSON.stringify(v) ?? String(v);
  } catch {
    s = String(v);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HOSTNAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const HEX64_RE = /^[0-9a-f]{64}$/;
const HEX16_RE = /^[0-9a-f]{16}$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
export const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;

export interface PackImage {
  ref: string;
  workingDir?: string;
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
}

/** The `config.image` of a pack, checked like everything else in it (a pack may come from anyone). */
function validateImage(v: unknown, bad: (field: string, why: string) => never): PackImage | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) bad("config.image", "is not an object");
  const o = v as Obj;
  const str = (k: string, max: number): string | undefined => {
    const x = o[k];
    if (x === undefined) return undefined;
    if (typeof x !== "string" || x.length === 0 || x.length > max || CONTROL_RE.test(x)) {
      bad(`config.image.${k}`, `must be a printable string of 1-${max} characters, got ${shown(x)}`);
    }
    return x as string;
  };
  const list = (k: string): string[] | undefined => {
    const x = o[k];
    if (x === undefined) return undefined;
    if (
      !Array.isArray(x) ||
      x.length > 256 ||
      !x.every((e) => typeof e === "string" && !e.includes("\0") && e.length <= 4096)
    ) {
      bad(`config.image.${k}`, "must be a list of at most 256 strings");
    }
    return x as string[];
  };
  const ref = str("ref", 512);
  if (ref === undefined) bad("config.image.ref", "is missing");
  const out: PackImage = { ref: ref as string };
  const wd = str("workingDir", 4096);
  const user = str("user", 256);
  const ep = list("entrypoint");
  const cmd = list("cmd");
  if (wd) out.workingDir = wd;
  if (user) out.user = user;
  if (ep) out.entrypoint = ep;
  if (cmd) out.cmd = cmd;
  return out;
}

/**
 * Check a parsed manifest field by field and return a clean copy holding only the known fields. Section positions
 * are checked against each other here (no overlap); against the file's size by `checkSectionsFit`.
 */
export function validateManifest(file: string, raw: unknown): PackManifest {
  const bad = (field: string, why: string): never => {
    throw new PackError(file, `manifest field ${field} ${why}`);
  };
  if (!isObj(raw)) bad("(root)", "is not an object");
  const m = raw as Obj;
  if (m.formatVersion !== PACK_VERSION) bad("formatVersion", `is ${shown(m.formatVersion)}, not ${PACK_VERSION}`);
  const text = (field: string, v: unknown, max: number): string => {
    if (typeof v !== "string" || v.length === 0 || v.length > max || CONTROL_RE.test(v)) {
      bad(field, `must be a printable string of 1-${max} characters, got ${shown(v)}`);
    }
    return v as string;
  };
  const createdAt = text("createdAt", m.createdAt, 64);
  if (!isObj(m.config)) bad("config", "is not an object");
  const c = m.config as Obj;
  const int = (field: string, v: unknown, [lo, hi]: readonly [number, number]): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
      bad(field, `must be an integer from ${lo} to ${hi}, got ${shown(v)}`);
    }
    return v as number;
  };
  const vcpuCount = int("config.vcpuCount", c.vcpuCount, LIMITS.vcpuCount);
  const memSizeMib = int("config.memSizeMib", c.memSizeMib, LIMITS.memSizeMib);
  const bootArgs = c.bootArgs;
  if (typeof bootArgs !== "string" || /[\0\n\r]/.test(bootArgs) || Buffer.byteLength(bootArgs) > 4096) {
    bad("config.bootArgs", "must be a single-line string of at most 4096 bytes");
  }
  if (!isObj(c.env)) bad("config.env", "is not an object");
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(c.env as Obj)) {
    if (!ENV_KEY_RE.test(k) || k === "__proto__") bad(`config.env`, `has an invalid variable name ${shown(k)}`);
    if (typeof v !== "string" || v.includes("\0")) bad(`config.env.${k}`, "must be a string without NUL bytes");
    env[k] = v as string;
  }
  if (c.nic !== undefined && typeof c.nic !== "boolean")
    bad("config.nic", `must be true or false, got ${shown(c.nic)}`);
  const image = validateImage(c.image, bad);
  let labels: Record<string, string> | undefined;
  try {
    labels = c.labels === undefined ? undefined : resolveLabels(c.labels, "config.labels");
  } catch (e) {
    bad("config.labels", (e as Error).message.replace(/^config\.labels[^:]*: /, ""));
  }
  const backend = text("backend", m.backend, 64);
  const vmm = text("vmm", m.vmm, 256);
  if (typeof m.accel !== "string" || !(ACCELS as readonly string[]).includes(m.accel)) {
    bad("accel", `must be one of ${ACCELS.join(" | ")}, got ${shown(m.accel)}`);
  }
  if (typeof m.hostname !== "string" || !HOSTNAME_RE.test(m.hostname)) {
    bad("hostname", `must be 1-63 lowercase letters, digits or dashes, got ${shown(m.hostname)}`);
  }
  if (m.diskFormat !== "qcow2") bad("diskFormat", `must be "qcow2", got ${shown(m.diskFormat)}`);
  const manifest: PackManifest = {
    formatVersion: PACK_VERSION,
    createdAt,
    config: {
      vcpuCount,
      memSizeMib,
      bootArgs: bootArgs as string,
      env,
      ...(c.nic === true ? { nic: true } : {}),
      ...(image ? { image } : {}),
      ...(labels && Object.keys(labels).length ? { labels } : {}),
    },
    backend,
    vmm,
    accel: m.accel as string,
    hostname: m.hostname as string,
    diskFormat: "qcow2",
    sections: validateSections(file, m.sections),
  };
  if (m.signature !== undefined) {
    const s = m.signature;
    if (!isObj(s) || s.alg !== "hmac-sha256") bad("signature", "is not an hmac-sha256 signature");
    const sig = s as Obj;
    if (typeof sig.keyId !== "string" || !HEX16_RE.test(sig.keyId)) bad("signature.keyId", "is not 16 hex digits");
    if (typeof sig.value !== "string" || !HEX64_RE.test(sig.value)) bad("signature.value", "is not 64 hex digits");
    manifest.signature = { alg: "hmac-sha256", keyId: sig.keyId as string, value: sig.value as string };
  }
  return manifest;
}

function validateSections(file: string, raw: unknown): PackSection[] {
  if (!Array.isArray(raw)) throw new PackError(file, "manifest field sections is not an array");
  const out: PackSection[] = [];
  // Entry by entry first, so the refusal names the bad section: a fifth entry is a duplicate or unknown.
  raw.forEach((s: unknown, i: number) => {
    if (!isObj(s)) throw new PackError(file, `manifest field sections[${i}] is not an object`);
    const name = s.name;
    if (typeof name !== "string" || !(SECTION_NAMES as readonly string[]).includes(name)) {
      throw new PackError(file, `unknown section ${shown(name)} (known: ${SECTION_NAMES.join(", ")})`);
    }
    const n = name as SectionName;
    if (out.some((o) => o.name === n)) throw new PackError(file, `duplicate section ${n}`);
    for (const f of ["offset", "length", "size"] as const) {
      const v = s[f];
      if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
        throw new PackError(file, `section ${n}: ${f} must be an integer >= 0, got ${shown(v)}`);
      }
    }
    const size = s.size as number;
    if (size > SECTION_MAX_SIZE[n]) {
      throw new PackError(file, `section ${n} declares ${size} bytes, more than the ${SECTION_MAX_SIZE[n]} allowed`);
    }
    if (typeof s.sha256 !== "string" || !HEX64_RE.test(s.sha256)) {
      throw new PackError(file, `section ${n} has no valid checksum`);
    }
    if (s.compression !== "zstd") {
      throw new PackError(file, `section ${n}: compression must be "zstd", got ${shown(s.compression)}`);
    }
    out.push({
      name: n,
      offset: s.offset as number,
      length: s.length as number,
      size,
      sha256: s.sha256,
      compression: "zstd",
    });
  });
  if (out.length > SECTION_NAMES.length) {
    throw new PackError(file, `manifest field sections has ${out.length} entries, at most ${SECTION_NAMES.length}`);
  }
  for (const need of ["kernel", "initrd", "disk"] as const) {
    if (!out.some((s) => s.name === need)) throw new PackError(file, `missing section ${need}`);
  }
  if (out.some((s) => s.name === "vmstate") && !out.some((s) => s.name === "mem")) {
    throw new PackError(file, "section vmstate without section mem (the memory it describes)");
  }
  const byOffset = [...out].sort((a, b) => a.offset - b.offset);
  let end = 0;
  let last = "";
  for (const s of byOffset) {
    if (s.length > 0 && s.offset < end) throw new PackError(file, `section ${s.name} overlaps section ${last}`);
    if (s.offset + s.length > end) {
      end = s.offset + s.length;
      last = s.name;
    }
  }
  return out;
}

/** Every section lies inside a file of `fileSize` bytes whose sections start at `dataStart`. */
export function checkSectionsFit(file: string, m: PackManifest, dataStart: number, fileSize: number): void {
  for (const s of m.sections) {
    if (dataStart + s.offset + s.length > fileSize) {
      throw new PackError(file, `section ${s.name} runs past the end of the file (truncated?)`);
    }
  }
}
