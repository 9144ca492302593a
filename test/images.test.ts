/**
 * Images on real VMs: OCI images pushed by the test to a real registry on loopback (Debian's docker-registry), pulled,
 * converted and booted; the python preset with pip, venv, snapshot and fork.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { ImageError } from "../src/errors.js";
import { blobsDir, getImage, imageDir, imagesDir, listImages, refTarget } from "../src/images/image-store.js";
import { parseRef, refString } from "../src/images/oci/reference.js";
import { pullImage } from "../src/images/pull.js";
import { busyboxPath } from "../src/images/rootfs.js";
import { removeImage } from "../src/images/usage.js";
import { SmolVM } from "../src/index.js";
import { StateStore } from "../src/state/store.js";
import { cli, isolatedState } from "./helpers.js";
import { type Entry, pushImage, pushManifest } from "./support/oci-build.js";
import { blobDataPath, startRegistry } from "./support/registry.js";

isolatedState();

const busybox = busyboxPath() as string;
/** A base layer with a static busybox as /bin/sh, and a random file so every run pulls a new image. */
const baseLayer = (): Entry[] => [
  { path: "bin", type: "dir", mode: 0o755 },
  { path: "bin/busybox", data: readFileSync(busybox), mode: 0o755 },
  ...[
    "sh",
    "cat",
    "ls",
    "stat",
    "uniq",
    "wc",
    "id",
    "pwd",
    "echo",
    "test",
    "df",
    "tail",
    "awk",
    "dd",
    "head",
    "uname",
  ].map((a): Entry => ({ path: `bin/${a}`, type: "symlink", linkname: "busybox" })),
  { path: "etc", type: "dir", mode: 0o755 },
  { path: "etc/passwd", data: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n" },
  { path: "etc/group", data: "root:x:0:\napp:x:1000:\nstaff:x:50:\n" },
  { path: "etc/nonce", data: randomBytes(8).toString("hex") },
  { path: "tmp", type: "dir", mode: 0o1777 },
  { path: "home/app", type: "dir", mode: 0o750, uid: 1000, gid: 1000 },
];

const run = async (vm: SmolVM, cmd: string) => {
  const r = await vm.run(cmd);
  assert.equal(r.exitCode, 0, `${cmd}: ${r.stderr}`);
  return r.stdout.trim();
};

describe("OCI images from a registry on loopback", () => {
  let reg: Awaited<ReturnType<typeof startRegistry>>;
  const insecure = () => ({ SMOLVM_INSECURE_REGISTRIES: reg.host });
  before(async () => {
    reg = await startRegistry();
    process.env.SMOLVM_INSECURE_REGISTRIES = reg.host;
  });
  after(async () => {
    delete process.env.SMOLVM_INSECURE_REGISTRIES;
    await reg?.stop();
    // the images this file pulled leave the user's store again (VMs are gone by now: each test deletes its own)
    for (const snap of SmolVM.listSnapshots().reverse()) SmolVM.deleteSnapshot(snap.id); // pack() takes one
    const store = StateStore.open();
    for (const rec of listImages()) if (rec.origin.startsWith(`${reg.host}/`)) removeImage(store, rec, null);
  });

  test("layers applied (whiteout, opaque dir, hard link, setuid, owner), config honoured, boots", async () => {
    await pushImage(reg.host, "test/app", "v1", {
      layers: [
        {
          compression: "gzip",
          entries: [
            ...baseLayer(),
            { path: "data", type: "dir" },
            { path: "data/keep.txt", data: "keep" },
            { path: "data/gone.txt", data: "to be deleted" },
            { path: "opq", type: "dir" },
            { path: "opq/lower.txt", data: "lower" },
            { path: "bin/suid", data: "#!/bin/sh\necho hi\n", mode: 0o4755 },
          ],
        },
        {
          compression: "zstd",
          entries: [
            { path: "data/.wh.gone.txt", data: "" },
            { path: "opq/.wh..wh..opq", data: "" },
            { path: "opq/upper.txt", data: "upper" },
            { path: "data/hard.txt", type: "link", linkname: "data/keep.txt" },
            { path: "srv/owned", data: "x", uid: 1000, gid: 50, mode: 0o640 },
          ],
        },
      ],
      config: { Env: ["FOO=from-image", "PATH=/bin"], WorkingDir: "/home/app", User: "app" },
    });
    const ref = `${reg.host}/test/app:v1`;
    await using vm = await SmolVM.create({ image: ref, coldBoot: true, memSizeMib: 256 });
    assert.equal(await run(vm, "cat /data/keep.txt"), "keep");
    assert.equal(await run(vm, "test -e /data/gone.txt && echo present || echo absent"), "absent");
    assert.equal(await run(vm, "ls /opq"), "upper.txt");
    assert.equal(await run(vm, "stat -c %i /data/keep.txt /data/hard.txt | uniq | wc -l"), "1");
    assert.equal(await run(vm, "stat -c %a /bin/suid"), "4755");
    assert.equal(await run(vm, "stat -c '%u:%g %a' /srv/owned"), "1000:50 640");
    // the image's config: Env, WorkingDir, User (and the caller's options still win)
    assert.equal(await run(vm, "echo $FOO"), "from-image");
    assert.equal(await run(vm, "pwd"), "/home/app");
    assert.equal(await run(vm, "id -u"), "1000");
    assert.equal((await vm.run("id -u", { user: "root" })).stdout.trim(), "0");
    assert.equal((await vm.run("pwd", { cwd: "/tmp" })).stdout.trim(), "/tmp");
    assert.equal(vm.info().image, ref);
    const id = vm.config.imageInfo?.id as string;
    assert.ok(getImage(id), "the image is in the store");

    // removing an image in use is refused, naming the VM
    const rm = await cli(["image", "rm", ref]);
    assert.notEqual(rm.code, 0);
    assert.match(rm.stderr, new RegExp(`in use by VM ${vm.vmId}`));
    assert.ok(getImage(id), "still there");
  });

  test("User as uid:gid, Entrypoint/Cmd as the default of `smolvm run`", async () => {
    await pushImage(reg.host, "test/cmd", "v1", {
      layers: [{ compression: "gzip", entries: baseLayer() }],
      config: { User: "1000:50", Entrypoint: ["/bin/sh", "-c"], Cmd: ["echo entry $(id -u):$(id -g)"] },
    });
    const r = await cli(["run", "--image", `${reg.host}/test/cmd:v1`, "--cold-boot", "--mem", "256"], {
      env: insecure(),
      timeoutMs: 240_000,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "entry 1000:50");
  });

  test("a pack of a VM of an image keeps the image's run defaults", async () => {
    await pushImage(reg.host, "test/packed", "v1", {
      layers: [{ compression: "gzip", entries: [...baseLayer(), { path: "srv/data.txt", data: "packed" }] }],
      config: { WorkingDir: "/srv", User: "app" },
    });
    const dir = mkdtempSync(join(tmpdir(), "smolvm-img-pack-"));
    try {
      const file = join(dir, "vm.smolmachine");
      {
        await using vm = await SmolVM.create({ image: `${reg.host}/test/packed:v1`, coldBoot: true, memSizeMib: 256 });
        await vm.run("echo changed > /tmp/mark", { user: "root" });
        await vm.pack(file);
      }
      await using copy = await SmolVM.fromPack(file);
      assert.equal(await run(copy, "cat data.txt /tmp/mark"), "packedchanged");
      assert.equal(await run(copy, "id -un"), "app");
      assert.equal(copy.info().image, `${reg.host}/test/packed:v1`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a corrupted blob is refused with a digest error, and nothing is stored", async () => {
    const pushed = await pushImage(reg.host, "test/bad", "v1", {
      layers: [{ compression: "gzip", entries: [...baseLayer(), { path: "big", data: randomBytes(4096) }] }],
    });
    const layer = pushed.layerDigests[0] as string;
    const file = blobDataPath(reg.storageDir, layer);
    const bytes = readFileSync(file);
    bytes[bytes.length - 100] = (bytes[bytes.length - 100] as number) ^ 0xff;
    writeFileSync(file, bytes);
    const before = new Set(readdirSync(imagesDir()));
    await assert.rejects(
      pullImage(`${reg.host}/test/bad:v1`),
      (e: Error) => e instanceof ImageError && /digest/i.test(e.message) && e.message.includes(layer),
    );
    assert.equal(existsSync(join(blobsDir(), "sha256", layer.slice(7))), false, "no blob kept");
    assert.deepEqual(
      readdirSync(join(blobsDir(), "sha256")).filter((f) => f.includes(".tmp")),
      [],
      "no temp file left",
    );
    assert.deepEqual(
      readdirSync(imagesDir()).filter((n) => !before.has(n)),
      [],
      "no image or staging dir left",
    );
    assert.equal(refTarget(refString(parseRef(`${reg.host}/test/bad:v1`))), null);
  });

  test("layers that are not the ones the image config names are refused (rootfs.diff_ids)", async () => {
    const a = await pushImage(reg.host, "test/mix", "a", { layers: [{ compression: "gzip", entries: baseLayer() }] });
    const b = await pushImage(reg.host, "test/mix", "b", { layers: [{ compression: "gzip", entries: baseLayer() }] });
    // b's config (its id) with a's layer: what a registry passing its own files off as another image would serve
    const config = Buffer.from(
      await (await fetch(`http://${reg.host}/v2/test/mix/blobs/${b.configDigest}`)).arrayBuffer(),
    );
    const layer = (
      (await await fetch(`http://${reg.host}/v2/test/mix/manifests/a`, {
        headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
      }).then((r) => r.json())) as { layers: unknown[] }
    ).layers;
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: b.configDigest, size: config.length },
        layers: layer,
      }),
    );
    await pushManifest(reg.host, "test/mix", "forged", manifest, "application/vnd.oci.image.manifest.v1+json");
    assert.notEqual(a.configDigest, b.configDigest);
    await assert.rejects(pullImage(`${reg.host}/test/mix:forged`), /do not belong to this image/);
    assert.equal(getImage(b.configDigest.slice(7)), null, "nothing stored under b's id");
  });

  test("two processes pulling one image at once both succeed and one copy is stored", async () => {
    const pushed = await pushImage(reg.host, "test/twice", "v1", {
      layers: [{ compression: "gzip", entries: [...baseLayer(), { path: "payload", data: randomBytes(1 << 20) }] }],
    });
    const ref = `${reg.host}/test/twice:v1`;
    const [a, b] = await Promise.all([
      cli(["image", "pull", ref, "--json"], { env: insecure() }),
      cli(["image", "pull", ref, "--json"], { env: insecure() }),
    ]);
    assert.equal(a.code, 0, a.stderr);
    assert.equal(b.code, 0, b.stderr);
    const ia = JSON.parse(a.stdout).id as string;
    assert.equal(JSON.parse(b.stdout).id, ia);
    assert.equal(`sha256:${ia}`, pushed.configDigest);
    assert.ok(existsSync(join(imageDir(ia), "rootfs.ext4")));
    assert.deepEqual(
      readdirSync(imagesDir()).filter((n) => n.startsWith(".build-")),
      [],
      "no staging left",
    );
    const ls = await cli(["image", "list", "--json"]);
    assert.equal(JSON.parse(ls.stdout).filter((i: { id: string }) => i.id === ia).length, 1);
  });

  test("rm of an unused image removes it; unknown images and tags are named in the error", async () => {
    await pushImage(reg.host, "test/gone", "v1", { layers: [{ compression: "gzip", entries: baseLayer() }] });
    const ref = `${reg.host}/test/gone:v1`;
    const id = (await pullImage(ref)).id;
    const rm = await cli(["image", "rm", ref, "--json"]);
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal(getImage(id), null);
    assert.equal(existsSync(imageDir(id)), false);
    await assert.rejects(pullImage(`${reg.host}/test/gone:nope`), /nope/);
    await assert.rejects(SmolVM.create({ image: `${reg.host}/test/never:v1`, coldBoot: true }), /test\/never/);
  });

  test("diskSizeMib grows the root file system; a full disk is ENOSPC in the guest", async () => {
    await pushImage(reg.host, "test/disk", "v1", { layers: [{ compression: "gzip", entries: baseLayer() }] });
    const ref = `${reg.host}/test/disk:v1`;
    const img = await pullImage(ref);
    const mib = Math.ceil(img.sizeBytes / 2 ** 20) + 512;
    await using vm = await SmolVM.create({ image: ref, diskSizeMib: mib, coldBoot: true, memSizeMib: 256 });
    const kb = Number(await run(vm, "df -k / | tail -1 | awk '{print $2}'"));
    assert.ok(kb > (mib - 64) * 1024 && kb <= mib * 1024, `root fs is ${kb} KiB, asked ${mib} MiB`);
    const fill = await vm.run("dd if=/dev/zero of=/fill bs=1M count=100000 2>&1; echo rc=$?");
    assert.match(fill.stdout, /No space left on device/);
    await assert.rejects(SmolVM.create({ image: ref, diskSizeMib: 64, coldBoot: true }), /diskSizeMib/);
  });
});

describe("the python preset", () => {
  test("python3, pip, venv; what pip installs survives a snapshot and a fork", async () => {
    await using vm = await SmolVM.create({ image: "python" });
    assert.equal(await run(vm, 'python3 -c "print(2+2)"'), "4");
    assert.match(await run(vm, "pip --version"), /^pip \d+/);
    assert.match(await run(vm, "python3 -m venv /tmp/venv && /tmp/venv/bin/python -V"), /^Python 3\./);
    // a package installed by pip from a local folder (no network: setuptools is in the image)
    await vm.files.write("/root/demo/pyproject.toml", '[project]\nname = "demo"\nversion = "1.0"\n');
    await vm.files.write("/root/demo/demo.py", "ANSWER = 42\n");
    const pip = await vm.run("cd /root/demo && pip install --no-index --no-build-isolation . 2>&1");
    assert.equal(pip.exitCode, 0, pip.stdout);
    const snap = await vm.snapshot();
    await using restored = await SmolVM.fromSnapshot(snap.id);
    assert.equal(await run(restored, 'cd / && python3 -c "import demo; print(demo.ANSWER)"'), "42");
    const [clone] = await vm.fork(1);
    await using c = clone as SmolVM;
    assert.equal(await run(c, "pip show demo | head -1"), "Name: demo");
    assert.equal(c.info().image, "python");
  });
});
