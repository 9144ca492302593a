/**
 * The `.smolmachine` file: one self-contained file to move a sandbox around.
 *
 *   "SMOLMACHINE\0"  magic (12 bytes)
 *   u32 BE           format version
 *   u32 BE           manifest length M
 *   M bytes          manifest (JSON)
 *   sections         stored back to back; offsets in the manifest count from the end of the manifest
 *
 * Sections: kernel, initrd, disk (the VM's disk flattened to one sparse qcow2), and optionally mem (the QEMU
 * migration stream, or Firecracker's memory file) with, on Firecracker, vmstate (its device state). Each is zstd-compressed and carries the sha256 of its stored bytes, checked before anything
 * boots, so a truncated or corrupted file is refused with the section named. The manifest is signed with this
 * host's pack key (pack-key.ts).
 *
 * Every pack is read as hostile input: the manifest is validated field by field (pack-manifest.ts), sections are
 * extracted under fixed names into a fresh private directory with O_EXCL, decompression is bounded by the declared
 * sizes (pack-io.ts), and the disk must be a self-contained qcow2 (qcow2.ts).
 */
import { createHash } from "node:crypto";
import {
  closeSync,
  constants,
  createReadStream,
  createWriteStream,
  fstatSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  renameSync,
  rmSync,
  type Stats,
  statfsSync,
  statSync,
  type WriteStream,
} from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { readAt } from "../util/fs.js";
import { readRange, sha256Range, unzstdToFile, zstdCompress } from "./pack-io.js";
import { hostPackKey, signManifest } from "./pack-key.js";
import {
  checkSectionsFit,
  MAX_MANIFEST,
  PACK_VERSION,
  PackError,
  type PackManifest,
  type PackSection,
  SECTION_FILES,
  SECTION_NAMES,
  type SectionName,
  validateManifest,
} from "./pack-manifest.js";
import { checkSelfContainedQcow2, UnsafeQcow2Error } from "./qcow2.js";

export {
  PACK_VERSION,
  PackError,
  type PackManifest,
  type PackSection,
  type PackSignature,
  SECTION_FILES,
  SECTION_MAX_SIZE,
  SECTION_NAMES,
  type SectionName,
} from "./pack-manifest.js";

export const PACK_MAGIC = Buffer.from("SMOLMACHINE\0", "latin1");
const HEAD = 20;
/** Free space left over on the destination after extracting. */
const FREE_MARGIN = 512 * 1024 * 1024;

/**
 * Write a pack from plain files, signed with `signWith` (default: this host's pack key; null: unsigned). Written to
 * a private temporary file (mode 0600) and renamed, so `out` is never half a file.
 */
export async function writePack(
  out: string,
  files: Partial<Record<SectionName, string>>,
  meta: Omit<PackManifest, "formatVersion" | "createdAt" | "sections" | "diskFormat" | "signature">,
  workDir: string,
  signWith: Buffer | null = hostPackKey(),
  /** Told about each temporary folder before it is filled; the function it returns is called once it is gone. */
  recordTemp: TempRecorder = () => () => {},
): Promise<PackManifest> {
  const sections: PackSection[] = [];
  const stored: string[] = [];
  let offset = 0;
  for (const name of SECTION_NAMES) {
    const src = files[name];
    if (!src) continue;
    const z = join(workDir, `${name}.zst`);
    const hash = createHash("sha256");
    await zstdCompress(src, z);
    await pipeline(createReadStream(z), async (chunks: AsyncIterable<Buffer>) => {
      for await (const c of chunks) hash.update(c);
    });
    const length = statSync(z).size;
    sections.push({ name, offset, length, size: statSync(src).size, sha256: hash.digest("hex"), compression: "zstd" });
    stored.push(z);
    offset += length;
  }
  const unsigned = {
    ...meta,
    formatVersion: PACK_VERSION,
    createdAt: new Date().toISOString(),
    diskFormat: "qcow2",
    sections,
  };
  // The same checks a reader makes, on a JSON round trip: what is signed is exactly what a reader gets back.
  const manifest = validateManifest(out, JSON.parse(JSON.stringify(unsigned)));
  if (signWith) manifest.signature = signManifest(manifest, signWith);
  const json = Buffer.from(JSON.stringify(manifest, null, 2));
  if (json.length > MAX_MANIFEST) throw new PackError(out, `manifest of ${json.length} bytes is too large`);
  const head = Buffer.alloc(HEAD);
  PACK_MAGIC.copy(head, 0);
  head.writeUInt32BE(PACK_VERSION, 12);
  head.writeUInt32BE(json.length, 16);
  const tmpDir = mkdtempSync(join(dirname(out), ".smolmachine-"));
  const forget = recordTemp(tmpDir);
  const tmp = join(tmpDir, basename(out));
  let sink: WriteStream | null = null;
  try {
    sink = createWriteStream(tmp, { fd: openSync(tmp, "wx", 0o600) });
    sink.on("error", () => {}); // seen by the pipelines and end() below
    sink.write(head);
    sink.write(json);
    for (const z of stored) {
      await pipeline(createReadStream(z), sink, { end: false });
    }
    const done = sink;
    await new Promise<void>((resolve, reject) => done.end((e?: Error | null) => (e ? reject(e) : resolve())));
    renameSync(tmp, out);
  } catch (e) {
    sink?.destroy();
    throw e;
  } finally {
    rmSync(tmpDir, { recursive: true, force: true });
    forget();
  }
  return manifest;
}

/** Records a temporary path (so that it is removed even if this process is killed); returns "it is gone now". */
export type TempRecorder = (path: string) => () => void;

/** Header and manifest of an open pack, every field checked; where sections start in the file. */
function readHead(file: string, fd: number, st: Stats): { manifest: PackManifest; dataStart: number } {
  if (!st.isFile()) throw new PackError(file, "not a regular file");
  const head = readAt(fd, 0, HEAD);
  if (head.length < HEAD || !head.subarray(0, 12).equals(PACK_MAGIC)) {
    throw new PackError(file, "bad magic (not a .smolmachine file)");
  }
  const version = head.readUInt32BE(12);
  if (version !== PACK_VERSION)
    throw new PackError(file, `format version ${version}, this SmolVM reads ${PACK_VERSION}`);
  const mlen = head.readUInt32BE(16);
  if (mlen > MAX_MANIFEST || HEAD + mlen > st.size) {
    throw new PackError(file, "manifest length out of range (truncated?)");
  }
  const json = readAt(fd, HEAD, mlen);
  if (json.length < mlen) throw new PackError(file, "manifest runs past the end of the file (truncated?)");
  let raw: unknown;
  try {
    raw = JSON.parse(json.toString("utf8"));
  } catch {
    throw new PackError(file, "manifest is not valid JSON (corrupted)");
  }
  const manifest = validateManifest(file, raw);
  const dataStart = HEAD + mlen;
  checkSectionsFit(file, manifest, dataStart, st.size);
  return { manifest, dataStart };
}

/** Read and check the header and manifest (no section checksums); where sections start in the file. */
export function readPackManifest(file: string): { manifest: PackManifest; dataStart: number } {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK); // O_NONBLOCK: a FIFO cannot block us
  } catch (e) {
    throw new PackError(file, (e as Error).message);
  }
  try {
    return readHead(file, fd, fstatSync(fd));
  } finally {
    closeSync(fd);
  }
}

async function openPack(file: string): Promise<{ h: FileHandle; manifest: PackManifest; dataStart: number }> {
  let h: FileHandle;
  try {
    h = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new PackError(file, (e as Error).message);
  }
  try {
    return { h, ...readHead(file, h.fd, fstatSync(h.fd)) };
  } catch (e) {
    await h.close();
    throw e;
  }
}

const runsPast = (file: string, s: PackSection) => () =>
  new PackError(file, `section ${s.name} runs past the end of the file (truncated?)`);

async function verifySections(file: string, h: FileHandle, m: PackManifest, dataStart: number): Promise<void> {
  for (const s of m.sections) {
    const got = await sha256Range(h, dataStart + s.offset, s.length, runsPast(file, s));
    if (got !== s.sha256) throw new PackError(file, `section ${s.name} is corrupted (sha256 mismatch)`);
  }
}

/** Verify the manifest and every section's checksum. */
export async function verifyPack(file: string): Promise<PackManifest> {
  const { h, manifest, dataStart } = await openPack(file);
  try {
    await verifySections(file, h, manifest, dataStart);
    return manifest;
  } finally {
    await h.close();
  }
}

/** Refuse a pack whose extracted disk is not a self-contained qcow2 (a backing or data file would be host files). */
export async function checkPackDisk(file: string, disk: string): Promise<void> {
  try {
    await checkSelfContainedQcow2(disk);
  } catch (e) {
    if (!(e instanceof UnsafeQcow2Error)) throw e;
    const tail = e.reason.startsWith("names") ? ": packs must be self-contained" : "";
    throw new PackError(file, `its disk ${e.reason}${tail}`);
  }
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

/**
 * Verify a pack and decompress its sections into the new directory `dir` (which must not exist), then check its
 * disk is self-contained. Sections are written under fixed names into a fresh private directory next to `dir`,
 * renamed into place when all is well and removed when not. If another process extracted the same pack to `dir`
 * meanwhile, its copy is kept. With `expect`, the file's manifest must be that one (read earlier by the caller, who
 * chose `dir` by it). Returns the paths.
 */
export async function extractPack(
  file: string,
  dir: string,
  expect?: PackManifest,
  recordTemp: TempRecorder = () => () => {},
): Promise<{ manifest: PackManifest } & Partial<Record<SectionName, string>>> {
  const { h, manifest, dataStart } = await openPack(file);
  try {
    if (expect && JSON.stringify(expect) !== JSON.stringify(manifest)) {
      throw new PackError(file, "it changed while being read");
    }
    await verifySections(file, h, manifest, dataStart);
    if (lstatOrNull(dir)) throw new PackError(file, `cannot extract into ${dir}: it already exists`);
    const parent = dirname(dir);
    mkdirSync(parent, { recursive: true, mode: 0o700 });
    const need = manifest.sections.reduce((n, s) => n + s.size, 0);
    const fs = statfsSync(parent);
    const free = fs.bavail * fs.bsize;
    if (need + FREE_MARGIN > free) {
      throw new PackError(
        file,
        `its sections need ${need} bytes, but ${parent} has ${free} bytes free (keeping ${FREE_MARGIN} spare)`,
      );
    }
    const tmp = mkdtempSync(join(parent, `.${basename(dir)}.extract-`));
    const forget = recordTemp(tmp);
    try {
      for (const s of manifest.sections) {
        const hash = createHash("sha256");
        const bytes = readRange(h, dataStart + s.offset, s.length, runsPast(file, s));
        const hashed = (async function* () {
          for await (const b of bytes) {
            hash.update(b);
            yield b;
          }
        })();
        const fail = (why: string) => new PackError(file, `section ${s.name}: ${why}`);
        await unzstdToFile(hashed, join(tmp, SECTION_FILES[s.name]), s.size, fail);
        // Checked again while extracting: the file may have changed since it was verified.
        if (hash.digest("hex") !== s.sha256)
          throw new PackError(file, `section ${s.name} is corrupted (sha256 mismatch)`);
      }
      await checkPackDisk(file, join(tmp, SECTION_FILES.disk));
      try {
        renameSync(tmp, dir);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        const there = lstatOrNull(dir);
        if (!(there?.isDirectory() && (code === "ENOTEMPTY" || code === "EEXIST"))) {
          throw new PackError(file, `cannot extract into ${dir}: ${code ?? (e as Error).message}`);
        }
        rmSync(tmp, { recursive: true, force: true }); // extracted by another process meanwhile
      }
      forget();
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      forget();
      throw e;
    }
  } finally {
    await h.close();
  }
  const out: Partial<Record<SectionName, string>> = {};
  for (const s of manifest.sections) out[s.name] = join(dir, SECTION_FILES[s.name]);
  return { manifest, ...out };
}
