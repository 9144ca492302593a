/** The last step of every image build (pull, import, preset): a file tree into a published, named image. */
import { rmSync } from "node:fs";
import { join } from "node:path";
import type { Progress } from "../util/run.js";
import { makeExt4 } from "./ext4.js";
import { IMAGE_FORMAT, type ImageRecord, publishImage, setRef } from "./image-store.js";
import type { Fixup } from "./unpack.js";
import { resolveInRoot } from "./unpack.js";

export type ImageFacts = Omit<ImageRecord, "contentBytes" | "sizeBytes" | "hasShell" | "format" | "createdAt">;

/**
 * Make `root` (a tree in, or beside, `staging`) into `staging/rootfs.ext4`, publish the image and point `name` at
 * it. A tree inside `staging` is removed once the file system holds it. Returns the image as the store has it (another
 * process's copy if it published the same image first).
 */
export async function finishImage(
  staging: string,
  root: string,
  facts: ImageFacts,
  name: string,
  opts: { fixups: Fixup[]; label: string; progress: Progress },
): Promise<ImageRecord> {
  const hasShell = resolveInRoot(root, "/bin/sh") !== null;
  const fs = await makeExt4(root, join(staging, "rootfs.ext4"), {
    label: opts.label,
    fixups: opts.fixups,
    progress: opts.progress,
  });
  if (root.startsWith(`${staging}/`)) rmSync(root, { recursive: true, force: true });
  const rec = publishImage(staging, {
    ...facts,
    contentBytes: fs.contentBytes,
    sizeBytes: fs.sizeBytes,
    hasShell,
    format: IMAGE_FORMAT,
    createdAt: new Date().toISOString(),
  });
  setRef(name, rec.id);
  return rec;
}
