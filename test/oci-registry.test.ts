/**
 * OCI distribution client against a real registry (Debian's docker-registry on 127.0.0.1): references,
 * manifests, indexes and platforms, blob download and verification, the blob cache, transport errors.
 * No VMs. Auth tests are in oci-registry-auth.test.ts.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ImageError } from "../src/errors.js";
import {
  DigestMismatchError,
  ImageNotFoundError,
  RegistryUnreachableError,
  UnsupportedPlatformError,
} from "../src/images/oci/errors.js";
import { apiHost, parseRef, refString } from "../src/images/oci/reference.js";
import { type Descriptor, fetchBlob, fetchManifest, type Platform } from "../src/images/oci/registry.js";
import { type Entry, pushImage, pushIndex } from "./support/oci-build.js";
import { blobDataPath, freePort, registryAvailable, startRegistry, type TestRegistry } from "./support/registry.js";

const HEX = "a".repeat(64);
const AMD64: Platform = { os: "linux", architecture: "amd64" };
const ARM64: Platform = { os: "linux", architecture: "arm64", variant: "v8" };

test("parseRef: Docker Hub names, registries with ports, digests", () => {
  const cases: [string, string, string, string | null, string | null][] = [
    ["python", "docker.io", "library/python", "latest", null],
    ["python:3.12-slim", "docker.io", "library/python", "3.12-slim", null],
    ["user/app", "docker.io", "user/app", "latest", null],
    ["docker.io/python", "docker.io", "library/python", "latest", null],
    ["index.docker.io/library/alpine:3", "docker.io", "library/alpine", "3", null],
    ["ghcr.io/org/sub/app:v1.2", "ghcr.io", "org/sub/app", "v1.2", null],
    ["localhost/app", "localhost", "app", "latest", null],
    ["localhost:5000/a/b:dev", "localhost:5000", "a/b", "dev", null],
    ["127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", null],
    ["a__b/c-d---e.f:Tag_1", "docker.io", "a__b/c-d---e.f", "Tag_1", null],
    [`alpine@sha256:${HEX}`, "docker.io", "library/alpine", null, `sha256:${HEX}`],
    [`reg.io:443/ns/img:3.19@sha256:${HEX}`, "reg.io:443", "ns/img", "3.19", `sha256:${HEX}`],
  ];
  for (const [input, registry, repository, tag, digest] of cases) {
    assert.deepEqual(parseRef(input), { registry, repository, tag, digest }, input);
  }
  assert.equal(refString(parseRef("python:3.12-slim")), "docker.io/library/python:3.12-slim");
  assert.equal(refString(parseRef(`h:1/a:t@sha256:${HEX}`)), `h:1/a:t@sha256:${HEX}`);
  assert.equal(refString(parseRef(`alpine@sha256:${HEX}`)), `docker.io/library/alpine@sha256:${HEX}`);
  assert.equal(apiHost("docker.io"), "registry-1.docker.io");
  assert.equal(apiHost("127.0.0.1:5000"), "127.0.0.1:5000");
});

test("parseRef: bad references are rejected with a message naming them and why", () => {
  const bad: [string, RegExp][] = [
    ["", /empty/],
    ["Python", /lowercase/],
    ["ghcr.io/Org/app", /lowercase/],
    ["alpine:", /tag ""/],
    ["alpine:-x", /tag "-x"/],
    [`alpine:${"t".repeat(129)}`, /tag/],
    ["alpine@sha256:abc", /digest/],
    [`alpine@md5:${HEX}`, /digest/],
    [`alpine@sha256:${HEX.toUpperCase()}`, /digest/],
    ["a//b", /empty path component/],
    ["-abc", /path components/],
    ["a/b_/c", /path components/],
    ["my.reg/", /missing/],
    [":tag", /missing/],
    ["bad_host.io:x/a", /registry/],
    ["with space", /whitespace/],
    [`reg.io/${"a".repeat(260)}`, /longer than 255/],
  ];
  for (const [input, why] of bad) {
    assert.throws(
      () => parseRef(input),
      (e: unknown) => {
        assert.ok(e instanceof ImageError, `${input}: ${String(e)}`);
        assert.ok(e.message.includes(`"${input}"`), `message names the reference: ${e.message}`);
        assert.match(e.message, why, input);
        return true;
      },
    );
  }
});

let reg: TestRegistry;
let scratch: string;
const opts = { insecure: true, platform: AMD64 };

before(async () => {
  if (!registryAvailable()) return;
  reg = await startRegistry();
  scratch = mkdtempSync(join(tmpdir(), "smolvm-oci-test-"));
});

after(async () => {
  await reg?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const skip = registryAvailable() ? false : "no /usr/bin/docker-registry";
let dirCount = 0;
function blobsDir(): string {
  return join(scratch, `blobs-${++dirCount}`);
}

function fileDigest(path: string): string {
  return `sha256:${createHash("sha256").update(readFileSync(path)).digest("hex")}`;
}

const FILES: Entry[] = [
  { path: "etc/", type: "dir" },
  { path: "etc/hello", data: "hello world\n", mode: 0o600, uid: 1000, gid: 1000 },
  { path: "etc/link", type: "symlink", linkname: "hello" },
  { path: "bin/big", data: Buffer.alloc(300_000, 7), xattrs: { "user.test": "yes" } },
];

test("pull: manifest, config and gzip/zstd/plain layers are fetched, verified and stored", { skip }, async () => {
  const pushed = await pushImage(reg.host, "t/basic", "v1", {
    layers: [
      { entries: FILES, compression: "gzip" },
      { entries: [{ path: "etc/z", data: "zstd layer" }], compression: "zstd" },
      { entries: [{ path: "etc/plain", data: "plain" }], compression: "none" },
    ],
    config: { Env: ["PATH=/bin", "A=b"], WorkingDir: "/srv", User: "1000", Cmd: ["/bin/sh"] },
  });
  const ref = parseRef(`${reg.host}/t/basic:v1`);
  const m = await fetchManifest(ref, opts);
  assert.equal(m.manifestDigest, pushed.manifestDigest);
  assert.equal(m.indexDigest, null);
  assert.equal(m.configDigest, pushed.configDigest);
  assert.equal(m.canonical, `${reg.host}/t/basic@${pushed.manifestDigest}`);
  assert.deepEqual(m.platform, AMD64);
  assert.deepEqual(
    m.layers.map((l) => l.digest),
    pushed.layerDigests,
  );
  assert.deepEqual(
    m.layers.map((l) => l.mediaType),
    [
      "application/vnd.oci.image.layer.v1.tar+gzip",
      "application/vnd.oci.image.layer.v1.tar+zstd",
      "application/vnd.oci.image.layer.v1.tar",
    ],
  );
  assert.deepEqual(m.config.config?.Env, ["PATH=/bin", "A=b"]);
  assert.equal(m.config.config?.WorkingDir, "/srv");
  assert.deepEqual(m.config.config?.Cmd, ["/bin/sh"]);
  assert.deepEqual(m.config.rootfs?.diff_ids, pushed.diffIds);

  const dir = blobsDir();
  const messages: string[] = [];
  for (const layer of m.layers) {
    const path = await fetchBlob(ref, layer, dir, { ...opts, progress: (s) => messages.push(s) });
    assert.equal(path, join(dir, "sha256", layer.digest.slice(7)));
    assert.equal(fileDigest(path), layer.digest);
  }
  assert.deepEqual(readdirSync(join(dir, "sha256")).sort(), m.layers.map((l) => l.digest.slice(7)).sort());
  assert.ok(messages.length >= 3, messages.join("\n"));
  assert.match(messages.at(-1)!, /^pulling [0-9a-f]{12}: [\d.]+\/[\d.]+ MB$/);

  // A cached blob is served without the network: this registry does not exist.
  const dead = parseRef(`127.0.0.1:${await freePort()}/t/basic:v1`);
  assert.equal(await fetchBlob(dead, m.layers[0]!, dir, opts), join(dir, "sha256", m.layers[0]!.digest.slice(7)));

  // Pinning by digest resolves to the same manifest.
  const pinned = await fetchManifest(parseRef(`${reg.host}/t/basic@${pushed.manifestDigest}`), opts);
  assert.equal(pinned.manifestDigest, pushed.manifestDigest);
});

test("pull: Docker v2 media types, and an OCI manifest typed only by Content-Type", { skip }, async () => {
  const docker = await pushImage(reg.host, "t/docker", "v1", {
    layers: [{ entries: FILES, compression: "gzip" }],
    mediaTypes: "docker",
  });
  const dm = await fetchManifest(parseRef(`${reg.host}/t/docker:v1`), opts);
  assert.equal(dm.manifestDigest, docker.manifestDigest);
  assert.equal(dm.layers[0]?.mediaType, "application/vnd.docker.image.rootfs.diff.tar.gzip");

  const bare = await pushImage(reg.host, "t/bare", "v1", {
    layers: [{ entries: FILES, compression: "none" }],
    omitMediaType: true,
  });
  const bm = await fetchManifest(parseRef(`${reg.host}/t/bare:v1`), opts);
  assert.equal(bm.manifestDigest, bare.manifestDigest);
  assert.equal(bm.configDigest, bare.configDigest);
});

test("index: the wanted platform's manifest is chosen; attestations are skipped", { skip }, async () => {
  const layers = [{ entries: FILES, compression: "gzip" as const }];
  const arm = await pushImage(reg.host, "t/multi", "arm64", {
    layers: [{ entries: [{ path: "arch", data: "arm64" }], compression: "gzip" }],
    platform: { os: "linux", architecture: "arm64" },
  });
  const amd = await pushImage(reg.host, "t/multi", "amd64", { layers, platform: AMD64 });
  const index = await pushIndex(reg.host, "t/multi", "latest", [
    { digest: amd.manifestDigest, size: amd.manifestSize, platform: { os: "unknown", architecture: "unknown" } },
    { digest: arm.manifestDigest, size: arm.manifestSize, platform: { os: "linux", architecture: "arm64" } },
    { digest: amd.manifestDigest, size: amd.manifestSize, platform: AMD64 },
  ]);
  const ref = parseRef(`${reg.host}/t/multi`);

  const m = await fetchManifest(ref, opts);
  assert.equal(m.manifestDigest, amd.manifestDigest);
  assert.notEqual(m.manifestDigest, arm.manifestDigest);
  assert.equal(m.indexDigest, index);
  assert.equal(m.canonical, `${reg.host}/t/multi@${index}`);

  // arm64/v8 matches an arm64 entry without a variant.
  const a = await fetchManifest(ref, { insecure: true, platform: ARM64 });
  assert.equal(a.manifestDigest, arm.manifestDigest);
  assert.deepEqual(a.platform, { os: "linux", architecture: "arm64" });

  // Without a platform, the host's is used.
  if (process.arch === "x64")
    assert.equal((await fetchManifest(ref, { insecure: true })).manifestDigest, amd.manifestDigest);
  if (process.arch === "arm64") {
    assert.equal((await fetchManifest(ref, { insecure: true })).manifestDigest, arm.manifestDigest);
  }

  // The index pinned by digest.
  assert.equal((await fetchManifest(parseRef(`${reg.host}/t/multi@${index}`), opts)).indexDigest, index);

  await assert.rejects(
    fetchManifest(ref, { insecure: true, platform: { os: "linux", architecture: "s390x" } }),
    (e) => {
      assert.ok(e instanceof UnsupportedPlatformError, String(e));
      assert.deepEqual(e.available, [{ os: "linux", architecture: "arm64" }, AMD64]);
      assert.match(e.message, /no linux\/s390x variant; available platforms: linux\/arm64, linux\/amd64$/);
      return true;
    },
  );
});

test("a single-platform image for another architecture is refused by its config", { skip }, async () => {
  await pushImage(reg.host, "t/armonly", "v1", {
    layers: [{ entries: FILES, compression: "gzip" }],
    platform: { os: "linux", architecture: "arm64" },
  });
  await assert.rejects(fetchManifest(parseRef(`${reg.host}/t/armonly:v1`), opts), (e) => {
    assert.ok(e instanceof UnsupportedPlatformError, String(e));
    assert.match(e.message, /linux\/amd64.*available platforms: linux\/arm64/);
    return true;
  });
});

test("unknown tags, repositories and digests are ImageNotFoundError naming the reference", { skip }, async () => {
  await pushImage(reg.host, "t/known", "v1", { layers: [{ entries: FILES, compression: "gzip" }] });
  for (const name of [
    `${reg.host}/t/known:nope`,
    `${reg.host}/t/never-pushed:v1`,
    `${reg.host}/t/known@sha256:${"0".repeat(64)}`,
  ]) {
    await assert.rejects(fetchManifest(parseRef(name), opts), (e) => {
      assert.ok(e instanceof ImageNotFoundError, `${name}: ${String(e)}`);
      assert.ok(e.message.includes(name), e.message);
      return true;
    });
  }
});

test("an unsupported layer media type is rejected by name", { skip }, async () => {
  await pushImage(reg.host, "t/weird", "v1", {
    layers: [{ entries: FILES, compression: "gzip", mediaType: "application/vnd.example.layer.v1.tar+lz4" }],
  });
  await assert.rejects(
    fetchManifest(parseRef(`${reg.host}/t/weird:v1`), opts),
    /unsupported media type application\/vnd\.example\.layer\.v1\.tar\+lz4/,
  );
});

function corrupt(digest: string): void {
  const path = blobDataPath(reg.storageDir, digest);
  const data = readFileSync(path);
  const at = Math.floor(data.length / 2);
  data[at] = data[at]! ^ 0xff;
  writeFileSync(path, data);
}

test("a corrupted blob is DigestMismatchError and leaves nothing in the cache", { skip }, async () => {
  const pushed = await pushImage(reg.host, "t/corrupt", "v1", {
    layers: [{ entries: FILES, compression: "gzip" }],
    config: { Env: ["X=1"] },
  });
  const ref = parseRef(`${reg.host}/t/corrupt:v1`);
  const m = await fetchManifest(ref, opts);
  const layer = m.layers[0]!;
  corrupt(layer.digest);
  const dir = blobsDir();
  await assert.rejects(fetchBlob(ref, layer, dir, opts), (e) => {
    assert.ok(e instanceof DigestMismatchError, String(e));
    assert.equal(e.expected, layer.digest);
    assert.notEqual(e.actual, layer.digest);
    assert.match(e.actual, /^sha256:[0-9a-f]{64}$/);
    return true;
  });
  assert.deepEqual(readdirSync(join(dir, "sha256")), []);

  // The config is verified too.
  corrupt(pushed.configDigest);
  await assert.rejects(
    fetchManifest(ref, opts),
    (e) => e instanceof DigestMismatchError && e.expected === pushed.configDigest,
  );
});

test("a descriptor with the wrong size fails and leaves no file behind", { skip }, async () => {
  const pushed = await pushImage(reg.host, "t/size", "v1", { layers: [{ entries: FILES, compression: "gzip" }] });
  const ref = parseRef(`${reg.host}/t/size:v1`);
  const real = (await fetchManifest(ref, opts)).layers[0]!;
  const dir = blobsDir();
  for (const size of [real.size - 1, real.size + 1]) {
    const desc: Descriptor = { ...real, size };
    await assert.rejects(fetchBlob(ref, desc, dir, opts), ImageError);
    assert.deepEqual(readdirSync(join(dir, "sha256")), [], `size ${size}`);
  }
  assert.equal(pushed.layerDigests[0], real.digest);
  // A digest that could escape the cache directory is refused before anything happens.
  await assert.rejects(fetchBlob(ref, { ...real, digest: "sha256:../../etc" }, dir, opts), /invalid digest/);
});

test("two concurrent fetchBlob of one blob share one file and leave no temp files", { skip }, async () => {
  await pushImage(reg.host, "t/race", "v1", {
    layers: [{ entries: [{ path: "data", data: Buffer.alloc(2_000_000, 3) }], compression: "none" }],
  });
  const ref = parseRef(`${reg.host}/t/race:v1`);
  const layer = (await fetchManifest(ref, opts)).layers[0]!;
  const dir = blobsDir();
  const [a, b] = await Promise.all([fetchBlob(ref, layer, dir, opts), fetchBlob(ref, layer, dir, opts)]);
  assert.equal(a, b);
  assert.deepEqual(readdirSync(join(dir, "sha256")), [layer.digest.slice(7)]);
  assert.equal(fileDigest(a), layer.digest);
});

test("plain-http registry: https fails with a hint about --insecure; the env list enables http", { skip }, async () => {
  await pushImage(reg.host, "t/plain", "v1", { layers: [{ entries: FILES, compression: "gzip" }] });
  const ref = parseRef(`${reg.host}/t/plain:v1`);
  const saved = process.env.SMOLVM_INSECURE_REGISTRIES;
  try {
    delete process.env.SMOLVM_INSECURE_REGISTRIES;
    await assert.rejects(fetchManifest(ref, { platform: AMD64 }), (e) => {
      assert.ok(e instanceof RegistryUnreachableError, String(e));
      assert.ok(e.message.includes(`https://${reg.host}/v2/t/plain/manifests/v1`), e.message);
      assert.match(e.message, /--insecure/);
      assert.match(e.message, /SMOLVM_INSECURE_REGISTRIES/);
      return true;
    });
    process.env.SMOLVM_INSECURE_REGISTRIES = `example.org, ${reg.host}`;
    assert.equal((await fetchManifest(ref, { platform: AMD64 })).ref, ref);
  } finally {
    if (saved === undefined) delete process.env.SMOLVM_INSECURE_REGISTRIES;
    else process.env.SMOLVM_INSECURE_REGISTRIES = saved;
  }
});

test("a closed port is RegistryUnreachableError naming registry and URL, without the --insecure hint", async () => {
  const host = `127.0.0.1:${await freePort()}`;
  await assert.rejects(fetchManifest(parseRef(`${host}/t/x:v1`), opts), (e) => {
    assert.ok(e instanceof RegistryUnreachableError, String(e));
    assert.ok(e.message.includes(`registry ${host} at http://${host}/v2/t/x/manifests/v1`), e.message);
    assert.match(e.message, /ECONNREFUSED/);
    assert.doesNotMatch(e.message, /--insecure/);
    return true;
  });
});
