/**
 * The local image store, under the data dir. Files only (no database), so every process sees one store and every
 * change is one rename:
 *   images/<id>/image.json        what the image is (source, digests, OCI config, sizes)
 *   images/<id>/rootfs.ext4       its root file system (sparse), the base of every VM's disk layer
 *   images/<id>/rootfs-<N>M.ext4  the same grown to N MiB, made on first use of `diskSizeMib: N`
 *   images/refs/<hash>.json       a name (`docker.io/library/python:3.12-slim`, `preset:python`) pointing at an id
 *   blobs/sha256/<hex>            OCI layers, shared by every image that has them
 * An image directory is built beside its final name and renamed into place: two processes building one image both
 * succeed, and one copy is kept.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir } from "../paths.js";

/** Bump when the conversion of images to root file systems changes: images of another format are rebuilt. */
export const IMAGE_FORMAT = 1;

export type ImageSource = "builtin" | "preset" | "oci" | "import";

/** The parts of an image's OCI config that SmolVM honours. */
export interface ImageRunConfig {
  env: Record<string, string>;
  workingDir?: string;
  user?: string;
  entrypoint?: string[];
  cmd?: string[];
}

export interface ImageRecord {
  /** 64 hex digits: for an OCI image, its config digest (as Docker shows it); else a hash of how it was made. */
  id: string;
  source: ImageSource;
  /** The name it was first made from (`docker.io/library/python:3.12-slim`, `preset:python`, `import:<file>`). */
  origin: string;
  /** OCI: the digest of the platform's manifest. */
  manifestDigest: string | null;
  /** OCI: the digests of its layers, lowest first (blobs/sha256/...). */
  layers: string[];
  platform: string | null;
  config: ImageRunConfig;
  /** Bytes of files in the root file system, and the file system's (sparse) size. */
  contentBytes: number;
  sizeBytes: number;
  /** Whether /bin/sh exists (commands given as strings and the terminal need it). */
  hasShell: boolean;
  format: number;
  createdAt: string;
}

export const imagesDir = () => join(dataDir(), "images");
export const blobsDir = () => join(dataDir(), "blobs");
const refsDir = () => join(imagesDir(), "refs");
export const imageDir = (id: string) => join(imagesDir(), id);
export const rootfsOf = (id: string) => join(imageDir(id), "rootfs.ext4");
const ID_RE = /^[0-9a-f]{64}$/;

export const shortId = (id: string) => id.slice(0, 12);

/** A stable id for an image made from a recipe (presets, imports). */
export function recipeId(recipe: unknown): string {
  return createHash("sha256").update(JSON.stringify(recipe)).digest("hex");
}

function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`, { mode: 0o644 });
  renameSync(tmp, path);
}

/** The image with this id, if it is complete and of the current format. */
export function getImage(id: string): ImageRecord | null {
  if (!ID_RE.test(id)) return null;
  try {
    const rec = JSON.parse(readFileSync(join(imageDir(id), "image.json"), "utf8")) as ImageRecord;
    if (rec.id !== id || rec.format !== IMAGE_FORMAT || !existsSync(rootfsOf(id))) return null;
    return rec;
  } catch {
    return null;
  }
}

/** Every complete image. */
export function listImages(): ImageRecord[] {
  return listDir(imagesDir())
    .map((n) => getImage(n))
    .filter((r): r is ImageRecord => r !== null);
}

const refFile = (name: string) =>
  join(refsDir(), `${createHash("sha256").update(name).digest("hex").slice(0, 32)}.json`);

/** Point `name` at image `id` (replacing what it pointed at: a tag moves when pulled again). */
export function setRef(name: string, id: string): void {
  mkdirSync(refsDir(), { recursive: true });
  writeJsonAtomic(refFile(name), { name, id });
}

export function removeRef(name: string): boolean {
  try {
    rmSync(refFile(name));
    return true;
  } catch {
    return false;
  }
}

/** The id a name points at, if the image is still there. */
export function refTarget(name: string): string | null {
  try {
    const { id } = JSON.parse(readFileSync(refFile(name), "utf8")) as { id: string };
    return getImage(id) ? id : null;
  } catch {
    return null;
  }
}

/** Every name and the id it points at. */
export function listRefs(): { name: string; id: string }[] {
  const files = listDir(refsDir()).filter((f) => f.endsWith(".json"));
  const out: { name: string; id: string }[] = [];
  for (const f of files) {
    try {
      const r = JSON.parse(readFileSync(join(refsDir(), f), "utf8")) as { name: string; id: string };
      if (typeof r.name === "string" && typeof r.id === "string") out.push(r);
    } catch {
      // being replaced, or damaged: ignored
    }
  }
  return out;
}

export const refsOf = (id: string) =>
  listRefs()
    .filter((r) => r.id === id)
    .map((r) => r.name);

/** An image by full id, or by a unique prefix of at least 12 hex digits (`sha256:` allowed). */
export function imageByIdPrefix(text: string): ImageRecord | null {
  const m = /^(?:sha256:)?([0-9a-f]{12,64})$/.exec(text);
  if (!m?.[1]) return null;
  const prefix = m[1];
  const hits = listImages().filter((r) => r.id.startsWith(prefix));
  if (hits.length > 1)
    throw new ImageError(`image id ${text} is ambiguous: ${hits.map((h) => shortId(h.id)).join(", ")}`);
  return hits[0] ?? null;
}

/** A private directory to build image `id` in, beside its final place. */
export function stagingDir(id: string): string {
  mkdirSync(imagesDir(), { recursive: true });
  const dir = join(imagesDir(), `.build-${id.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`);
  mkdirSync(dir, { mode: 0o755 });
  return dir;
}

/**
 * Move a built image (its staging dir holds rootfs.ext4) into place and write its record. If another process
 * published the same image meanwhile, theirs is kept and ours dropped. Returns the record in the store.
 */
export function publishImage(staging: string, rec: ImageRecord): ImageRecord {
  writeJsonAtomic(join(staging, "image.json"), rec);
  const dest = imageDir(rec.id);
  const old = getImage(rec.id);
  if (old) {
    rmSync(staging, { recursive: true, force: true });
    return old;
  }
  // a directory of this id that is not a usable image (damaged, or of another format) is never replaced in place:
  // VMs, snapshots and templates may sit on its file system
  try {
    renameSync(staging, dest);
  } catch (e) {
    rmSync(staging, { recursive: true, force: true });
    const theirs = getImage(rec.id); // another process published it meanwhile
    if (theirs) return theirs;
    throw new ImageError(
      `cannot publish image ${shortId(rec.id)}: ${dest} exists but is not a usable image ` +
        `(${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); remove it with 'smolvm image rm ${shortId(rec.id)}'`,
    );
  }
  return rec;
}

/** Remove an image's files (callers check that nothing uses it). */
export function deleteImageFiles(id: string): void {
  const dir = imageDir(id);
  // renamed away first, so no reader sees a half-deleted image
  const gone = join(imagesDir(), `.delete-${id.slice(0, 16)}-${process.pid}-${randomBytes(4).toString("hex")}`);
  try {
    renameSync(dir, gone);
  } catch {
    return;
  }
  rmSync(gone, { recursive: true, force: true });
}

/** Allocated bytes of a file or a directory tree (sparse files count what they use). */
export function allocatedBytes(path: string): number {
  try {
    const st = statSync(path);
    if (!st.isDirectory()) return st.blocks * 512;
    let sum = 0;
    for (const n of readdirSync(path)) sum += allocatedBytes(join(path, n));
    return sum;
  } catch {
    return 0;
  }
}

/** A directory's names, or none if it cannot be read. */
export function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Whether a process with this pid exists (zombies included: their files are still being released). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Staging directories left by builds whose process died (`.build-*` of a pid that is gone). */
export function staleStaging(): string[] {
  return listDir(imagesDir())
    .filter((n) => n.startsWith(".build-") || n.startsWith(".delete-"))
    .filter((n) => {
      const pid = Number(n.split("-")[2]);
      return !Number.isInteger(pid) || pid <= 0 || !pidAlive(pid);
    })
    .map((n) => join(imagesDir(), n));
}
