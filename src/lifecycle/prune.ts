/**
 * `smolvm system prune`: remove what nothing needs, never anything a VM or a kept snapshot uses (their disk chains
 * are read from the qcow2 headers: images/usage.ts). VMs themselves are never removed, whatever their state.
 *   always   temporary snapshots nobody is layered on (and the memory a killed fork or pack left in one still in
 *            use), warm templates nothing can restore from again (their image gone or changed, an older SmolVM),
 *            layer blobs no image lists, staging left by killed builds and captures, damaged image folders
 *   --all    also every warm template and image no VM or snapshot uses (rebuilt or pulled again on demand), the
 *            whole layer blob cache, and unpacked `.smolmachine` files no VM uses (unpacked again on demand)
 *   both     the empty disk layers kept to copy for new VMs (backends/qemu/overlay.ts): those whose base is gone;
 *            with --all every one (made again on demand)
 */
import { readFileSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { pruneOverlayCache } from "../backends/qemu/overlay.js";
import { allocatedBytes, blobsDir, imagesDir, listDir, pidAlive, staleStaging } from "../images/image-store.js";
import { backingFile, diskReaders, listTemplates, pruneImages, warmDir } from "../images/usage.js";
import { collectTemporary, heldByOp } from "../sandbox/snapshots.js";
import "../sandbox/templates.js"; // sets the template version that tells stale templates apart
import type { StateStore } from "../state/store.js";
import { dropMemory } from "./temp-snapshot.js";

export interface SystemPruneResult {
  /** Temporary snapshots removed. */
  snapshots: string[];
  /** Temporary snapshots still in use whose memory (left by a killed fork or pack) was removed. */
  snapshotMemory: string[];
  images: string[];
  templates: string[];
  /** Layer blobs removed (sha256 hex). */
  blobs: string[];
  /** Unpacked .smolmachine folders removed. */
  packs: string[];
  /** Staging and temporary folders left by killed processes. */
  leftovers: string[];
  /** Kept empty disk layers removed (their base gone; all of them with --all). */
  overlays: string[];
  bytes: number;
}

export const packsDir = (store: StateStore) => join(store.dir, "packs");

/** Temporary folders of warm-template captures whose process is gone (`<key>.tmp-<pid>-<time>`), and stale staging. */
export function leftovers(): string[] {
  const warm = listDir(warmDir())
    .filter((n) => {
      const pid = Number(/\.tmp-(\d+)-/.exec(n)?.[1]);
      return pid > 0 && !pidAlive(pid);
    })
    .map((n) => join(warmDir(), n));
  return [...staleStaging(), ...warm];
}

/** Layers that builds under way (their staging dir lists them before fetching) are about to apply. */
function buildingLayers(): Set<string> {
  const out = new Set<string>();
  for (const n of listDir(imagesDir()).filter((d) => d.startsWith(".build-"))) {
    try {
      for (const d of JSON.parse(readFileSync(join(imagesDir(), n, "layers.json"), "utf8")) as unknown[]) {
        out.add(String(d).replace(/^sha256:/, ""));
      }
    } catch {
      // a preset or import build: no layers
    }
  }
  return out;
}

const inDir = (file: string, dir: string) => file.startsWith(`${resolve(dir)}/`);

export function systemPrune(store: StateStore, opts: { all?: boolean } = {}): SystemPruneResult {
  const out: SystemPruneResult = {
    snapshots: [],
    snapshotMemory: [],
    images: [],
    templates: [],
    blobs: [],
    packs: [],
    leftovers: [],
    overlays: [],
    bytes: 0,
  };
  const drop = (path: string) => {
    out.bytes += allocatedBytes(path);
    rmSync(path, { recursive: true, force: true });
  };

  for (const p of leftovers()) {
    drop(p);
    out.leftovers.push(p);
  }

  // temporary snapshots: unused ones go (with temporary parents they leave unused); in-use ones keep their disk only
  for (const s of store.listSnapshots()) {
    if (!s.temporary || !store.getSnapshot(s.id)) continue;
    const bytes = allocatedBytes(s.dir);
    const gone = collectTemporary(store, s.id);
    if (gone.length) {
      out.snapshots.push(...gone);
      out.bytes += bytes;
      continue;
    }
    if (s.memBytes >= 0 && !heldByOp(store, s.dir)) {
      out.bytes += dropMemory(store, s);
      out.snapshotMemory.push(s.id);
    }
  }

  const r = pruneImages(store, { all: opts.all === true });
  out.images.push(...r.images);
  out.templates.push(...r.templates);
  out.blobs.push(...r.blobs);
  out.bytes += r.bytes;

  const layers = pruneOverlayCache(opts.all === true, backingFile);
  out.overlays.push(...layers.files);
  out.bytes += layers.bytes;

  if (opts.all) {
    const readers = diskReaders(store);
    const read = (dir: string) => [...readers.keys()].some((f) => inDir(f, dir));
    for (const t of listTemplates()) {
      if (read(t.dir)) continue;
      drop(t.dir);
      out.templates.push(t.dir);
    }
    const dir = join(blobsDir(), "sha256");
    const building = buildingLayers();
    for (const b of listDir(dir)) {
      if (building.has(b)) continue;
      if (b.includes(".tmp-") && Date.now() - statSync(join(dir, b)).mtimeMs < 3600_000) continue; // a pull under way
      drop(join(dir, b));
      out.blobs.push(b);
    }
    for (const n of listDir(packsDir(store))) {
      const p = join(packsDir(store), n);
      if (read(p) || heldByOp(store, p)) continue;
      drop(p);
      out.packs.push(n);
    }
  }
  return out;
}
