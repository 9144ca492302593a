/**
 * The host's pack key: 32 random bytes that sign the manifest of every `.smolmachine` file written here, so a pack
 * from elsewhere can be told apart from one this host wrote. A pack's memory is a QEMU migration stream (input to a
 * large parser); it is restored only from packs signed with this key, unless the caller says it trusts the file.
 *
 * The key lives in `<dataDir>/keys/pack-hmac.key` (directory 0700, file 0600), is created atomically (written to a
 * private temp name opened with O_EXCL, then hard-linked into place: the loser of a race reads the winner's key) and
 * is refused when it is a symlink, not owned by this user, readable by others or not 32 bytes long.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import {
  chmodSync,
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { SmolVMError } from "../errors.js";
import { dataDir } from "../paths.js";
import type { PackManifest, PackSignature } from "./pack-manifest.js";

const KEY_BYTES = 32;

export function packKeyPath(): string {
  return join(dataDir(), "keys", "pack-hmac.key");
}

function keyError(path: string, why: string): SmolVMError {
  return new SmolVMError(`pack key ${path}: ${why}; refusing to use it (remove it to make a new one)`);
}

function privateKeysDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  if (!st.isDirectory()) throw keyError(dir, "is not a directory");
  if (uid !== undefined && st.uid !== uid) throw keyError(dir, `is owned by uid ${st.uid}, not ${uid}`);
  if ((st.mode & 0o777) !== 0o700) chmodSync(dir, 0o700);
}

/** Read and check the key file; null when there is none. */
function readKey(path: string): Buffer | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return null;
    if (code === "ELOOP") throw keyError(path, "is a symlink");
    throw keyError(path, (e as Error).message);
  }
  try {
    const st = fstatSync(fd);
    const uid = process.getuid?.();
    if (!st.isFile()) throw keyError(path, "is not a regular file");
    if (uid !== undefined && st.uid !== uid) throw keyError(path, `is owned by uid ${st.uid}, not ${uid}`);
    if ((st.mode & 0o077) !== 0) throw keyError(path, `is readable by others (mode ${(st.mode & 0o777).toString(8)})`);
    if (st.size !== KEY_BYTES) throw keyError(path, `holds ${st.size} bytes, not ${KEY_BYTES}`);
    const key = Buffer.alloc(KEY_BYTES);
    if (readSync(fd, key, 0, KEY_BYTES, 0) !== KEY_BYTES) throw keyError(path, "could not be read");
    return key;
  } finally {
    closeSync(fd);
  }
}

/** This host's pack key; made on first use when `create` (default), else null when there is none yet. */
export function hostPackKey(opts: { create?: boolean } = {}): Buffer | null {
  const path = packKeyPath();
  const existing = readKey(path);
  if (existing || opts.create === false) return existing;
  const dir = join(dataDir(), "keys");
  privateKeysDir(dir);
  const tmp = join(dir, `.pack-hmac.key.${randomBytes(8).toString("hex")}`);
  const fd = openSync(tmp, "wx", 0o600);
  let open = true;
  try {
    writeSync(fd, randomBytes(KEY_BYTES));
    fsyncSync(fd);
    closeSync(fd);
    open = false;
    try {
      linkSync(tmp, path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e; // another process made it first: use theirs
    }
  } finally {
    if (open) closeSync(fd);
    unlinkSync(tmp);
  }
  const key = readKey(path);
  if (!key) throw keyError(path, "vanished after it was made");
  return key;
}

export function packKeyId(key: Buffer): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 16);
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(o)
        .sort()
        .map((k) => [k, sortKeys(o[k])]),
    );
  }
  return v;
}

/** What is signed: the manifest without its signature, as JSON with every object's keys sorted. */
export function canonicalManifest(m: PackManifest): string {
  const { signature: _, ...rest } = m;
  return JSON.stringify(sortKeys(rest));
}

export function signManifest(m: PackManifest, key: Buffer): PackSignature {
  return {
    alg: "hmac-sha256",
    keyId: packKeyId(key),
    value: createHmac("sha256", key).update(canonicalManifest(m)).digest("hex"),
  };
}

/** Whether the manifest carries a valid signature made with `key`. */
export function manifestSignedWith(m: PackManifest, key: Buffer): boolean {
  const sig = m.signature;
  if (sig?.alg !== "hmac-sha256" || sig.keyId !== packKeyId(key)) return false;
  const want = createHmac("sha256", key).update(canonicalManifest(m)).digest();
  const got = Buffer.from(sig.value, "hex");
  return got.length === want.length && timingSafeEqual(got, want);
}

/** Whether this host signed the manifest, and if not, why (for a notice). Never throws. */
export function hostSignature(m: PackManifest): { signed: boolean; why: string } {
  if (!m.signature) return { signed: false, why: "it is not signed" };
  let key: Buffer | null;
  try {
    key = hostPackKey({ create: false });
  } catch (e) {
    return { signed: false, why: `this host's pack key is unusable (${(e as Error).message})` };
  }
  if (!key) return { signed: false, why: "it was signed on another host" };
  if (m.signature.keyId !== packKeyId(key)) return { signed: false, why: "it was signed on another host" };
  if (!manifestSignedWith(m, key)) return { signed: false, why: "its signature does not match its manifest" };
  return { signed: true, why: "signed by this host" };
}
