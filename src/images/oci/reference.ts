/**
 * Image references ("python:3.12-slim", "ghcr.io/org/app@sha256:…", "127.0.0.1:5000/x/y:dev"), parsed and validated
 * per the distribution reference grammar, with Docker Hub's naming rules applied.
 */
import { ImageError } from "../../errors.js";

export interface ImageRef {
  /** Registry host with optional port as written by users: "docker.io", "ghcr.io", "127.0.0.1:5000". */
  registry: string;
  /** Repository path inside the registry: "library/python", "org/app". */
  repository: string;
  /** The tag, or null when only a digest was given. */
  tag: string | null;
  /** "sha256:<64 hex>", or null. When set it wins over the tag for fetching. */
  digest: string | null;
}

export const DOCKER_HUB = "docker.io";

/** One path component: lowercase alphanumerics joined by ".", "_", "__" or any run of "-". */
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
/** A host name (dot-separated labels) or a bracketed IPv6 address, with an optional port. */
const DOMAIN =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
/** The distribution spec caps the full name (registry + "/" + repository) at 255 characters. */
const MAX_NAME = 255;

function bad(ref: string, why: string): ImageError {
  return new ImageError(`invalid image reference "${ref}": ${why}`);
}

/** True when `s` is a digest this client can verify ("sha256:" and 64 lowercase hex digits). */
export function isDigest(s: string): boolean {
  return DIGEST.test(s);
}

/** Parse and validate a reference; throws ImageError naming the reference and the reason. */
export function parseRef(input: string): ImageRef {
  const s = input.trim();
  if (s === "") throw bad(input, "it is empty");
  if (/\s/.test(s)) throw bad(input, "it contains whitespace");

  // "name[:tag][@digest]": the digest is everything after the first "@".
  let rest = s;
  let digest: string | null = null;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) {
      throw bad(input, `digest "${digest}" is not "sha256:" followed by 64 lowercase hex digits`);
    }
  }

  // A tag is a ":" after the last "/" (a ":" before it belongs to a registry port).
  let tag: string | null = null;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) {
      throw bad(input, `tag "${tag}" must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
    }
  }
  if (rest === "") throw bad(input, "the repository name is missing");

  // The first component names a registry when it looks like a host: it has a "." or ":", or is "localhost".
  let registry = DOCKER_HUB;
  let repository = rest;
  const slash = rest.indexOf("/");
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes(".") || first.includes(":") || first === "localhost" || first.startsWith("[")) {
      if (!DOMAIN.test(first)) throw bad(input, `registry "${first}" is not a valid host[:port]`);
      registry = first;
      repository = rest.slice(slash + 1);
    }
  }
  // Docker Hub aliases, and the implicit "library/" namespace of official images.
  if (registry === "index.docker.io" || registry === "registry-1.docker.io") registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes("/")) repository = `library/${repository}`;

  if (repository === "") throw bad(input, "the repository name is missing");
  for (const component of repository.split("/")) {
    if (component === "") throw bad(input, "the repository name has an empty path component");
    if (!PATH_COMPONENT.test(component)) {
      const why = /[A-Z]/.test(component)
        ? "repository names must be lowercase"
        : "path components may contain only a-z, 0-9 and single separators (., _, __, -) between them";
      throw bad(input, `"${component}": ${why}`);
    }
  }
  if (registry.length + 1 + repository.length > MAX_NAME) {
    throw bad(input, `the name is longer than ${MAX_NAME} characters`);
  }

  if (tag === null && digest === null) tag = "latest";
  return { registry, repository, tag, digest };
}

/** Canonical text: "docker.io/library/python:3.12-slim", "host:5000/app@sha256:…", or both tag and digest. */
export function refString(r: ImageRef): string {
  let s = `${r.registry}/${r.repository}`;
  if (r.tag !== null) s += `:${r.tag}`;
  if (r.digest !== null) s += `@${r.digest}`;
  return s;
}

/** The host[:port] that serves the registry API; Docker Hub's API does not live at "docker.io". */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? "registry-1.docker.io" : registry;
}

/** What to put after /manifests/: the digest when pinned, else the tag. */
export function manifestReference(r: ImageRef): string {
  return r.digest ?? r.tag ?? "latest";
}
