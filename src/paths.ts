import { mkdirSync, statSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";

/** Where images, kernels and the agent binary live (`SMOLVM_DATA_DIR`, else `$XDG_DATA_HOME/smolvm`). */
export function dataDir(): string {
  if (process.env.SMOLVM_DATA_DIR) return process.env.SMOLVM_DATA_DIR;
  const xdg = process.env.XDG_DATA_HOME || join(homedir(), ".local", "share");
  return join(xdg, "smolvm");
}

/** Where the SQLite database and per-VM disks live (`SMOLVM_STATE_DIR`, else `$XDG_STATE_HOME/smolvm`). */
export function stateDir(): string {
  if (process.env.SMOLVM_STATE_DIR) return process.env.SMOLVM_STATE_DIR;
  const xdg = process.env.XDG_STATE_HOME || join(homedir(), ".local", "state");
  return join(xdg, "smolvm");
}

/**
 * Where sockets and pid files live. Unix socket paths are limited to 107 bytes, so this is kept short:
 * `SMOLVM_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/smolvm`, else `/tmp/smolvm-<uid>`.
 */
export function runtimeDir(): string {
  if (process.env.SMOLVM_RUNTIME_DIR) return process.env.SMOLVM_RUNTIME_DIR;
  if (process.env.XDG_RUNTIME_DIR) return join(process.env.XDG_RUNTIME_DIR, "smolvm");
  const uid = process.getuid?.() ?? 0;
  return join(tmpdir(), `smolvm-${uid}`);
}

/** mkdir -p with a mode, and refuse a directory someone else owns (a planted /tmp folder). */
export function ensurePrivateDir(dir: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = statSync(dir);
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) {
    throw new Error(`${dir} is owned by uid ${st.uid}, not by this user (${uid}); refusing to use it`);
  }
  return dir;
}

/** The package's root folder (holds guest/, dist/, package.json). */
export function packageRoot(): string {
  // this file is dist/src/paths.js
  return new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
}
