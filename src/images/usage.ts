/**
 * Who uses an image, and removing what nothing uses. A VM's disk is a chain of qcow2 layers ending in an image's
 * root file system: a VM restored from a warm template sits on the template's disk, which sits on the image; a
 * snapshot keeps the VM's old top layer, which sits on the same chain. So the users of an image (and of a warm
 * template) are found by walking every VM's and snapshot's chain of backing files, read from the qcow2 headers.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir } from "../paths.js";
import { StateStore } from "../state/store.js";
import { readAt } from "../util/fs.js";
import {
  allocatedBytes,
  blobsDir,
  deleteImageFiles,
  type ImageRecord,
  imageDir,
  imagesDir,
  listDir,
  listImages,
  listRefs,
  pidAlive,
  refsOf,
  removeRef,
  shortId,
  staleStaging,
} from "./image-store.js";
import { findDefaultImage } from "./store.js";

const QCOW2_MAGIC = 0x514649fb;

/** The backing file a qcow2 file names (absolute), or null. Reads the header only. */
export function backingFile(path: string): string | null {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return null;
  }
  try {
    const h = readAt(fd, 0, 20);
    if (h.length < 20 || h.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    const off = Number(h.readBigUInt64BE(8));
    const len = h.readUInt32BE(16);
    if (off === 0 || len === 0 || len > 4096) return null;
    const name = readAt(fd, off, len).toString("utf8");
    return resolve(dirname(path), name);
  } finally {
    closeSync(fd);
  }
}

/** Every file in `path`'s chain of layers, `path` included (bounded: a chain cannot loop us forever). */
export function chainOf(path: string): string[] {
  const out: string[] = [];
  let cur: string | null = resolve(path);
  while (cur && out.length < 128 && !out.includes(cur)) {
    out.push(cur);
    cur = backingFile(cur);
  }
  return out;
}

export interface WarmTemplate {
  dir: string;
  /** The file system it was booted from (its disk's backing file). */
  base: string | null;
  bytes: number;
}

export const warmDir = () => join(dataDir(), "warm");

export function listTemplates(): WarmTemplate[] {
  return listDir(warmDir())
    .filter((n) => !n.includes(".tmp-") && !n.endsWith(".lock"))
    .map((n) => {
      const dir = join(warmDir(), n);
      return { dir, base: backingFile(join(dir, "disk.qcow2")), bytes: allocatedBytes(dir) };
    });
}

/**
 * State dirs (each its own database of VMs and snapshots) that have used this data dir's images: recorded at every
 * VM start, so `rm` and `prune` see the VMs of every state dir (`SMOLVM_STATE_DIR` may differ between programs that
 * share images), not only the caller's.
 */
const stateDirsDir = () => join(dataDir(), "state-dirs");
const registered = new Set<string>();
export function registerStateDir(dir: string): void {
  const abs = resolve(dir);
  if (registered.has(abs)) return;
  mkdirSync(stateDirsDir(), { recursive: true, mode: 0o700 });
  writeFileSync(join(stateDirsDir(), createHash("sha256").update(abs).digest("hex").slice(0, 16)), abs);
  registered.add(abs);
}

/** Every known state store that still exists (the caller's first); registrations of removed ones are dropped. */
function allStores(store: StateStore): StateStore[] {
  const out = [store];
  for (const n of listDir(stateDirsDir())) {
    const file = join(stateDirsDir(), n);
    let dir: string;
    try {
      dir = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    if (resolve(dir) === resolve(store.dir)) continue;
    if (!existsSync(join(dir, "smolvm.db"))) {
      rmSync(file, { force: true });
      continue;
    }
    try {
      out.push(StateStore.open(dir));
    } catch {
      // not ours to read (another user's): its VMs cannot be using our files
    }
  }
  return out;
}

/** The files every VM and snapshot (of every known state store) reads its disk from, and who reads each. */
export function diskReaders(store: StateStore): Map<string, string[]> {
  const readers = new Map<string, string[]>();
  const add = (who: string, disk: string | null) => {
    if (!disk || !existsSync(disk)) return;
    for (const f of chainOf(disk)) readers.set(f, [...(readers.get(f) ?? []), who]);
  };
  for (const st of allStores(store)) {
    const where = st === store ? "" : ` (state dir ${st.dir})`;
    for (const vm of st.list()) {
      add(`vm ${vm.name ?? vm.id}${where}`, vm.diskPath);
      if (vm.config.rootfsPath) add(`vm ${vm.name ?? vm.id}${where}`, vm.config.rootfsPath);
    }
    for (const s of st.listSnapshots()) add(`snapshot ${s.name ?? s.id}${where}`, s.diskFile);
  }
  return readers;
}

const inDir = (file: string, dir: string) => file.startsWith(`${resolve(dir)}/`);

export interface ImageUsers {
  vms: string[];
  snapshots: string[];
  templates: string[];
}

/** The VMs, snapshots and warm templates that read this image's file system. */
export function imageUsers(store: StateStore, rec: ImageRecord): ImageUsers {
  const dir = imageDir(rec.id);
  const users = new Set<string>();
  for (const [file, who] of diskReaders(store)) if (inDir(file, dir)) for (const w of who) users.add(w);
  for (const st of allStores(store)) {
    const where = st === store ? "" : ` (state dir ${st.dir})`;
    for (const vm of st.list()) if (vm.config.imageInfo?.id === rec.id) users.add(`vm ${vm.name ?? vm.id}${where}`);
    for (const s of st.listSnapshots()) {
      if (s.config.imageInfo?.id === rec.id) users.add(`snapshot ${s.name ?? s.id}${where}`);
    }
  }
  const list = [...users];
  return {
    vms: list.filter((u) => u.startsWith("vm ")).map((u) => u.slice(3)),
    snapshots: list.filter((u) => u.startsWith("snapshot ")).map((u) => u.slice(9)),
    templates: listTemplates()
      .filter((t) => t.base !== null && inDir(t.base, dir))
      .map((t) => t.dir),
  };
}

/**
 * Templates nothing will restore from again: their image is gone, or they were made by another version of SmolVM
 * (another template format, or another agent: the initramfs holding the agent is part of a template's key).
 */
export function deadTemplates(readers: Map<string, string[]>): WarmTemplate[] {
  const initrd = findDefaultImage()?.initrdPath;
  return listTemplates().filter((t) => {
    if (readers.has(resolve(join(t.dir, "disk.qcow2")))) return false; // a VM or snapshot sits on it
    if (!t.base || !existsSync(t.base)) return true;
    try {
      const inputs = JSON.parse(readFileSync(join(t.dir, "inputs.json"), "utf8"));
      return inputs.version !== currentTemplateVersion() || (initrd !== undefined && inputs.initrdPath !== initrd);
    } catch {
      return true; // from before templates recorded what they were made from
    }
  });
}

let templateVersion = 0;
/** Set by the template code (which imports this module), so the two agree without an import cycle. */
export function setTemplateVersion(v: number): void {
  templateVersion = v;
}
const currentTemplateVersion = () => templateVersion;

/**
 * Remove an image (by name or id). A name that is one of several pointing at the image only loses that name.
 * Refused while VMs or snapshots use it, naming them; its warm templates go with it.
 */
export function removeImage(store: StateStore, rec: ImageRecord, name: string | null): { removed: boolean } {
  const names = refsOf(rec.id);
  if (name && names.includes(name) && names.length > 1) {
    removeRef(name);
    return { removed: false };
  }
  const users = imageUsers(store, rec);
  const busy = [...users.vms.map((v) => `VM ${v}`), ...users.snapshots.map((s) => `snapshot ${s}`)];
  if (busy.length) {
    throw new ImageError(
      `image ${name ?? shortId(rec.id)} is in use by ${busy.join(", ")}: delete ${busy.length > 1 ? "them" : "it"} first`,
    );
  }
  for (const t of users.templates) rmSync(t, { recursive: true, force: true });
  for (const n of names) removeRef(n);
  deleteImageFiles(rec.id);
  return { removed: true };
}

export interface PruneResult {
  images: string[];
  templates: string[];
  blobs: string[];
  bytes: number;
}

/**
 * Remove what nothing uses: warm templates of removed or changed images (or of older SmolVM versions), layer blobs
 * no image needs, staging left by killed builds, and with `all` every image without a VM or snapshot on it.
 */
export function pruneImages(store: StateStore, opts: { all?: boolean } = {}): PruneResult {
  const out: PruneResult = { images: [], templates: [], blobs: [], bytes: 0 };
  const drop = (path: string) => {
    out.bytes += allocatedBytes(path);
    rmSync(path, { recursive: true, force: true });
  };
  for (const s of staleStaging()) drop(s);
  const readers = diskReaders(store);
  // grown copies (rootfs-<N>M.ext4) whose process was killed half-way
  for (const rec of listImages()) {
    for (const f of listDir(imageDir(rec.id))) {
      const pid = Number(/\.tmp-(\d+)-/.exec(f)?.[1]);
      if (pid && !pidAlive(pid)) drop(join(imageDir(rec.id), f));
    }
  }
  // image directories that are not usable images (damaged, or of another format) and that nothing sits on
  const usable = new Set(listImages().map((r) => r.id));
  for (const n of listDir(imagesDir())) {
    if (!/^[0-9a-f]{64}$/.test(n) || usable.has(n)) continue;
    const dir = join(imagesDir(), n);
    if ([...readers.keys()].some((f) => inDir(f, dir))) continue;
    drop(dir);
    out.images.push(shortId(n));
  }
  if (opts.all) {
    for (const rec of listImages()) {
      const u = imageUsers(store, rec);
      if (u.vms.length || u.snapshots.length) continue;
      out.bytes += allocatedBytes(imageDir(rec.id));
      for (const t of u.templates) drop(t);
      removeImage(store, rec, null);
      out.images.push(shortId(rec.id));
    }
  }
  for (const t of deadTemplates(readers)) {
    drop(t.dir);
    out.templates.push(t.dir);
  }
  // refs to images that are gone
  const ids = new Set(listImages().map((r) => r.id));
  for (const r of listRefs()) if (!ids.has(r.id)) removeRef(r.name);
  const needed = new Set(listImages().flatMap((r) => r.layers.map((d) => d.replace(/^sha256:/, ""))));
  // and those a build under way will apply (listed in its staging dir before it fetches them)
  for (const n of listDir(imagesDir()).filter((d) => d.startsWith(".build-"))) {
    try {
      for (const d of JSON.parse(readFileSync(join(imagesDir(), n, "layers.json"), "utf8")) as string[]) {
        needed.add(String(d).replace(/^sha256:/, ""));
      }
    } catch {
      // a preset or import build: no layers
    }
  }
  const dir = join(blobsDir(), "sha256");
  for (const b of listDir(dir)) {
    if (needed.has(b)) continue;
    if (b.includes(".tmp-") && Date.now() - statSync(join(dir, b)).mtimeMs < 3600_000) continue; // a pull under way
    drop(join(dir, b));
    out.blobs.push(b);
  }
  return out;
}

export { imagesDir };
