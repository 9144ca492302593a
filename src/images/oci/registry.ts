/**
 * OCI distribution client, pull side: resolve a reference to one platform's manifest and config, and download
 * blobs into a content-addressed cache. Everything fetched is verified against its digest before it is used or
 * published; sizes are capped so a hostile registry cannot make us buffer without bound.
 */
import { createHash, randomBytes } from "node:crypto";
import { linkSync, mkdirSync, rmSync, statSync, unlinkSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { ImageError } from "../../errors.js";
import { DigestMismatchError, ImageNotFoundError, RegistryError, UnsupportedPlatformError } from "./errors.js";
import {
  bodyChunks,
  RegistryClient,
  type RegistryOptions,
  readCapped,
  readRegistryErrors,
  STALL_TIMEOUT_MS,
} from "./http.js";
import {
  type Descriptor,
  hostPlatform,
  isAttestation,
  MANIFEST_ACCEPT,
  type ManifestKind,
  manifestKind,
  type OciConfigFile,
  type Platform,
  parseConfig,
  parseImageManifest,
  parseIndex,
  selectPlatform,
} from "./manifest.js";
import { type ImageRef, isDigest, manifestReference, refString } from "./reference.js";

export { platformString } from "./errors.js";
export type { RegistryOptions } from "./http.js";
export type { Descriptor, OciConfigFile, Platform } from "./manifest.js";
export { hostPlatform, layerCompression, platformMatches } from "./manifest.js";

export const MANIFEST_MAX_BYTES = 4 << 20;
export const CONFIG_MAX_BYTES = 8 << 20;

export interface PulledManifest {
  ref: ImageRef;
  /** "registry/repository@<digest>" pinned to what the reference resolved to (the index digest when there is one). */
  canonical: string;
  manifestDigest: string;
  /** The index / manifest list the platform was picked from, or null for a single-platform image. */
  indexDigest: string | null;
  configDigest: string;
  config: OciConfigFile;
  layers: Descriptor[];
  /** The platform of the image actually chosen (from its config). */
  platform: Platform;
}

export function sha256Digest(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

interface RawManifest {
  digest: string;
  kind: ManifestKind;
  body: Record<string, unknown>;
}

const NOT_FOUND_CODES = new Set(["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);

/** GET one manifest (by tag or digest) and type it; `expected` bounds its size when we know it from an index. */
async function getManifest(client: RegistryClient, reference: string, expected?: Descriptor): Promise<RawManifest> {
  const ref = client.ref;
  const what = expected ? `manifest ${reference} of ${refString(ref)}` : `manifest of ${refString(ref)}`;
  if (expected && expected.size > MANIFEST_MAX_BYTES) {
    throw new ImageError(`${what} is too large: ${expected.size} bytes, the limit is ${MANIFEST_MAX_BYTES}`);
  }
  const path = `/v2/${ref.repository}/manifests/${reference}`;
  const res = await client.get(path, MANIFEST_ACCEPT);
  if (!res.ok) {
    const { codes, message } = await readRegistryErrors(res);
    if (res.status === 404 || codes.some((c) => NOT_FOUND_CODES.has(c))) {
      const detail = expected
        ? `the index lists ${reference} but the registry does not have it`
        : (message ?? undefined);
      throw new ImageNotFoundError(refString(ref), detail);
    }
    throw new RegistryError(ref.registry, res.status, `${client.base}${path}`, message);
  }
  const bytes = await readCapped(res, expected?.size ?? MANIFEST_MAX_BYTES, STALL_TIMEOUT_MS, what);
  const digest = sha256Digest(bytes);
  if (expected && digest !== expected.digest) throw new DigestMismatchError(what, expected.digest, digest);
  let body: unknown;
  try {
    body = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw new ImageError(`${what} is not valid JSON`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new ImageError(`${what} is not a JSON object`);
  }
  const record = body as Record<string, unknown>;
  const contentType = res.headers.get("content-type");
  const kind = manifestKind(record, contentType);
  if (kind === null) {
    const declared = typeof record.mediaType === "string" ? record.mediaType : contentType;
    throw new ImageError(`${what} has unsupported media type ${declared ?? "(none)"}`);
  }
  if (kind === "schema1") {
    throw new ImageError(
      `${what} is a Docker schema 1 manifest, which is obsolete and not supported; re-push the image with a current ` +
        "Docker or another OCI tool",
    );
  }
  return { digest, kind, body: record };
}

/** Fetch a small blob (the config) into memory, capped at its declared size and verified. */
async function getSmallBlob(client: RegistryClient, desc: Descriptor, max: number, what: string): Promise<Buffer> {
  if (desc.size > max) throw new ImageError(`${what} is too large: ${desc.size} bytes, the limit is ${max}`);
  const path = `/v2/${client.ref.repository}/blobs/${desc.digest}`;
  const res = await client.get(path);
  if (!res.ok) throw await client.failure(res, path);
  const bytes = await readCapped(res, desc.size, STALL_TIMEOUT_MS, what);
  if (bytes.length !== desc.size) {
    throw new ImageError(`${what} is truncated: ${bytes.length} of ${desc.size} bytes`);
  }
  const digest = sha256Digest(bytes);
  if (digest !== desc.digest) throw new DigestMismatchError(what, desc.digest, digest);
  return bytes;
}

/**
 * Resolve `ref` to the manifest for `opts.platform` (default: this host), with its verified config.
 * Indexes are resolved by platform; "unknown/unknown" attestation entries are never chosen.
 */
export async function fetchManifest(ref: ImageRef, opts: RegistryOptions = {}): Promise<PulledManifest> {
  const client = new RegistryClient(ref, opts);
  const want = opts.platform ?? hostPlatform();
  const name = refString(ref);

  const top = await getManifest(client, manifestReference(ref));
  if (ref.digest !== null && top.digest !== ref.digest) {
    throw new DigestMismatchError(`manifest of ${name}`, ref.digest, top.digest);
  }

  let manifest = top;
  let indexDigest: string | null = null;
  if (top.kind === "index") {
    indexDigest = top.digest;
    const entries = parseIndex(top.body, `index of ${name}`);
    const chosen = selectPlatform(entries, want);
    if (!chosen) {
      const available = entries.flatMap((e) => (e.platform && !isAttestation(e.platform) ? [e.platform] : []));
      throw new UnsupportedPlatformError(name, want, available);
    }
    manifest = await getManifest(client, chosen.digest, chosen);
    if (manifest.kind !== "manifest") {
      throw new ImageError(
        `index of ${name} points at another index (${chosen.digest}); nested indexes are not supported`,
      );
    }
  }

  const what = `manifest ${manifest.digest} of ${name}`;
  const { config: configDesc, layers } = parseImageManifest(manifest.body, what);
  const configBytes = await getSmallBlob(
    client,
    configDesc,
    CONFIG_MAX_BYTES,
    `config ${configDesc.digest} of ${name}`,
  );
  let configJson: unknown;
  try {
    configJson = JSON.parse(configBytes.toString("utf8"));
  } catch {
    throw new ImageError(`config ${configDesc.digest} of ${name} is not valid JSON`);
  }
  const config = parseConfig(configJson, `config ${configDesc.digest} of ${name}`, layers.length);
  const platform: Platform = { os: config.os, architecture: config.architecture };
  if (config.variant) platform.variant = config.variant;
  // The config is the truth about what the binaries are; an index entry (or a single manifest) could lie.
  if (config.os !== want.os || config.architecture !== want.architecture) {
    throw new UnsupportedPlatformError(name, want, [platform]);
  }

  return {
    ref,
    canonical: `${ref.registry}/${ref.repository}@${indexDigest ?? manifest.digest}`,
    manifestDigest: manifest.digest,
    indexDigest,
    configDigest: configDesc.digest,
    config,
    layers,
    platform,
  };
}

function mb(n: number): string {
  return (n / 1e6).toFixed(1);
}

/**
 * Download a blob into `blobsDir/sha256/<hex>` and return that path. A complete file already there is reused
 * without touching the network. The download goes to a private temp file, is verified (size and digest), then
 * hard-linked into place, so readers only ever see complete, verified blobs and concurrent pullers of the same
 * blob cannot clobber each other (the first link wins, the others drop their copy).
 */
export async function fetchBlob(
  ref: ImageRef,
  desc: Descriptor,
  blobsDir: string,
  opts: RegistryOptions = {},
): Promise<string> {
  // The digest becomes a file name: only a strict sha256 digest may pass.
  if (!isDigest(desc.digest)) throw new ImageError(`refusing blob with invalid digest ${JSON.stringify(desc.digest)}`);
  if (!Number.isSafeInteger(desc.size) || desc.size < 0) {
    throw new ImageError(`blob ${desc.digest} has an invalid size ${desc.size}`);
  }
  const hex = desc.digest.slice("sha256:".length);
  const dir = join(blobsDir, "sha256");
  const final = join(dir, hex);
  try {
    const st = statSync(final);
    if (st.isFile() && st.size === desc.size) return final;
    // A wrong-sized file can never be this blob (it was not published by us); make room for a good one.
    rmSync(final, { force: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  mkdirSync(dir, { recursive: true });

  const what = `blob ${desc.digest} of ${refString(ref)}`;
  const short = hex.slice(0, 12);
  const progress = opts.progress;
  const tmp = join(dir, `${hex}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`);
  const fh = await open(tmp, "wx", 0o644);
  let closed = false;
  try {
    const client = new RegistryClient(ref, opts);
    const path = `/v2/${ref.repository}/blobs/${desc.digest}`;
    const res = await client.get(path);
    if (!res.ok) throw await client.failure(res, path);
    const declared = Number(res.headers.get("content-length"));
    if (res.headers.has("content-length") && declared > desc.size) {
      throw new ImageError(`${what}: the registry announces ${declared} bytes, the descriptor says ${desc.size}`);
    }

    const hash = createHash("sha256");
    let received = 0;
    let lastReport = Date.now();
    let lastTenth = 0;
    for await (const chunk of bodyChunks(res, STALL_TIMEOUT_MS, what)) {
      received += chunk.length;
      if (received > desc.size) throw new ImageError(`${what} is larger than the ${desc.size} bytes it should have`);
      hash.update(chunk);
      await fh.write(chunk);
      if (progress) {
        const tenth = desc.size > 0 ? Math.floor((received * 10) / desc.size) : 10;
        if (tenth > lastTenth || Date.now() - lastReport >= 2000) {
          progress(`pulling ${short}: ${mb(received)}/${mb(desc.size)} MB`);
          lastTenth = tenth;
          lastReport = Date.now();
        }
      }
    }
    if (received !== desc.size) throw new ImageError(`${what} is truncated: ${received} of ${desc.size} bytes`);
    const digest = `sha256:${hash.digest("hex")}`;
    if (digest !== desc.digest) throw new DigestMismatchError(what, desc.digest, digest);
    await fh.sync();
    await fh.close();
    closed = true;
    try {
      linkSync(tmp, final);
    } catch (e) {
      // Another puller published the same verified content first; theirs is as good as ours.
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    unlinkSync(tmp);
    return final;
  } catch (e) {
    if (!closed) await fh.close().catch(() => {});
    rmSync(tmp, { force: true });
    throw e;
  }
}
