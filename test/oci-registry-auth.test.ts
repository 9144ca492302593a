/**
 * Registry authentication: the Bearer token flow against a real docker-registry whose token service (a test
 * server) wants Basic user:secret, credentials from DOCKER_CONFIG and from the environment, the Basic challenge,
 * and that credentials never follow a redirect to another host. No VMs.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, beforeEach, test } from "node:test";
import { clearTokenCache, parseChallenges } from "../src/images/oci/auth.js";
import { RegistryAuthError } from "../src/images/oci/errors.js";
import { parseRef } from "../src/images/oci/reference.js";
import { fetchBlob, fetchManifest, type Platform } from "../src/images/oci/registry.js";
import { pushImage } from "./support/oci-build.js";
import { registryAvailable, startRegistry, type TestRegistry, TOKEN_PASSWORD, TOKEN_USER } from "./support/registry.js";

const AMD64: Platform = { os: "linux", architecture: "amd64" };
const opts = { insecure: true, platform: AMD64 };
const skip = registryAvailable() ? false : "no /usr/bin/docker-registry";
const ENV_KEYS = ["DOCKER_CONFIG", "SMOLVM_REGISTRY_USER", "SMOLVM_REGISTRY_PASSWORD", "SMOLVM_REGISTRY_HOST"] as const;

let reg: TestRegistry;
let scratch: string;
let savedEnv: Record<string, string | undefined> = {};
let configs = 0;

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), "smolvm-oci-auth-"));
  if (!registryAvailable()) return;
  reg = await startRegistry({ auth: "token" });
  await pushImage(reg.host, "t/private", "v1", {
    layers: [{ entries: [{ path: "secret", data: "s3cr3t" }], compression: "gzip" }],
    creds: { user: TOKEN_USER, password: TOKEN_PASSWORD },
  });
});

after(async () => {
  await reg?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

// Each test starts with no credentials anywhere and an empty token cache.
beforeEach(() => {
  savedEnv = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k]]));
  for (const k of ENV_KEYS) delete process.env[k];
  process.env.DOCKER_CONFIG = dockerConfig({});
  clearTokenCache();
});

afterEach(() => {
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  clearTokenCache();
});

/** A fresh DOCKER_CONFIG directory holding `config` as config.json. */
function dockerConfig(config: unknown): string {
  const dir = join(scratch, `docker-${++configs}`);
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  return dir;
}

const b64 = (s: string) => Buffer.from(s).toString("base64");

test("parseChallenges reads Bearer and Basic challenges with quoted parameters", () => {
  assert.deepEqual(
    parseChallenges('Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull"'),
    [
      {
        scheme: "bearer",
        params: { realm: "https://auth.example/token", service: "reg.example", scope: "repository:a/b:pull" },
      },
    ],
  );
  assert.deepEqual(parseChallenges('Basic realm="Registry \\"x\\"", Bearer realm=http://t/x'), [
    { scheme: "basic", params: { realm: 'Registry "x"' } },
    { scheme: "bearer", params: { realm: "http://t/x" } },
  ]);
  assert.deepEqual(parseChallenges(""), []);
});

test("token registry: anonymous pull is RegistryAuthError saying where credentials are read from", {
  skip,
}, async () => {
  const before = reg.tokenRequests;
  await assert.rejects(fetchManifest(parseRef(`${reg.host}/t/private:v1`), opts), (e) => {
    assert.ok(e instanceof RegistryAuthError, String(e));
    assert.ok(e.message.includes(reg.host), e.message);
    assert.match(e.message, /anonymously/);
    assert.match(e.message, /SMOLVM_REGISTRY_USER/);
    assert.ok(e.message.includes(join(process.env.DOCKER_CONFIG!, "config.json")), e.message);
    return true;
  });
  assert.equal(reg.tokenRequests, before + 1);
});

test("token registry: wrong password from config.json is RegistryAuthError naming the file", { skip }, async () => {
  process.env.DOCKER_CONFIG = dockerConfig({ auths: { [reg.host]: { auth: b64(`${TOKEN_USER}:wrong`) } } });
  await assert.rejects(fetchManifest(parseRef(`${reg.host}/t/private:v1`), opts), (e) => {
    assert.ok(e instanceof RegistryAuthError, String(e));
    assert.match(e.message, /with the credentials given/);
    assert.ok(e.message.includes(`auths["${reg.host}"]`), e.message);
    return true;
  });
});

test("token registry: a credential helper is reported as unsupported", { skip }, async () => {
  process.env.DOCKER_CONFIG = dockerConfig({ credHelpers: { [reg.host]: "pass" } });
  await assert.rejects(fetchManifest(parseRef(`${reg.host}/t/private:v1`), opts), (e) => {
    assert.ok(e instanceof RegistryAuthError, String(e));
    assert.match(e.message, /docker-credential-pass.*not support/);
    return true;
  });
});

test("token registry: credentials from DOCKER_CONFIG get a token, which is cached", { skip }, async () => {
  process.env.DOCKER_CONFIG = dockerConfig({
    auths: {
      "other.example": { auth: b64("x:y") },
      [`http://${reg.host}/v2/`]: { auth: b64(`${TOKEN_USER}:${TOKEN_PASSWORD}`) },
    },
  });
  const ref = parseRef(`${reg.host}/t/private:v1`);
  const before = reg.tokenRequests;
  const m = await fetchManifest(ref, opts);
  assert.equal(reg.tokenRequests, before + 1);
  assert.equal(reg.tokenScopes.at(-1), "repository:t/private:pull");
  const dir = join(scratch, "blobs-config");
  const path = await fetchBlob(ref, m.layers[0]!, dir, opts);
  const digest = `sha256:${createHash("sha256").update(readFileSync(path)).digest("hex")}`;
  assert.equal(digest, m.layers[0]!.digest);
  assert.equal(reg.tokenRequests, before + 1, "the cached token was reused");
});

test("token registry: username/password fields in config.json work", { skip }, async () => {
  process.env.DOCKER_CONFIG = dockerConfig({
    auths: { [reg.host]: { username: TOKEN_USER, password: TOKEN_PASSWORD } },
  });
  const m = await fetchManifest(parseRef(`${reg.host}/t/private:v1`), opts);
  assert.equal(m.layers.length, 1);
});

test("token registry: environment credentials work and win over config.json", { skip }, async () => {
  process.env.DOCKER_CONFIG = dockerConfig({ auths: { [reg.host]: { auth: b64(`${TOKEN_USER}:wrong`) } } });
  process.env.SMOLVM_REGISTRY_USER = TOKEN_USER;
  process.env.SMOLVM_REGISTRY_PASSWORD = TOKEN_PASSWORD;
  // scoped to another registry: not used here (config.json's wrong password is, and fails)
  process.env.SMOLVM_REGISTRY_HOST = "registry.example.com";
  await assert.rejects(fetchManifest(parseRef(`${reg.host}/t/private:v1`), opts), RegistryAuthError);
  process.env.SMOLVM_REGISTRY_HOST = reg.host;
  const before = reg.tokenRequests;
  const m = await fetchManifest(parseRef(`${reg.host}/t/private:v1`), opts);
  assert.equal(m.layers.length, 1);
  assert.equal(reg.tokenRequests, before + 1);
});

interface Seen {
  url: string;
  authorization: string | undefined;
}

function listen(handler: (url: string, headers: IncomingHttpHeaders, res: import("node:http").ServerResponse) => void) {
  return new Promise<{ server: Server; host: string }>((resolve) => {
    const server = createServer((req, res) => handler(req.url ?? "", req.headers, res));
    server.listen(0, "127.0.0.1", () =>
      resolve({ server, host: `127.0.0.1:${(server.address() as AddressInfo).port}` }),
    );
  });
}

test("Basic challenge: credentials go to the registry, never to a redirect target on another host", async () => {
  const data = Buffer.from("blob bytes behind a CDN");
  const digest = `sha256:${createHash("sha256").update(data).digest("hex")}`;
  const seenRegistry: Seen[] = [];
  const seenCdn: Seen[] = [];
  const cdn = await listen((url, headers, res) => {
    seenCdn.push({ url, authorization: headers.authorization });
    res.end(data);
  });
  const registry = await listen((url, headers, res) => {
    seenRegistry.push({ url, authorization: headers.authorization });
    if (headers.authorization !== `Basic ${b64("alice:pw")}`) {
      res.writeHead(401, { "WWW-Authenticate": 'Basic realm="test"' }).end();
      return;
    }
    res.writeHead(307, { Location: `http://${cdn.host}/cdn/blob?sig=1` }).end();
  });
  try {
    process.env.SMOLVM_REGISTRY_USER = "alice";
    process.env.SMOLVM_REGISTRY_PASSWORD = "pw";
    process.env.SMOLVM_REGISTRY_HOST = registry.host;
    const ref = parseRef(`${registry.host}/t/cdn:v1`);
    const dir = join(scratch, "blobs-cdn");
    const path = await fetchBlob(ref, { mediaType: "application/octet-stream", digest, size: data.length }, dir, opts);
    assert.deepEqual(readFileSync(path), data);
    assert.deepEqual(
      seenRegistry.map((s) => s.authorization),
      [undefined, `Basic ${b64("alice:pw")}`],
    );
    assert.deepEqual(seenCdn, [{ url: "/cdn/blob?sig=1", authorization: undefined }]);

    // Without credentials, the Basic challenge is an auth error that says how to provide them.
    delete process.env.SMOLVM_REGISTRY_USER;
    delete process.env.SMOLVM_REGISTRY_PASSWORD;
    await assert.rejects(
      fetchBlob(ref, { mediaType: "x", digest: `sha256:${"1".repeat(64)}`, size: 1 }, dir, opts),
      (e) =>
        e instanceof RegistryAuthError && /requires a login/.test(e.message) && /SMOLVM_REGISTRY_USER/.test(e.message),
    );
  } finally {
    registry.server.close();
    cdn.server.close();
  }
});
