/**
 * Build OCI / Docker images in memory and push them to a registry with plain HTTP calls (no skopeo), for tests.
 * Layers are tars made with tar-stream; configs get rootfs.diff_ids computed from the uncompressed tars.
 *
 * No side effects at import time: node --test runs every .js under dist/test.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { type Header, pack } from "tar-stream";

export type Entry = {
  path: string;
  type?: "file" | "dir" | "symlink" | "link" | "char" | "block" | "fifo";
  data?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Record<string, string>;
};

export type Compression = "gzip" | "zstd" | "none";

export interface TestPlatform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Creds {
  user: string;
  password: string;
}

const TAR_TYPE = {
  file: "file",
  dir: "directory",
  symlink: "symlink",
  link: "link",
  char: "character-device",
  block: "block-device",
  fifo: "fifo",
} as const;

export function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** A tar of `entries` in order; xattrs become PAX "SCHILY.xattr.<name>" records. */
export async function layerTar(entries: Entry[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  const done = (async () => {
    for await (const c of p) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    const type = e.type ?? "file";
    const data = type === "file" ? Buffer.from(e.data ?? "") : undefined;
    const header: Partial<Header> & { name: string } = {
      name: e.path,
      type: TAR_TYPE[type],
      mode: e.mode ?? (type === "dir" ? 0o755 : type === "symlink" ? 0o777 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: new Date(1_700_000_000_000),
      size: data?.length ?? 0,
    };
    if (e.linkname !== undefined) header.linkname = e.linkname;
    if (e.devmajor !== undefined) header.devmajor = e.devmajor;
    if (e.devminor !== undefined) header.devminor = e.devminor;
    if (e.xattrs) {
      header.pax = Object.fromEntries(Object.entries(e.xattrs).map(([k, v]) => [`SCHILY.xattr.${k}`, v]));
    }
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (data) p.entry(header, data, cb);
      else p.entry(header, cb); // non-file entries have no body and complete by themselves
    });
  }
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** Compress a tar; zstd goes through the `zstd` CLI. */
export function compress(buf: Buffer, kind: Compression): Buffer {
  if (kind === "none") return buf;
  if (kind === "gzip") return gzipSync(buf);
  const r = spawnSync("zstd", ["-q", "-c", "-3"], { input: buf, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd failed: ${r.stderr?.toString() ?? r.error}`);
  return r.stdout;
}

/** HTTP to one repository, doing the Bearer token dance (with Basic creds at the realm) when challenged. */
class Pusher {
  private authorization: string | null = null;

  constructor(
    readonly host: string,
    readonly repo: string,
    readonly creds?: Creds,
  ) {}

  async request(method: string, url: string, body?: Buffer, headers: Record<string, string> = {}): Promise<Response> {
    const full = new URL(url, `http://${this.host}`).toString();
    for (let attempt = 0; ; attempt++) {
      const h = { ...headers };
      if (this.authorization) h.Authorization = this.authorization;
      const res = await fetch(full, { method, body, headers: h });
      if (res.status !== 401 || attempt > 0) return res;
      const challenge = res.headers.get("www-authenticate") ?? "";
      await res.arrayBuffer();
      await this.login(challenge);
    }
  }

  private async login(challenge: string): Promise<void> {
    if (!this.creds) throw new Error(`registry ${this.host} wants auth (${challenge}) and no creds were given`);
    const param = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(challenge)?.[1];
    const realm = param("realm");
    if (!realm) throw new Error(`no realm in challenge ${challenge}`);
    const url = new URL(realm);
    url.searchParams.set("service", param("service") ?? "");
    url.searchParams.set("scope", param("scope") ?? `repository:${this.repo}:pull,push`);
    const basic = Buffer.from(`${this.creds.user}:${this.creds.password}`).toString("base64");
    const res = await fetch(url, { headers: { Authorization: `Basic ${basic}` } });
    if (!res.ok) throw new Error(`token request failed: ${res.status} ${await res.text()}`);
    const body = (await res.json()) as { token?: string; access_token?: string };
    this.authorization = `Bearer ${body.token ?? body.access_token}`;
  }

  /** Monolithic upload: POST an upload session, then PUT the bytes with ?digest=. */
  async pushBlob(data: Buffer): Promise<string> {
    const digest = sha256(data);
    const start = await this.request("POST", `/v2/${this.repo}/blobs/uploads/`);
    const location = start.headers.get("location");
    await start.arrayBuffer();
    if (start.status !== 202 || !location) throw new Error(`upload start failed: HTTP ${start.status}`);
    const put = new URL(location, `http://${this.host}`);
    put.searchParams.set("digest", digest);
    const res = await this.request("PUT", put.toString(), data, { "Content-Type": "application/octet-stream" });
    if (res.status !== 201) throw new Error(`blob upload failed: HTTP ${res.status} ${await res.text()}`);
    await res.arrayBuffer();
    return digest;
  }

  async pushManifest(reference: string, body: Buffer, contentType: string): Promise<string> {
    const res = await this.request("PUT", `/v2/${this.repo}/manifests/${reference}`, body, {
      "Content-Type": contentType,
    });
    if (res.status !== 201) throw new Error(`manifest upload failed: HTTP ${res.status} ${await res.text()}`);
    await res.arrayBuffer();
    return sha256(body);
  }
}

/** Upload raw bytes as a blob; returns its digest. */
export function pushBlob(host: string, repo: string, data: Buffer, creds?: Creds): Promise<string> {
  return new Pusher(host, repo, creds).pushBlob(data);
}

/** PUT any manifest bytes under a tag or digest with the given Content-Type; returns the manifest digest. */
export function pushManifest(
  host: string,
  repo: string,
  reference: string,
  body: Buffer,
  contentType: string,
  creds?: Creds,
): Promise<string> {
  return new Pusher(host, repo, creds).pushManifest(reference, body, contentType);
}

export interface ImageSpec {
  /** Each layer's entries, or a ready tar (uncompressed). */
  layers: {
    entries?: Entry[];
    tar?: Buffer;
    compression: Compression /** Override the layer media type. */;
    mediaType?: string;
  }[];
  config?: { Env?: string[]; WorkingDir?: string; User?: string; Entrypoint?: string[]; Cmd?: string[] };
  platform?: TestPlatform;
  mediaTypes?: "oci" | "docker";
  /** Leave `mediaType` out of the manifest body, so only the Content-Type says what it is. */
  omitMediaType?: boolean;
  creds?: Creds;
}

export interface PushedImage {
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  layerDigests: string[];
  diffIds: string[];
  platform: TestPlatform;
}

function layerMediaType(kind: Compression, flavor: "oci" | "docker"): string {
  if (flavor === "docker" && kind === "gzip") return "application/vnd.docker.image.rootfs.diff.tar.gzip";
  if (flavor === "docker" && kind === "none") return "application/vnd.docker.image.rootfs.diff.tar";
  return `application/vnd.oci.image.layer.v1.tar${kind === "none" ? "" : `+${kind}`}`;
}

/** Build an image (layers, config, manifest) and push it as `repo:tag`. */
export async function pushImage(host: string, repo: string, tag: string, spec: ImageSpec): Promise<PushedImage> {
  const pusher = new Pusher(host, repo, spec.creds);
  const flavor = spec.mediaTypes ?? "oci";
  const platform = spec.platform ?? { os: "linux", architecture: "amd64" };
  const layers: { mediaType: string; digest: string; size: number }[] = [];
  const diffIds: string[] = [];
  for (const l of spec.layers) {
    const tar = l.tar ?? (await layerTar(l.entries ?? []));
    diffIds.push(sha256(tar));
    const blob = compress(tar, l.compression);
    const digest = await pusher.pushBlob(blob);
    layers.push({ mediaType: l.mediaType ?? layerMediaType(l.compression, flavor), digest, size: blob.length });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      created: "2024-01-01T00:00:00Z",
      config: spec.config ?? {},
      rootfs: { type: "layers", diff_ids: diffIds },
    }),
  );
  const configDigest = await pusher.pushBlob(config);
  const manifestType =
    flavor === "oci"
      ? "application/vnd.oci.image.manifest.v1+json"
      : "application/vnd.docker.distribution.manifest.v2+json";
  const configType =
    flavor === "oci" ? "application/vnd.oci.image.config.v1+json" : "application/vnd.docker.container.image.v1+json";
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      ...(spec.omitMediaType ? {} : { mediaType: manifestType }),
      config: { mediaType: configType, digest: configDigest, size: config.length },
      layers,
    }),
  );
  const manifestDigest = await pusher.pushManifest(tag, manifest, manifestType);
  return {
    manifestDigest,
    manifestSize: manifest.length,
    configDigest,
    layerDigests: layers.map((l) => l.digest),
    diffIds,
    platform,
  };
}

/** Push an OCI index over already pushed manifests; returns its digest. */
export async function pushIndex(
  host: string,
  repo: string,
  tag: string,
  manifests: { digest: string; size: number; platform: TestPlatform; mediaType?: string }[],
  creds?: Creds,
): Promise<string> {
  const mediaType = "application/vnd.oci.image.index.v1+json";
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: manifests.map((m) => ({
        mediaType: m.mediaType ?? "application/vnd.oci.image.manifest.v1+json",
        digest: m.digest,
        size: m.size,
        platform: m.platform,
      })),
    }),
  );
  return new Pusher(host, repo, creds).pushManifest(tag, body, mediaType);
}
