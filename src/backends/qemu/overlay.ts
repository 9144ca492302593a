/**
 * A VM's own disk layer: an empty qcow2 image on top of its base. `qemu-img create` makes it, but a process start is
 * 20-70 ms of every warm start, and the result is the same small file for every VM of one base (its header names
 * the base by path, its virtual size is the base's). So the layer `qemu-img` made is kept per base, in
 * `<data>/overlays/`, and each VM gets a copy of it: a fraction of a millisecond. The key is the base's path, format,
 * size, mtime and inode, so a base replaced at the same path gets a layer of its own. At most `KEEP` are kept (the
 * least recently used go first): a snapshot's disk layer is the base of its restores, and snapshots come and go.
 */
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, utimesSync } from "node:fs";
import { join } from "node:path";
import { SmolVMError } from "../../errors.js";
import { dataDir } from "../../paths.js";
import { mustRun, which } from "../../util/run.js";

const KEEP = 32;

/** Where the empty layers are kept (`system df` counts it, `system prune` empties it). */
export function overlayCacheDir(): string {
  return join(dataDir(), "overlays");
}

/** The file name of the empty layer over `base`, as it is now. */
function keyOf(base: string, baseFormat: string): string {
  const st = statSync(base);
  const id = JSON.stringify([base, baseFormat, st.size, st.mtimeMs, st.ino, st.dev]);
  return `${createHash("sha256").update(id).digest("hex").slice(0, 32)}.qcow2`;
}

/** Write `dest`: a new, empty qcow2 layer over `base` (a copy of the one kept for it, made the first time). */
export async function createOverlay(base: string, baseFormat: "raw" | "qcow2", dest: string): Promise<void> {
  let key: string;
  try {
    key = keyOf(base, baseFormat);
  } catch (e) {
    throw new SmolVMError(`the disk image ${base} cannot be read: ${(e as Error).message}`, { cause: e });
  }
  const dir = overlayCacheDir();
  const kept = join(dir, key);
  try {
    copyFileSync(kept, dest);
    const now = new Date();
    utimesSync(kept, now, now); // recently used
    return;
  } catch {
    // not made yet (or removed meanwhile)
  }
  const qemuImg = which("qemu-img");
  if (!qemuImg) throw new SmolVMError("qemu-img not found; run 'npx smolvm setup' (package qemu-utils)");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${key}.${process.pid}.${Math.random().toString(36).slice(2)}`);
  try {
    await mustRun(qemuImg, ["create", "-q", "-f", "qcow2", "-F", baseFormat, "-b", base, tmp]);
    copyFileSync(tmp, dest); // from the file of our own: a prune may remove the kept one at any time
    renameSync(tmp, kept); // atomic: another process making the same one at once writes the same bytes
  } finally {
    rmSync(tmp, { force: true });
  }
  prune(dir);
}

/**
 * Remove kept layers: those whose base is gone (`base` files no longer there), or all of them with `all`; and
 * temporary files a killed `qemu-img` left (older than an hour). Returns the files removed. Any of them is made again
 * on demand; a VM's own layer is a copy, never one of these.
 */
export function pruneOverlayCache(
  all: boolean,
  baseOf: (file: string) => string | null,
): { files: string[]; bytes: number } {
  const dir = overlayCacheDir();
  const out = { files: [] as string[], bytes: 0 };
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const file = join(dir, n);
    let drop: boolean;
    if (n.startsWith(".")) {
      try {
        drop = Date.now() - statSync(file).mtimeMs > 3600_000;
      } catch {
        drop = false;
      }
    } else {
      const base = baseOf(file);
      drop = all || base === null || !existsSync(base);
    }
    if (!drop) continue;
    try {
      out.bytes += statSync(file).blocks * 512;
    } catch {
      continue; // removed meanwhile
    }
    rmSync(file, { force: true });
    out.files.push(file);
  }
  return out;
}

/** Keep the `KEEP` most recently used layers. */
function prune(dir: string): void {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".qcow2") && !f.startsWith("."))
    .map((f) => {
      try {
        return { f, t: statSync(join(dir, f)).mtimeMs };
      } catch {
        return { f, t: 0 };
      }
    })
    .sort((a, b) => b.t - a.t);
  for (const { f } of files.slice(KEEP)) rmSync(join(dir, f), { force: true });
}
