import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BackendUnavailableError } from "../../errors.js";
import { dataDir } from "../../paths.js";
import { which } from "../../util/run.js";

/** The QEMU system emulator for this host's architecture (`SMOLVM_QEMU` overrides). */
export function qemuBinary(): string | null {
  if (process.env.SMOLVM_QEMU) return process.env.SMOLVM_QEMU;
  return which(process.arch === "arm64" ? "qemu-system-aarch64" : "qemu-system-x86_64");
}

export function requireQemu(): string {
  const q = qemuBinary();
  if (!q) {
    throw new BackendUnavailableError(
      "qemu",
      "qemu-system-x86_64 not found; run 'npx smolvm setup' (or apt-get install qemu-system-x86 qemu-utils)",
    );
  }
  return q;
}

export function qemuVersion(bin: string): string | null {
  const r = spawnSync(bin, ["--version"], { encoding: "utf8", timeout: 5000 });
  return /version (\S+)/.exec(r.stdout)?.[1] ?? null;
}

/** Accelerators this QEMU build was compiled with. */
export function qemuAccels(bin: string): string[] {
  const r = spawnSync(bin, ["-accel", "help"], { encoding: "utf8", timeout: 5000 });
  return r.stdout
    .split("\n")
    .slice(1)
    .map((s) => s.trim())
    .filter(Boolean);
}

export interface QemuFeatures {
  rom: boolean;
  runWith: boolean;
  version: string | null;
}

const features = new Map<string, QemuFeatures>();

/**
 * What this QEMU build can do: `rom` (QEMU 8.2+: a memory backend file opened read-only but mapped writable and
 * private, so a VM never holds a shared RAM file writable) and `runWith` (`-run-with user=`, the successor of
 * `-runas`, QEMU 8.1+). Asking QEMU takes two runs of it (about 0.1 s), so the answer is kept per binary (its path,
 * size and time) in the process and in the data dir: every boot needs it, and a CLI command is a new process.
 */
export function qemuFeatures(bin: string): QemuFeatures {
  const st = statSync(bin);
  const key = `${bin}|${st.size}|${st.mtimeMs}`;
  let f = features.get(key);
  if (f) return f;
  const file = join(dataDir(), "qemu-features.json");
  try {
    const cached = JSON.parse(readFileSync(file, "utf8")) as QemuFeatures & { key: string };
    if (cached.key === key) f = { rom: cached.rom === true, runWith: cached.runWith === true, version: cached.version };
  } catch {
    // not asked yet
  }
  if (!f) {
    const help = spawnSync(bin, ["-object", "memory-backend-file,help"], { encoding: "utf8", timeout: 5000 });
    const version = qemuVersion(bin);
    const [major = 0, minor = 0] = (version ?? "0.0").split(".").map((n) => Number.parseInt(n, 10));
    f = { rom: /\brom=/.test(help.stdout), runWith: major > 8 || (major === 8 && minor >= 1), version };
    try {
      mkdirSync(dataDir(), { recursive: true });
      const tmp = `${file}.tmp-${process.pid}`;
      writeFileSync(tmp, JSON.stringify({ ...f, key }), { mode: 0o600 });
      renameSync(tmp, file);
    } catch {
      // asked again next time
    }
  }
  features.set(key, f);
  return f;
}
