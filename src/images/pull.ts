/**
 * `image pull` and `image import`: an OCI image (or a root file system tar or folder) into the image store as an ext4
 * root file system. Layers are fetched into the shared blob cache (verified by digest), applied in order into a
 * staging tree, and the tree is made into a sparse ext4 image with `mkfs.ext4 -d` (no root, no loop devices).
 * Nothing half-made is ever visible: a failure removes the staging directory, and the image appears with one rename.
 */
import { createHash } from "node:crypto";
import { createReadStream, mkdirSync, rmSync, statfsSync, statSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir } from "../paths.js";
import { type Progress, silent } from "../util/run.js";
import { finishImage } from "./build.js";
import {
  blobsDir,
  getImage,
  IMAGE_FORMAT,
  type ImageRecord,
  type ImageRunConfig,
  recipeId,
  setRef,
  stagingDir,
} from "./image-store.js";
import { parseRef, refString } from "./oci/reference.js";
import { fetchBlob, fetchManifest, type OciConfigFile, type Platform } from "./oci/registry.js";
import { CONTROL_RE } from "./pack-manifest.js";
import { RootfsBuilder } from "./unpack.js";

export interface PullOptions {
  /** Plain http for this registry (also: its host:port in SMOLVM_INSECURE_REGISTRIES). */
  insecure?: boolean;
  platform?: Platform;
  progress?: Progress;
}

const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The parts of an OCI config that SmolVM honours, checked (an image's config is as untrusted as its layers). */
export function runConfigOf(cfg: OciConfigFile | undefined): ImageRunConfig {
  const c = cfg?.config ?? {};
  const env: Record<string, string> = {};
  for (const e of Array.isArray(c.Env) ? c.Env.slice(0, 1024) : []) {
    if (typeof e !== "string" || e.includes("\0")) continue;
    const i = e.indexOf("=");
    const k = i < 0 ? e : e.slice(0, i);
    if (ENV_KEY_RE.test(k)) env[k] = i < 0 ? "" : e.slice(i + 1);
  }
  // the same limits a .smolmachine pack's manifest is held to, so a VM of any image can be packed and loaded again
  const strs = (v: unknown) =>
    Array.isArray(v) &&
    v.length > 0 &&
    v.length <= 256 &&
    v.every((x) => typeof x === "string" && !x.includes("\0") && x.length <= 4096)
      ? (v as string[])
      : undefined;
  const str = (v: unknown, max: number) =>
    typeof v === "string" && v !== "" && v.length <= max && !CONTROL_RE.test(v) ? v : undefined;
  return {
    env,
    workingDir: str(c.WorkingDir, 4096),
    user: str(c.User, 256),
    entrypoint: strs(c.Entrypoint),
    cmd: strs(c.Cmd),
  };
}

/** Refuse to start when the data dir's file system cannot take `bytes` more (with a margin). */
function checkSpace(bytes: number, what: string): void {
  const dir = dataDir();
  mkdirSync(dir, { recursive: true });
  const st = statfsSync(dir);
  const free = st.bavail * st.bsize;
  if (free < bytes + 256 * 2 ** 20) {
    throw new ImageError(
      `not enough disk space for ${what} in ${dir}: about ${mb(bytes)} needed, ${mb(free)} free (nothing was written)`,
    );
  }
}
const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

/** A disk-full error during a build, said plainly. */
function diskFull(e: unknown, what: string): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  const text = String((e as Error).message ?? "");
  if (code === "ENOSPC" || /No space left|ENOSPC/.test(text)) {
    return new ImageError(`disk full while building ${what} in ${dataDir()}; nothing was kept`, { cause: e });
  }
  return e;
}

/** Pull `text` (an OCI reference) into the store; an image already there is only re-tagged. */
export async function pullImage(text: string, opts: PullOptions = {}): Promise<ImageRecord> {
  const progress = opts.progress ?? silent;
  const ref = parseRef(text);
  const name = refString(ref);
  progress(`resolving ${name}`);
  const m = await fetchManifest(ref, { insecure: opts.insecure, platform: opts.platform, progress });
  const id = m.configDigest.replace(/^sha256:/, "");
  const have = getImage(id);
  if (have) {
    setRef(name, id);
    progress(`${name} is up to date (${id.slice(0, 12)})`);
    return have;
  }
  // the image id is its config's digest, so its layers must be the ones the config names: each layer's uncompressed
  // digest is checked against rootfs.diff_ids while it is applied (a registry cannot pass its own files off under
  // another image's config)
  const diffIds = m.config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== m.layers.length) {
    throw new ImageError(
      `${name}: the image config lists ${diffIds.length} layer digests (rootfs.diff_ids) for ${m.layers.length} layers`,
    );
  }
  const layerBytes = m.layers.reduce((a, l) => a + l.size, 0);
  // compressed layers, the unpacked tree and the ext4 image exist at once for a moment
  checkSpace(layerBytes * 6, name);
  const staging = stagingDir(id);
  try {
    // `image prune` keeps the layers a live build names (blobs are in the shared cache before the image exists)
    writeFileSync(`${staging}/layers.json`, JSON.stringify(m.layers.map((l) => l.digest)));
    const blobs: string[] = [];
    for (const [i, l] of m.layers.entries()) {
      progress(`layer ${i + 1}/${m.layers.length} ${l.digest.slice(7, 19)} (${mb(l.size)})`);
      blobs.push(await fetchBlob(ref, l, blobsDir(), { insecure: opts.insecure, progress }));
    }
    const tree = `${staging}/tree`;
    mkdirSync(tree);
    const builder = new RootfsBuilder(tree, { progress });
    for (const [i, b] of blobs.entries()) {
      progress(`applying layer ${i + 1}/${blobs.length}`);
      await builder.applyLayer(b, `${i + 1} (${m.layers[i]?.digest})`, diffIds[i]);
    }
    const done = builder.finish();
    progress(`making the ext4 file system (${mb(done.bytes)} of files)`);
    const facts = {
      id,
      source: "oci" as const,
      origin: name,
      manifestDigest: m.manifestDigest,
      layers: m.layers.map((l) => l.digest),
      platform: [m.platform.os, m.platform.architecture, m.platform.variant].filter(Boolean).join("/"),
      config: runConfigOf(m.config),
    };
    const rec = await finishImage(staging, tree, facts, name, { fixups: done.fixups, label: "smolvm-root", progress });
    progress(`pulled ${name} as ${rec.id.slice(0, 12)}`);
    return rec;
  } catch (e) {
    throw diskFull(e, name);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

export interface ImportOptions {
  /** A name to give the image (`import:<path>` by default). */
  name?: string;
  config?: Partial<ImageRunConfig>;
  progress?: Progress;
}

/** Import a root file system from a tar (plain, gzip or zstd) or a folder. */
export async function importImage(path: string, opts: ImportOptions = {}): Promise<ImageRecord> {
  const progress = opts.progress ?? silent;
  const src = resolve(path);
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(src);
  } catch {
    throw new ImageError(`cannot import ${path}: no such file or folder`);
  }
  const config: ImageRunConfig = { env: {}, ...opts.config };
  // an import is identified by what it holds: a file's content hash; a folder is new each time
  const key = st.isDirectory() ? `dir:${src}:${Date.now()}` : await fileHash(src);
  const id = recipeId({ import: key, config, format: IMAGE_FORMAT });
  const origin = opts.name ?? `import:${src}`;
  const have = getImage(id);
  if (have) {
    setRef(origin, id);
    return have;
  }
  checkSpace((st.isDirectory() ? 0 : st.size) * 3, origin);
  const staging = stagingDir(id);
  try {
    const tree = `${staging}/tree`;
    let fixups: Awaited<ReturnType<RootfsBuilder["finish"]>>["fixups"] = [];
    let root = src;
    if (!st.isDirectory()) {
      mkdirSync(tree);
      const builder = new RootfsBuilder(tree, { progress });
      progress(`unpacking ${path}`);
      await builder.applyLayer(src, path);
      fixups = builder.finish().fixups;
      root = tree;
    }
    progress("making the ext4 file system");
    const facts = { id, source: "import" as const, origin, manifestDigest: null, layers: [], platform: null, config };
    const rec = await finishImage(staging, root, facts, origin, { fixups, label: "smolvm-root", progress });
    return rec;
  } catch (e) {
    throw diskFull(e, origin);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

async function fileHash(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}
