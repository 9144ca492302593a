/**
 * Is a qcow2 file self-contained? A qcow2 image can name another file as its backing file or as its external data
 * file, and QEMU then opens that file and shows its bytes to the guest: a disk that came from elsewhere could read
 * any host file or device. The header is read here first, by hand, before any QEMU program opens the file; then
 * `qemu-img info -f qcow2` is asked as a second opinion.
 */
import { closeSync, constants, fstatSync, openSync } from "node:fs";
import { SmolVMError } from "../errors.js";
import { readAt } from "../util/fs.js";
import { runHost, which } from "../util/run.js";

/** The image is not self-contained (or not a qcow2 this code can vouch for); `reason` says why. */
export class UnsafeQcow2Error extends SmolVMError {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
  }
}

const MAGIC = 0x514649fb; // "QFI\xfb"
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_DATA_FILE = 0x44415441;
const INCOMPAT_DIRTY = 1n << 0n;
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_DATA_FILE = 1n << 2n;
const INCOMPAT_COMPRESSION = 1n << 3n;
const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_ALLOWED = INCOMPAT_DIRTY | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
const MAX_EXTENSIONS = 256;

/** A name from the file, made printable and short for a message. */
function printable(b: Buffer): string {
  const s = b.toString("latin1").replace(/[^\x20-\x7e]/g, "?");
  return s.length > 200 ? `${s.slice(0, 197)}...` : s;
}

/**
 * Read the qcow2 header of `path` and throw `UnsafeQcow2Error` unless it is a plain, unencrypted qcow2 (version 2
 * or 3) that names no backing file and no external data file.
 */
export function checkQcow2Header(path: string): void {
  const refuse = (why: string): never => {
    throw new UnsafeQcow2Error(path, why);
  };
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    throw new UnsafeQcow2Error(path, `cannot be opened (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) refuse("is not a regular file");
    const size = st.size;
    const h = readAt(fd, 0, 112);
    if (h.length < 72 || h.readUInt32BE(0) !== MAGIC) refuse("is not a qcow2 image (bad magic)");
    const version = h.readUInt32BE(4);
    if (version !== 2 && version !== 3) refuse(`is qcow2 version ${version}, not 2 or 3`);
    const backingOffset = h.readBigUInt64BE(8);
    const backingSize = h.readUInt32BE(16);
    if (backingOffset !== 0n || backingSize !== 0) {
      let name = "";
      if (backingOffset > 0n && backingSize > 0 && backingSize <= 1023 && backingOffset + BigInt(backingSize) <= size) {
        name = printable(readAt(fd, Number(backingOffset), backingSize));
      }
      refuse(`names a backing file${name ? ` (${name})` : ""}`);
    }
    const clusterBits = h.readUInt32BE(20);
    if (clusterBits < 9 || clusterBits > 21) refuse(`has cluster_bits ${clusterBits}, not 9-21`);
    const clusterSize = 1 << clusterBits;
    let headerLength = 72;
    let incompat = 0n;
    if (version === 3) {
      if (h.length < 104) refuse("has a truncated version 3 header");
      incompat = h.readBigUInt64BE(72);
      headerLength = h.readUInt32BE(100);
      if (headerLength < 104 || headerLength > clusterSize || headerLength % 8 !== 0) {
        refuse(`has a header length of ${headerLength}`);
      }
    }
    // Walk the header extensions (inside the first cluster): u32 type, u32 length, data padded to 8 bytes.
    const limit = Math.min(size, clusterSize);
    let dataFile: string | null = null;
    let pos = headerLength;
    for (let i = 0; pos + 8 <= limit; i++) {
      if (i >= MAX_EXTENSIONS) refuse(`has more than ${MAX_EXTENSIONS} header extensions`);
      const eh = readAt(fd, pos, 8);
      if (eh.length < 8) break;
      const type = eh.readUInt32BE(0);
      const len = eh.readUInt32BE(4);
      if (type === EXT_END) break;
      const padded = Math.ceil(len / 8) * 8;
      if (pos + 8 + padded > limit) refuse(`has a header extension 0x${type.toString(16)} that runs past its end`);
      if (type === EXT_DATA_FILE) dataFile = printable(readAt(fd, pos + 8, Math.min(len, 1023)));
      else if (type === EXT_BACKING_FORMAT) refuse("names a backing file format (a backing file)");
      pos += 8 + padded;
    }
    if (dataFile !== null || (incompat & INCOMPAT_DATA_FILE) !== 0n) {
      refuse(`names an external data file${dataFile ? ` (${dataFile})` : ""}`);
    }
    if ((incompat & INCOMPAT_CORRUPT) !== 0n) refuse("is marked corrupt");
    const unknown = incompat & ~INCOMPAT_ALLOWED;
    if (unknown !== 0n) refuse(`has unknown incompatible features (0x${unknown.toString(16)})`);
    const crypt = h.readUInt32BE(32);
    if (crypt !== 0) refuse(`is encrypted (crypt_method ${crypt})`);
  } finally {
    closeSync(fd);
  }
}

/** Second opinion: what `qemu-img info -f qcow2` makes of it (never probed as another format). */
export async function checkQcow2WithQemuImg(path: string): Promise<void> {
  const qemuImg = which("qemu-img");
  if (!qemuImg) throw new SmolVMError("qemu-img not found; run 'npx smolvm setup'");
  const r = await runHost(qemuImg, ["info", "--output=json", "-U", "-f", "qcow2", path], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new UnsafeQcow2Error(path, `is refused by qemu-img: ${r.stderr.trim().slice(0, 300)}`);
  let info: Record<string, unknown>;
  try {
    info = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    throw new UnsafeQcow2Error(path, "could not be read by qemu-img (no JSON)");
  }
  if (info === null || typeof info !== "object") throw new UnsafeQcow2Error(path, "could not be read by qemu-img");
  if (info.format !== "qcow2") throw new UnsafeQcow2Error(path, `is ${String(info.format)}, not qcow2`);
  for (const k of ["backing-filename", "full-backing-filename", "backing-filename-format"]) {
    if (info[k] !== undefined) throw new UnsafeQcow2Error(path, `names a backing file (${String(info[k])})`);
  }
  const fs = info["format-specific"] as { data?: Record<string, unknown> } | undefined;
  const dataFile = fs?.data?.["data-file"];
  if (dataFile !== undefined) throw new UnsafeQcow2Error(path, `names an external data file (${String(dataFile)})`);
}

/** Both checks, header first: throws `UnsafeQcow2Error` unless the image is self-contained. */
export async function checkSelfContainedQcow2(path: string): Promise<void> {
  checkQcow2Header(path);
  await checkQcow2WithQemuImg(path);
}
