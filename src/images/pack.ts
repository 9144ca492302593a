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
 * migration stream). Each is zstd-compressed and carries the sha256 of its stored bytes, checked before anything
 * boots, so a truncated or corrupted file is refused with the section named.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  createReadStream,
  createWriteStream,
  mkdirSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { SmolVMError } from "../errors.js";
import { which } from "../util/run.js";

export const PACK_MAGIC = Buffer.from("SMOLMACHINE\0", "latin1");
export const PACK_VERSION = 1;
const MAX_MANIFEST = 1 << 20;

export type SectionName = "kernel" | "initrd" | "disk" | "mem";

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

export interface PackManifest {
  formatVersion: number;
  createdAt: string;
  config: { vcpuCount: number; memSizeMib: number; bootArgs: string; env: Record<string, string> };
  backend: string;
  /** Identity of the VMM that wrote `mem`; memory is only restored by the same one. */
  vmm: string;
  accel: string;
  /** Kernel command-line hostname the memory state was captured with. */
  hostname: string;
  diskFormat: "qcow2";
  sections: PackSection[];
}

export class PackError extends SmolVMError {
  constructor(
    readonly file: string,
    reason: string,
  ) {
    super(`${file}: not a usable .smolmachine file: ${reason}`);
  }
}

function zstdBin(): string {
  const z = which("zstd");
  if (!z) throw new SmolVMError("zstd is needed for .smolmachine files; run 'npx smolvm setup' (package zstd)");
  return z;
}

/** Run zstd on a file, writing `out`; resolves when it exited 0 and everything is written. */
async function zstd(args: string[], input: string, out: string): Promise<void> {
  const child = spawn(zstdBin(), [...args, "-c", input], { stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  await pipeline(child.stdout, createWriteStream(out));
  const code = await exited;
  if (code !== 0) throw new SmolVMError(`zstd failed: ${err.trim()}`);
}

async function sha256File(path: string, start = 0, length?: number): Promise<string> {
  const h = createHash("sha256");
  if (length === 0) return h.digest("hex");
  const end = length === undefined ? undefined : start + length - 1;
  await pipeline(createReadStream(path, { start, end }), async (src: AsyncIterable<Buffer>) => {
    for await (const chunk of src) h.update(chunk);
  });
  return h.digest("hex");
}

/** Write a pack from plain files. Written to a temporary name and renamed, so `out` is never half a file. */
export async function writePack(
  out: string,
  files: Partial<Record<SectionName, string>>,
  meta: Omit<PackManifest, "formatVersion" | "createdAt" | "sections" | "diskFormat">,
  workDir: string,
): Promise<PackManifest> {
  const sections: PackSection[] = [];
  const stored: string[] = [];
  let offset = 0;
  for (const name of ["kernel", "initrd", "disk", "mem"] as SectionName[]) {
    const src = files[name];
    if (!src) continue;
    const z = join(workDir, `${name}.zst`);
    await zstd(["-q", "-T0", "-3"], src, z);
    const length = statSync(z).size;
    sections.push({ name, offset, length, size: statSync(src).size, sha256: await sha256File(z), compression: "zstd" });
    stored.push(z);
    offset += length;
  }
  const manifest: PackManifest = {
    ...meta,
    formatVersion: PACK_VERSION,
    createdAt: new Date().toISOString(),
    diskFormat: "qcow2",
    sections,
  };
  const json = Buffer.from(JSON.stringify(manifest, null, 2));
  const head = Buffer.alloc(20);
  PACK_MAGIC.copy(head, 0);
  head.writeUInt32BE(PACK_VERSION, 12);
  head.writeUInt32BE(json.length, 16);
  const tmp = `${out}.tmp-${process.pid}`;
  const sink = createWriteStream(tmp);
  try {
    sink.write(head);
    sink.write(json);
    for (const z of stored) {
      await pipeline(createReadStream(z), sink, { end: false });
    }
    await new Promise<void>((resolve, reject) => sink.end((e?: Error | null) => (e ? reject(e) : resolve())));
    renameSync(tmp, out);
  } catch (e) {
    sink.destroy();
    rmSync(tmp, { force: true });
    throw e;
  }
  return manifest;
}

/** Read and check the header and manifest (no section checksums); where sections start in the file. */
export function readPackManifest(file: string): { manifest: PackManifest; dataStart: number } {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    throw new PackError(file, (e as Error).message);
  }
  try {
    const size = statSync(file).size;
    const head = Buffer.alloc(20);
    if (readSync(fd, head, 0, 20, 0) < 20 || !head.subarray(0, 12).equals(PACK_MAGIC)) {
      throw new PackError(file, "bad magic (not a .smolmachine file)");
    }
    const version = head.readUInt32BE(12);
    if (version !== PACK_VERSION)
      throw new PackError(file, `format version ${version}, this SmolVM reads ${PACK_VERSION}`);
    const mlen = head.readUInt32BE(16);
    if (mlen > MAX_MANIFEST || 20 + mlen > size) throw new PackError(file, "manifest length out of range (truncated?)");
    const json = Buffer.alloc(mlen);
    readSync(fd, json, 0, mlen, 20);
    let manifest: PackManifest;
    try {
      manifest = JSON.parse(json.toString("utf8"));
    } catch {
      throw new PackError(file, "manifest is not valid JSON (corrupted)");
    }
    const dataStart = 20 + mlen;
    if (!Array.isArray(manifest.sections)) throw new PackError(file, "manifest has no sections");
    for (const need of ["kernel", "initrd", "disk"]) {
      if (!manifest.sections.some((s) => s.name === need)) throw new PackError(file, `missing section ${need}`);
    }
    for (const s of manifest.sections) {
      const ok = [s.offset, s.length, s.size].every((n) => Number.isSafeInteger(n) && n >= 0);
      if (!ok || dataStart + s.offset + s.length > size) {
        throw new PackError(file, `section ${s.name} runs past the end of the file (truncated?)`);
      }
      if (!/^[0-9a-f]{64}$/.test(s.sha256)) throw new PackError(file, `section ${s.name} has no valid checksum`);
    }
    const c = manifest.config;
    if (!c || !Number.isInteger(c.vcpuCount) || !Number.isInteger(c.memSizeMib)) {
      throw new PackError(file, "manifest config is incomplete");
    }
    return { manifest, dataStart };
  } finally {
    closeSync(fd);
  }
}

/** Verify every section's checksum. */
export async function verifyPack(file: string): Promise<PackManifest> {
  const { manifest, dataStart } = readPackManifest(file);
  for (const s of manifest.sections) {
    const got = await sha256File(file, dataStart + s.offset, s.length);
    if (got !== s.sha256) throw new PackError(file, `section ${s.name} is corrupted (sha256 mismatch)`);
  }
  return manifest;
}

/** Decompress the sections into `dir` (verifying first); returns the paths. */
export async function extractPack(
  file: string,
  dir: string,
): Promise<{ manifest: PackManifest } & Partial<Record<SectionName, string>>> {
  const manifest = await verifyPack(file);
  const { dataStart } = readPackManifest(file);
  const tmp = `${dir}.tmp-${process.pid}`;
  mkdirSync(tmp, { recursive: true, mode: 0o700 });
  const out: Partial<Record<SectionName, string>> = {};
  try {
    for (const s of manifest.sections) {
      const dest = join(tmp, s.name === "disk" ? "disk.qcow2" : s.name);
      const child = spawn(zstdBin(), ["-d", "-q", "-c"], { stdio: ["pipe", "pipe", "inherit"] });
      const done = pipeline(child.stdout, createWriteStream(dest));
      await pipeline(
        createReadStream(file, { start: dataStart + s.offset, end: dataStart + s.offset + s.length - 1 }),
        child.stdin,
      );
      await done;
      if (statSync(dest).size !== s.size) throw new PackError(file, `section ${s.name} did not decompress to its size`);
      out[s.name] = join(dir, s.name === "disk" ? "disk.qcow2" : s.name);
    }
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // extracted by another process meanwhile
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return { manifest, ...out };
}
