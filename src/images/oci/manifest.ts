/**
 * OCI / Docker v2 image formats: media types, platforms, and strict parsing of manifests, indexes and config blobs.
 * Everything here is pure (no I/O); registry.ts does the fetching.
 */
import { ImageError } from "../../errors.js";
import { isDigest } from "./reference.js";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
}

/** The part of an image config blob SmolVM uses; other fields are kept as they came. */
export interface OciConfigFile {
  architecture: string;
  os: string;
  variant?: string;
  config?: {
    Env?: string[];
    WorkingDir?: string;
    User?: string;
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    ExposedPorts?: Record<string, unknown>;
    Labels?: Record<string, string>;
  };
  rootfs?: { type: string; diff_ids: string[] };
}

export const MediaType = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+json",
  dockerSchema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
} as const;

/** Sent on every manifest request; without the full list some registries answer 404 or downgrade to schema 1. */
export const MANIFEST_ACCEPT = [
  MediaType.ociIndex,
  MediaType.ociManifest,
  MediaType.dockerList,
  MediaType.dockerManifest,
].join(", ");

export type LayerCompression = "none" | "gzip" | "zstd";

const LAYER_TYPES: Record<string, LayerCompression> = {
  "application/vnd.oci.image.layer.v1.tar": "none",
  "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
  "application/vnd.docker.image.rootfs.diff.tar": "none",
  "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
};

/** How a layer of this media type is compressed, or null when it is not a layer type we can unpack. */
export function layerCompression(mediaType: string): LayerCompression | null {
  return LAYER_TYPES[mediaType] ?? null;
}

const NODE_ARCH: Record<string, string> = {
  x64: "amd64",
  arm64: "arm64",
  ia32: "386",
  arm: "arm",
  ppc64: "ppc64le",
  s390x: "s390x",
  riscv64: "riscv64",
  loong64: "loong64",
};

/** The platform of this host as OCI names it: linux/amd64, linux/arm64/v8, ... */
export function hostPlatform(): Platform {
  const architecture = NODE_ARCH[process.arch] ?? process.arch;
  return architecture === "arm64" ? { os: "linux", architecture, variant: "v8" } : { os: "linux", architecture };
}

/**
 * Whether an image for `have` runs on `want`. os and architecture must be equal. A wanted variant must be equal,
 * except that arm64 images usually omit "v8"; with no wanted variant any variant is accepted.
 */
export function platformMatches(want: Platform, have: Platform): boolean {
  if (want.os !== have.os || want.architecture !== have.architecture) return false;
  if (!want.variant || have.variant === want.variant) return true;
  return want.architecture === "arm64" && want.variant === "v8" && !have.variant;
}

/** Attestation manifests (build provenance, SBOM) sit in indexes as "unknown/unknown"; they are not images. */
export function isAttestation(p: Platform): boolean {
  return p.os === "unknown" && p.architecture === "unknown";
}

/** The index entry to use for `want` (an exact variant beats a missing one), or null. */
export function selectPlatform(entries: Descriptor[], want: Platform): Descriptor | null {
  const candidates = entries.filter(
    (d) => d.platform && !isAttestation(d.platform) && platformMatches(want, d.platform),
  );
  return candidates.find((d) => d.platform?.variant === want.variant) ?? candidates[0] ?? null;
}

export type ManifestKind = "index" | "manifest" | "schema1";

/**
 * What a manifest body is. The body's own `mediaType` wins; manifests pushed without one are typed by the
 * response's Content-Type; as a last resort (a registry answering "application/json") the shape decides.
 */
export function manifestKind(body: Record<string, unknown>, contentType: string | null): ManifestKind | null {
  const declared = typeof body.mediaType === "string" ? body.mediaType : (contentType?.split(";")[0]?.trim() ?? "");
  switch (declared) {
    case MediaType.ociIndex:
    case MediaType.dockerList:
      return "index";
    case MediaType.ociManifest:
    case MediaType.dockerManifest:
      return "manifest";
    case MediaType.dockerSchema1:
    case MediaType.dockerSchema1Signed:
      return "schema1";
  }
  if (body.schemaVersion === 1) return "schema1";
  if (Array.isArray(body.manifests)) return "index";
  if (body.config !== undefined && Array.isArray(body.layers)) return "manifest";
  return null;
}

function malformed(what: string, why: string): ImageError {
  return new ImageError(`malformed ${what}: ${why}`);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function parsePlatform(x: unknown, what: string): Platform {
  if (!isObject(x) || typeof x.os !== "string" || typeof x.architecture !== "string") {
    throw malformed(what, "platform needs string os and architecture");
  }
  const p: Platform = { os: x.os, architecture: x.architecture };
  if (typeof x.variant === "string" && x.variant !== "") p.variant = x.variant;
  return p;
}

/** Validate a descriptor. The digest format check matters: digests become file names in the blob cache. */
export function parseDescriptor(x: unknown, what: string): Descriptor {
  if (!isObject(x)) throw malformed(what, "descriptor is not an object");
  if (typeof x.mediaType !== "string") throw malformed(what, "descriptor has no mediaType");
  if (typeof x.digest !== "string" || !isDigest(x.digest)) {
    throw malformed(what, `digest ${JSON.stringify(x.digest)} is not a sha256 digest`);
  }
  if (typeof x.size !== "number" || !Number.isSafeInteger(x.size) || x.size < 0) {
    throw malformed(what, `size ${JSON.stringify(x.size)} of ${x.digest} is not a non-negative integer`);
  }
  const d: Descriptor = { mediaType: x.mediaType, digest: x.digest, size: x.size };
  if (x.platform !== undefined) d.platform = parsePlatform(x.platform, what);
  return d;
}

/** The entries of an OCI index / Docker manifest list. */
export function parseIndex(body: Record<string, unknown>, what: string): Descriptor[] {
  if (!Array.isArray(body.manifests)) throw malformed(what, "index has no manifests array");
  return body.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`));
}

/** Config and layer descriptors of an image manifest; layer types we cannot unpack are rejected by name. */
export function parseImageManifest(
  body: Record<string, unknown>,
  what: string,
): { config: Descriptor; layers: Descriptor[] } {
  const config = parseDescriptor(body.config, `${what} config`);
  if (config.mediaType !== MediaType.ociConfig && config.mediaType !== MediaType.dockerConfig) {
    throw new ImageError(`${what} is not a container image: its config has media type ${config.mediaType}`);
  }
  if (!Array.isArray(body.layers)) throw malformed(what, "manifest has no layers array");
  const layers = body.layers.map((l, i) => parseDescriptor(l, `${what} layers[${i}]`));
  for (const l of layers) {
    if (layerCompression(l.mediaType) === null) {
      throw new ImageError(`${what}: layer ${l.digest} has unsupported media type ${l.mediaType}`);
    }
  }
  return { config, layers };
}

function stringList(x: unknown): x is string[] {
  return Array.isArray(x) && x.every((s) => typeof s === "string");
}

/**
 * Check the config blob's fields that SmolVM reads, so later code can trust their types.
 * `layerCount` is the manifest's layer count: diff_ids must pair with layers one to one.
 */
export function parseConfig(json: unknown, what: string, layerCount: number): OciConfigFile {
  if (!isObject(json)) throw malformed(what, "config is not a JSON object");
  if (typeof json.architecture !== "string" || typeof json.os !== "string") {
    throw malformed(what, "config needs string architecture and os");
  }
  if (json.variant !== undefined && typeof json.variant !== "string") throw malformed(what, "variant is not a string");
  const c = json.config;
  if (c !== undefined && c !== null) {
    if (!isObject(c)) throw malformed(what, "config.config is not an object");
    for (const key of ["Env", "Entrypoint", "Cmd"] as const) {
      const v = c[key];
      if (v !== undefined && v !== null && !stringList(v)) throw malformed(what, `${key} is not a list of strings`);
    }
    // The typed view has no nulls for these; Docker writes `null` for an empty Env / Labels.
    for (const key of ["Env", "ExposedPorts", "Labels"] as const) if (c[key] === null) delete c[key];
    for (const key of ["WorkingDir", "User"] as const) {
      if (c[key] !== undefined && typeof c[key] !== "string") throw malformed(what, `${key} is not a string`);
    }
    if (c.ExposedPorts !== undefined && !isObject(c.ExposedPorts)) {
      throw malformed(what, "ExposedPorts is not an object");
    }
    if (c.Labels !== undefined) {
      if (!isObject(c.Labels) || !Object.values(c.Labels).every((v) => typeof v === "string")) {
        throw malformed(what, "Labels is not an object of strings");
      }
    }
  } else {
    delete json.config;
  }
  const r = json.rootfs;
  if (r !== undefined) {
    if (!isObject(r) || typeof r.type !== "string" || !stringList(r.diff_ids) || !r.diff_ids.every(isDigest)) {
      throw malformed(what, "rootfs needs a type and diff_ids of sha256 digests");
    }
    if (r.diff_ids.length !== layerCount) {
      throw malformed(what, `rootfs lists ${r.diff_ids.length} diff_ids for ${layerCount} layers`);
    }
  }
  return json as unknown as OciConfigFile;
}
