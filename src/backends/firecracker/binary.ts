/**
 * Finding the `firecracker` and `jailer` binaries, asking their version, and whether the API client speaks it.
 *
 * The client (api.ts, bodies.ts) is written against Firecracker's OpenAPI description v1.17.0-dev
 * (test/fixtures/firecracker-api.yaml). What the backend sends (sequence.ts) needs v1.12.0: a clone's restore names
 * its own TAP with `network_overrides` on `PUT /snapshot/load`, added in v1.12.0 (Firecracker refuses unknown
 * fields). Its vsock socket and drive are bare file names resolved in each clone's own folder, so it never needs
 * `vsock_override` (v1.16.0), and it sets the guest's clock itself, so never `clock_realtime` (v1.16.0) either: the
 * client can build those bodies, the backend does not send them. Firecracker keeps its API backward-compatible
 * within a major version, so the supported range is >= 1.12.0 and < 2.0.0.
 */
import { spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { which } from "../../util/run.js";

/** Where a Firecracker binary is looked for, in order: `SMOLVM_FIRECRACKER_BIN`, `PATH`, `~/.local/bin`. */
export const FIRECRACKER_SEARCH = "SMOLVM_FIRECRACKER_BIN, PATH, ~/.local/bin";

/** The API version of the vendored spec the client is written against. */
export const FIRECRACKER_API_VERSION = "1.17.0-dev";
/** Oldest Firecracker whose API has every field the backend sends (`network_overrides` on snapshot load). */
export const FIRECRACKER_MIN_VERSION = "1.12.0";
/** First Firecracker major version the client does not speak. */
export const FIRECRACKER_MAX_MAJOR = 2;

export const localBinDir = () => join(homedir(), ".local", "bin");

export function firecrackerBinary(): string | null {
  const env = process.env.SMOLVM_FIRECRACKER_BIN;
  if (env) return existsSync(env) ? env : null;
  const local = join(localBinDir(), "firecracker");
  return which("firecracker") ?? (existsSync(local) ? local : null);
}

/** The jailer: `SMOLVM_JAILER_BIN`, else beside the firecracker binary, else `PATH`, else `~/.local/bin`. */
export function jailerBinary(firecracker = firecrackerBinary()): string | null {
  const env = process.env.SMOLVM_JAILER_BIN;
  if (env) return existsSync(env) ? env : null;
  if (firecracker) {
    const beside = join(dirname(firecracker), "jailer");
    if (existsSync(beside)) return beside;
  }
  const local = join(localBinDir(), "jailer");
  return which("jailer") ?? (existsSync(local) ? local : null);
}

export type Semver = [number, number, number];

export function parseSemver(v: string): Semver | null {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

/** a < b: negative, equal: 0, a > b: positive (pre-release suffixes ignored). */
export function compareSemver(a: string, b: string): number {
  const x = parseSemver(a);
  const y = parseSemver(b);
  if (!x || !y) throw new Error(`not a version: ${x ? b : a}`);
  for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return (x[i] as number) - (y[i] as number);
  return 0;
}

/** The version in `firecracker --version` output ("Firecracker v1.12.1"), or null if it is not there. */
export function parseFirecrackerVersion(output: string, program = "Firecracker"): string | null {
  const m = new RegExp(`^${program} v(\\d+\\.\\d+\\.\\d+(?:-[0-9A-Za-z.-]+)?)\\s*$`, "m").exec(output);
  return m ? (m[1] as string) : null;
}

export interface VersionProbe {
  /** The version, e.g. "1.12.1"; null when the program did not print one. */
  version: string | null;
  /** What went wrong (could not run, timed out, printed something else), printable and short. */
  error: string | null;
}

const printable = (s: string) =>
  s
    .replace(/[^\x20-\x7e]+/g, " ")
    .trim()
    .slice(0, 200);

/** Run `bin --version` (5 s at most, 64 KiB of output at most) and read the version it prints. */
export function probeVersion(bin: string, program = "Firecracker"): VersionProbe {
  const r = spawnSync(bin, ["--version"], {
    encoding: "utf8",
    timeout: 5000,
    killSignal: "SIGKILL",
    maxBuffer: 64 << 10,
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    const why = code === "ETIMEDOUT" ? "did not answer --version within 5 s" : `cannot run it: ${r.error.message}`;
    return { version: null, error: why };
  }
  const version = parseFirecrackerVersion(r.stdout ?? "", program);
  if (version) return { version, error: null };
  const said = printable(`${r.stdout ?? ""} ${r.stderr ?? ""}`);
  return {
    version: null,
    error: `'${bin} --version' printed ${said ? JSON.stringify(said) : "nothing"} (exit ${r.status ?? r.signal}), not "${program} vX.Y.Z"`,
  };
}

const versions = new Map<string, VersionProbe>();

/** `probeVersion`, remembered per binary path, size and mtime (platformDefault asks on every create). */
export function firecrackerProbe(bin: string): VersionProbe {
  let key = bin;
  try {
    const s = statSync(bin);
    key = `${bin}\0${s.size}\0${s.mtimeMs}`;
  } catch {
    return { version: null, error: `${bin} does not exist` };
  }
  const hit = versions.get(key);
  if (hit) return hit;
  const probe = probeVersion(bin);
  versions.set(key, probe);
  return probe;
}

export const firecrackerVersion = (bin: string): string | null => firecrackerProbe(bin).version;

/** Null if the client speaks this Firecracker version, else why not. */
export function checkFirecrackerVersion(version: string): string | null {
  const v = parseSemver(version);
  if (!v) return `cannot read Firecracker version ${JSON.stringify(version)}`;
  const range = `>= ${FIRECRACKER_MIN_VERSION} and < ${FIRECRACKER_MAX_MAJOR}.0.0`;
  if (compareSemver(version, FIRECRACKER_MIN_VERSION) < 0) {
    return `Firecracker v${version} is older than this client supports (${range}; it sends API fields added in v${FIRECRACKER_MIN_VERSION})`;
  }
  if (v[0] >= FIRECRACKER_MAX_MAJOR) {
    return `Firecracker v${version} is a newer major version than this client speaks (${range}; API ${FIRECRACKER_API_VERSION})`;
  }
  return null;
}
