import { createHash } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, realpathSync, statSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { SmolVMError } from "./errors.js";

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
 * `SMOLVM_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/smolvm`, else `/run/smolvm` for root (a directory no other user can
 * create first), else `/tmp/smolvm-<uid>` (checked at every use: see `ensurePrivateDir`).
 */
export function runtimeDir(): string {
  if (process.env.SMOLVM_RUNTIME_DIR) return process.env.SMOLVM_RUNTIME_DIR;
  if (process.env.XDG_RUNTIME_DIR) return join(process.env.XDG_RUNTIME_DIR, "smolvm");
  const uid = process.getuid?.() ?? 0;
  if (uid === 0 && process.platform === "linux" && isDirOwnedBy("/run", 0)) return "/run/smolvm";
  return join(tmpdir(), `smolvm-${uid}`);
}

function isDirOwnedBy(dir: string, uid: number): boolean {
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === uid && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

const myUid = () => process.getuid?.() ?? 0;

function refuse(dir: string, why: string): never {
  throw new SmolVMError(
    `refusing to use ${dir}: ${why}. Another local user may have prepared it to intercept your VMs' sockets; ` +
      "remove it, or set SMOLVM_RUNTIME_DIR to a directory only you can write",
  );
}

/**
 * The directories above one of ours must not let another user swap what is below: each is owned by root or by us,
 * and if others may write to it, it is sticky (like /tmp). Symlinks on the way are followed (e.g. /var/run -> /run)
 * but must themselves be owned by root or us.
 */
function checkAncestors(dir: string): void {
  const me = myUid();
  let cur = "/";
  for (const part of resolve(dir).split("/").filter(Boolean)) {
    const next = join(cur, part);
    let st = lstatSync(next);
    if (st.isSymbolicLink()) {
      if (st.uid !== 0 && st.uid !== me) refuse(dir, `${next} is a symlink owned by uid ${st.uid}`);
      st = statSync(next);
    }
    if (!st.isDirectory()) refuse(dir, `${next} is not a directory`);
    if (st.uid !== 0 && st.uid !== me) refuse(dir, `${next} is owned by uid ${st.uid}`);
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
      refuse(dir, `${next} can be written by other users and is not sticky`);
    }
    cur = realpathSync(next);
  }
}

/** One directory of ours: a real directory (not a symlink), owned by us, no access for anyone else. */
function checkOwn(dir: string, fix: boolean): void {
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) refuse(dir, "it is a symlink");
  if (!st.isDirectory()) refuse(dir, "it is not a directory");
  if (st.uid !== myUid()) refuse(dir, `it is owned by uid ${st.uid}, not by this user (${myUid()})`);
  if ((st.mode & 0o077) !== 0) {
    // group or others could have written into it: what it holds cannot be trusted
    if ((st.mode & 0o022) !== 0 || !fix) refuse(dir, `its mode is ${(st.mode & 0o777).toString(8)}, not 700`);
    chmodSync(dir, 0o700); // only readable by others: ours, just too open
  }
}

/**
 * Make sure `dir` is ours alone, creating it (0700) if needed: every directory from the runtime root (or `dir`
 * itself when it lies elsewhere) down to `dir` is a real directory owned by this user with mode 0700, and every
 * directory above is owned by root or this user and not writable by others unless sticky. Fails closed.
 */
export function ensurePrivateDir(dir: string, base = privateBase(dir)): string {
  dir = resolve(dir);
  base = resolve(base);
  checkAncestors(dirname(base));
  const chain: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    chain.unshift(d);
    if (d === base || d === dirname(d)) break;
  }
  for (const d of chain) {
    try {
      mkdirSync(d, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    checkOwn(d, true);
  }
  return dir;
}

/** Check, without creating anything, that `dir` is still ours alone (before connecting to a socket in it). */
export function checkPrivateDir(dir: string): void {
  dir = resolve(dir);
  const base = resolve(privateBase(dir));
  checkAncestors(dirname(base));
  for (let d = dir; ; d = dirname(d)) {
    checkOwn(d, false);
    if (d === base || d === dirname(d)) break;
  }
}

function privateBase(dir: string): string {
  const root = resolve(runtimeDir());
  const d = resolve(dir);
  return d === root || d.startsWith(`${root}/`) ? root : d;
}

/** The private folder of one VM's sockets and pid files (short: socket paths are limited to 107 bytes). */
export const vmRunDir = (vmId: string, state = stateDir()) =>
  join(runtimeDir(), createHash("sha256").update(`${state}\0${vmId}`).digest("hex").slice(0, 16));

/** The package's root folder (holds guest/, dist/, package.json). */
export function packageRoot(): string {
  // this file is dist/src/paths.js
  return new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
}
