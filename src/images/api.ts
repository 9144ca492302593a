/** The image store as the SDK shows it (`import { images } from "smolvm"`); the CLI's `image` commands use the same. */
import { ImageError } from "../errors.js";
import { StateStore } from "../state/store.js";
import { type Progress, silent } from "../util/run.js";
import { type ImageRecord, listImages, refsOf, rootfsOf } from "./image-store.js";
import { ensurePreset, PRESET_NAMES, PRESETS } from "./presets.js";
import { type ImportOptions, importImage, type PullOptions, pullImage } from "./pull.js";
import { matchImage } from "./resolve.js";
import { ensureDefaultImage } from "./store.js";
import { type ImageUsers, imageUsers, type PruneResult, pruneImages, removeImage } from "./usage.js";

/** An image in the store, as `list` and `inspect` show it. */
export interface ImageInfo {
  id: string;
  /** The names pointing at it (`python`, `docker.io/library/python:3.12-slim`). */
  names: string[];
  source: ImageRecord["source"];
  origin: string;
  manifestDigest: string | null;
  platform: string | null;
  /** Bytes of files, and the (sparse) size of its file system. */
  contentBytes: number;
  sizeBytes: number;
  rootfs: string;
  layers: string[];
  config: ImageRecord["config"];
  createdAt: string;
}

export function imageInfo(rec: ImageRecord): ImageInfo {
  return {
    id: rec.id,
    names: refsOf(rec.id).map((n) => n.replace(/^preset:/, "")),
    source: rec.source,
    origin: rec.origin,
    manifestDigest: rec.manifestDigest,
    platform: rec.platform,
    contentBytes: rec.contentBytes,
    sizeBytes: rec.sizeBytes,
    rootfs: rootfsOf(rec.id),
    layers: rec.layers,
    config: rec.config,
    createdAt: rec.createdAt,
  };
}

/** The image named `name` (preset, reference or id) in the store, or an ImageError saying how to get it. */
export function mustFindImage(name: string): ImageRecord {
  return mustMatch(name).record;
}

function mustMatch(name: string): NonNullable<ReturnType<typeof matchImage>> {
  const m = matchImage(name);
  if (!m) {
    throw new ImageError(
      `no image ${JSON.stringify(name)} in the store ('smolvm image list' shows them; 'smolvm image pull' fetches one)`,
    );
  }
  return m;
}

export const images = {
  /** Pull an OCI image (`python:3.12-slim`, `registry:5000/app@sha256:...`) into the store. */
  async pull(ref: string, opts: PullOptions = {}): Promise<ImageInfo> {
    return imageInfo(await pullImage(ref, opts));
  },
  /** Build a preset (`python`, `node`; `base` is built in) now instead of on first use. */
  async build(preset: string, opts: { progress?: Progress } = {}): Promise<ImageInfo | null> {
    if (preset === "base") {
      await ensureDefaultImage(opts.progress ?? silent);
      return null;
    }
    if (!Object.hasOwn(PRESETS, preset)) {
      throw new ImageError(`unknown preset ${JSON.stringify(preset)}; presets: ${PRESET_NAMES.join(", ")}`);
    }
    return imageInfo(await ensurePreset(preset, opts.progress));
  },
  /** Import a root file system from a tar (plain, gzip or zstd) or a folder. */
  async import(path: string, opts: ImportOptions = {}): Promise<ImageInfo> {
    return imageInfo(await importImage(path, opts));
  },
  list(): ImageInfo[] {
    return listImages().map(imageInfo);
  },
  /** An image and what uses it: VMs, snapshots and warm templates. */
  inspect(name: string): ImageInfo & { usedBy: ImageUsers } {
    const rec = mustFindImage(name);
    return { ...imageInfo(rec), usedBy: imageUsers(StateStore.open(), rec) };
  },
  /**
   * Remove an image (refused while VMs or snapshots use it, naming them). A name that is one of several pointing at
   * the image only loses that name: `removed` is false then.
   */
  remove(name: string): { id: string; removed: boolean } {
    const { record, ref } = mustMatch(name);
    const r = removeImage(StateStore.open(), record, ref);
    return { id: record.id, removed: r.removed };
  },
  /** Remove unused warm templates, layers and build leftovers; with `all`, every image nothing uses. */
  prune(opts: { all?: boolean } = {}): PruneResult {
    return pruneImages(StateStore.open(), opts);
  },
};

export type { ImageUsers, ImportOptions, PruneResult, PullOptions };
