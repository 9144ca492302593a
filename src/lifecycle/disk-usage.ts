/**
 * Where disk space goes (`smolvm system df`): images, warm templates, snapshots (temporary ones too), VMs' disk
 * layers and caches, each item with its size on disk (allocated blocks: the files are sparse; a file with several
 * names, like a snapshot's disk layer that is also its VM's old top layer, counted once, where it is met first in
 * that order) and what `system prune --all` would free of it.
 */
import { lstatSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { overlayCacheDir } from "../backends/qemu/overlay.js";
import { blobsDir, imageDir, imagesDir, listDir, listImages, refsOf, shortId } from "../images/image-store.js";
import { kernelsDir } from "../images/kernel.js";
import { deadTemplates, diskReaders, imageUsers, listTemplates } from "../images/usage.js";
import { dataDir } from "../paths.js";
import { heldByOp } from "../sandbox/snapshots.js";
import type { StateStore } from "../state/store.js";
import { leftovers, packsDir } from "./prune.js";

export type UsageKindName = "images" | "templates" | "snapshots" | "vms" | "caches";

export interface UsageItem {
  id: string;
  name: string | null;
  path: string;
  /** Allocated bytes (each file counted once across the report). */
  bytes: number;
  /** What `system prune --all` would free of it. */
  reclaimable: number;
  /** in use | unused | stale | temporary | built-in | a VM's status ... */
  note: string;
}

export interface UsageKind {
  kind: UsageKindName;
  count: number;
  bytes: number;
  reclaimable: number;
  items: UsageItem[];
}

export interface DiskUsage {
  dataDir: string;
  stateDir: string;
  kinds: UsageKind[];
  bytes: number;
  reclaimable: number;
}

/** Allocated bytes of a tree, each inode once (`seen` spans the report); symlinks are not followed. */
function blocks(path: string, seen: Set<string>): number {
  try {
    const st = lstatSync(path);
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return 0;
    seen.add(key);
    if (st.isSymbolicLink()) return 0;
    if (!st.isDirectory()) return st.blocks * 512;
    let sum = st.blocks * 512;
    for (const n of readdirSync(path)) sum += blocks(join(path, n), seen);
    return sum;
  } catch {
    return 0;
  }
}

const inDir = (file: string, dir: string) => file.startsWith(`${resolve(dir)}/`);

export function diskUsage(store: StateStore): DiskUsage {
  const seen = new Set<string>();
  const readers = diskReaders(store);
  const read = (dir: string) => [...readers.keys()].some((f) => inDir(f, dir));
  const item = (id: string, name: string | null, path: string, note: string, free: (b: number) => number) => {
    const bytes = blocks(path, seen);
    return { id, name, path, bytes, reclaimable: Math.min(bytes, free(bytes)), note };
  };

  const images: UsageItem[] = [];
  for (const f of listDir(imagesDir()).filter((n) => /^busybox-v\d+\.ext4$/.test(n))) {
    images.push(item(f, "base", join(imagesDir(), f), "built-in", () => 0));
  }
  for (const rec of listImages()) {
    const u = imageUsers(store, rec);
    const used = u.vms.length > 0 || u.snapshots.length > 0;
    images.push(
      item(shortId(rec.id), refsOf(rec.id)[0] ?? null, imageDir(rec.id), used ? "in use" : "unused", (b) =>
        used ? 0 : b,
      ),
    );
  }

  const dead = new Set(deadTemplates(readers).map((t) => t.dir));
  const templates = listTemplates().map((t) => {
    const used = readers.has(resolve(join(t.dir, "disk.qcow2")));
    const note = used ? "in use" : dead.has(t.dir) ? "stale" : "unused";
    return item(t.dir.split("/").pop() as string, null, t.dir, note, (b) => (used ? 0 : b));
  });

  const snapshots = store.listSnapshots().map((s) => {
    const used = store.snapshotUsers(s.id);
    const unused = s.temporary && !used.vms.length && !used.snapshots.length && !heldByOp(store, s.dir);
    // a temporary snapshot still in use whose command ended: only its memory (if a killed command left it)
    const diskBytes = blocks(s.diskFile, seen);
    const rest = blocks(s.dir, seen);
    const note = s.temporary ? (unused ? "temporary, unused" : "temporary, in use") : "kept";
    const memFree = s.temporary && !heldByOp(store, s.dir) ? rest : 0;
    return {
      id: s.id,
      name: s.name,
      path: s.dir,
      bytes: diskBytes + rest,
      reclaimable: unused ? diskBytes + rest : memFree,
      note,
    };
  });

  const vms = store.list().map((v) => item(v.id, v.name, v.vmDir, v.status, () => 0));

  const caches: UsageItem[] = [
    item("blobs", "OCI layer cache", blobsDir(), "cache", (b) => b),
    item("kernels", "guest kernels", kernelsDir(), "cache", () => 0),
    item("agent", "agent builds", join(dataDir(), "agent"), "cache", () => 0),
    item("initrd", "initramfs builds", join(dataDir(), "initrd"), "cache", () => 0),
    item("overlays", "empty disk layers to copy", overlayCacheDir(), "cache", (b) => b),
    ...listDir(packsDir(store)).map((n) => {
      const dir = join(packsDir(store), n);
      const used = read(dir) || heldByOp(store, dir);
      return item(`pack-${n}`, "unpacked .smolmachine", dir, used ? "in use" : "unused", (b) => (used ? 0 : b));
    }),
    ...leftovers().map((p) => item(p.split("/").pop() as string, "left by a killed process", p, "stale", (b) => b)),
  ];

  const kinds: UsageKind[] = (
    [
      ["images", images],
      ["templates", templates],
      ["snapshots", snapshots],
      ["vms", vms],
      ["caches", caches],
    ] as const
  ).map(([kind, items]) => ({
    kind,
    count: items.length,
    bytes: items.reduce((n, i) => n + i.bytes, 0),
    reclaimable: items.reduce((n, i) => n + i.reclaimable, 0),
    items,
  }));
  return {
    dataDir: dataDir(),
    stateDir: store.dir,
    kinds,
    bytes: kinds.reduce((n, k) => n + k.bytes, 0),
    reclaimable: kinds.reduce((n, k) => n + k.reclaimable, 0),
  };
}
