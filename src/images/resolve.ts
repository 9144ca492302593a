/**
 * `VMConfig.image` to a root file system: a preset (built on first use), a local image id, a name already in the
 * store, or an OCI reference (pulled on first use, like `docker run`). `diskSizeMib` picks (or makes) a copy of the
 * file system grown to that size.
 */
import { existsSync, statSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { ImageDefaults } from "../config.js";
import { ConfigError, ImageError } from "../errors.js";
import type { Progress } from "../util/run.js";
import { growExt4 } from "./ext4.js";
import { getImage, type ImageRecord, imageByIdPrefix, refTarget, rootfsOf } from "./image-store.js";
import { parseRef, refString } from "./oci/reference.js";
import { ensurePreset, PRESETS } from "./presets.js";
import { type PullOptions, pullImage } from "./pull.js";
import { ensureDefaultImage } from "./store.js";

const MIB = 2 ** 20;

export interface ResolvedImage {
  /** The ext4 file system VMs of this image start from (grown to `diskSizeMib` if asked). */
  rootfsPath: string;
  /** null for the built-in image. */
  record: ImageRecord | null;
  defaults: ImageDefaults | null;
  env: Record<string, string>;
}

/**
 * Find an image by the name a user gives, without building or pulling anything: the record, and the name the store
 * keeps it under when it was found by name (`python` is `preset:python`, `python:3` is `docker.io/library/python:3`;
 * null when found by id).
 */
export function matchImage(name: string): { record: ImageRecord; ref: string | null } | null {
  const named = (ref: string) => {
    const id = refTarget(ref);
    const record = id ? getImage(id) : null;
    return record ? { record, ref } : null;
  };
  if (Object.hasOwn(PRESETS, name)) return named(`preset:${name}`);
  const byId = imageByIdPrefix(name);
  if (byId) return { record: byId, ref: null };
  const direct = named(name);
  if (direct) return direct;
  try {
    return named(refString(parseRef(name)));
  } catch {
    return null;
  }
}

export const findImage = (name: string): ImageRecord | null => matchImage(name)?.record ?? null;

/** The image named `name`: found in the store, built (a preset) or pulled (an OCI reference). */
export async function obtainImage(name: string, opts: PullOptions = {}): Promise<ImageRecord> {
  if (Object.hasOwn(PRESETS, name)) return ensurePreset(name, opts.progress);
  const found = findImage(name);
  if (found) return found;
  if (/^(sha256:)?[0-9a-f]{64}$/.test(name)) throw new ImageError(`no image with id ${name} in the store`);
  return pullImage(name, opts);
}

/** The root file system and run defaults for a VM of `image` (null or `base`: the built-in busybox image). */
export async function resolveImage(
  image: string | null,
  diskSizeMib: number | null,
  progress: Progress,
): Promise<ResolvedImage> {
  if (image === null || image === "base") {
    const base = (await ensureDefaultImage(progress)).rootfsPath;
    return { rootfsPath: await sized(base, null, diskSizeMib, progress), record: null, defaults: null, env: {} };
  }
  const rec = await obtainImage(image, { progress });
  if (!rec.hasShell) {
    throw new ImageError(
      `image ${image} (${rec.id.slice(0, 12)}) has no /bin/sh: SmolVM runs commands and terminals through it; ` +
        "use an image with a shell (for a distroless image, its :debug variant)",
    );
  }
  const c = rec.config;
  const defaults: ImageDefaults = {
    id: rec.id,
    ref: rec.origin,
    ...(c.workingDir ? { workingDir: c.workingDir } : {}),
    ...(c.user ? { user: c.user } : {}),
    ...(c.entrypoint ? { entrypoint: c.entrypoint } : {}),
    ...(c.cmd ? { cmd: c.cmd } : {}),
  };
  return {
    rootfsPath: await sized(rootfsOf(rec.id), rec, diskSizeMib, progress),
    record: rec,
    defaults,
    env: c.env,
  };
}

/** The file system grown to `diskSizeMib` (made once per size, beside the image's own), or the image's own. */
async function sized(
  rootfs: string,
  rec: ImageRecord | null,
  diskSizeMib: number | null,
  progress: Progress,
): Promise<string> {
  if (diskSizeMib === null) return rootfs;
  const have = statSync(rootfs).size;
  const want = diskSizeMib * MIB;
  if (want === have) return rootfs;
  if (want < have) {
    const content = rec ? ` (${Math.ceil(rec.contentBytes / MIB)} MiB of files)` : "";
    throw new ConfigError(
      "diskSizeMib",
      `must be at least the image's own size, ${Math.ceil(have / MIB)} MiB${content}; got ${diskSizeMib}`,
    );
  }
  const out = join(dirname(rootfs), `${basename(rootfs, ".ext4")}-${diskSizeMib}M.ext4`);
  if (!existsSync(out)) {
    progress(`growing the root file system to ${diskSizeMib} MiB (once per image and size)`);
    await growExt4(rootfs, out, want);
  }
  return out;
}
