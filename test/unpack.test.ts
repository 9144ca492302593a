/** Applying OCI layers to a directory (whiteouts, owners, hostile paths) and making ext4 images of it. No VM needed. */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { pack } from "tar-stream";
import { ImageError } from "../src/errors.js";
import { growExt4, makeExt4 } from "../src/images/ext4.js";
import { type Fixup, RootfsBuilder, resolveInRoot, type UnpackOptions } from "../src/images/unpack.js";

const base = mkdtempSync(join(tmpdir(), "smolvm-unpack-test-"));
after(() => rmSync(base, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;
const ls = (d: string) => readdirSync(d).sort();
let n = 0;
const fresh = (name = "root") => {
  const d = join(base, `${name}${n++}`);
  mkdirSync(d);
  return d;
};

interface E {
  name: string;
  type?: "file" | "directory" | "symlink" | "link" | "character-device" | "block-device" | "fifo";
  data?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  /** Raw PAX records written in a pax header before the entry (binary-safe, unlike tar-stream's own). */
  pax?: Record<string, Buffer>;
}

const PAX_MARK = "PaxHeaderMark.";

async function tar(entries: E[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  let paxes = 0;
  p.on("data", (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve) => p.on("end", () => resolve()));
  const add = (h: Parameters<typeof p.entry>[0], body?: Buffer) =>
    new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body) p.entry(h, body, cb);
      else p.entry(h, cb);
    });
  for (const e of entries) {
    if (e.pax) {
      const records = Object.entries(e.pax).map(([k, v]) => {
        const body = Buffer.concat([Buffer.from(` ${k}=`), v, Buffer.from("\n")]);
        let len = body.length + 1;
        while (String(len).length + body.length !== len) len = String(len).length + body.length;
        return Buffer.concat([Buffer.from(String(len)), body]);
      });
      // tar-stream writes no body for a pax header entry: write a file and retype it below.
      await add({ name: `${PAX_MARK}${paxes++}`, type: "file", size: 0 }, Buffer.concat(records));
    }
    const type = e.type ?? "file";
    const data = e.data === undefined ? undefined : Buffer.from(e.data);
    const h = {
      name: e.name,
      type,
      mode: e.mode ?? (type === "directory" ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: new Date(1_600_000_000_000),
      ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
      ...(e.devmajor !== undefined ? { devmajor: e.devmajor, devminor: e.devminor ?? 0 } : {}),
    };
    await add(h, type === "file" ? (data ?? Buffer.alloc(0)) : undefined);
  }
  p.finalize();
  await done;
  const out = Buffer.concat(chunks);
  for (let at = 0; at + 512 <= out.length && paxes > 0; at += 512) {
    if (out.toString("latin1", at, at + PAX_MARK.length) !== PAX_MARK) continue;
    out[at + 156] = 0x78; // typeflag 'x': PAX extended header for the next entry
    out.fill(0x20, at + 148, at + 156);
    let sum = 0;
    for (let i = at; i < at + 512; i++) sum += out[i] as number;
    out.write(`${sum.toString(8).padStart(6, "0")}\0 `, at + 148, "latin1");
  }
  return out;
}

const zstd = (buf: Buffer, extra: string[] = []) => execFileSync("zstd", ["-q", "-c", ...extra], { input: buf });

/** Apply each layer (as a file for even indexes, as a stream for odd ones) and finish. */
async function build(layers: Buffer[], opts: UnpackOptions = {}, root = fresh()) {
  const b = new RootfsBuilder(root, opts);
  for (const [i, layer] of layers.entries()) {
    if (i % 2 === 0) {
      const f = join(base, `layer${n++}`);
      writeFileSync(f, layer);
      await b.applyLayer(f, `L${i}`);
    } else await b.applyLayer(Readable.from([layer]), `L${i}`);
  }
  return { root, ...b.finish() };
}

const debugfs = (img: string, cmd: string) =>
  execFileSync("debugfs", ["-R", cmd, img], { stdio: ["ignore", "pipe", "ignore"] }).toString();
/** uid, gid, permission bits and type word from `debugfs stat`. */
function inode(img: string, path: string) {
  const out = debugfs(img, `stat "${path}"`);
  const m = /Type: (.+?)\s+Mode:\s+(\d+)/.exec(out);
  const u = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(out);
  assert.ok(m && u, `no inode for ${path}: ${out}`);
  const dev = /Device major\/minor number: (\d+):(\d+)/.exec(out);
  return {
    type: m[1],
    mode: Number.parseInt(m[2] as string, 8),
    uid: Number(u[1]),
    gid: Number(u[2]),
    dev: dev ? `${Number(dev[1])}:${Number(dev[2])}` : null,
  };
}

describe("layer semantics", () => {
  it("a whiteout removes a lower file but not one the same layer created; opaque dirs keep only the upper layer", async () => {
    const l1 = await tar([
      { name: "etc/", type: "directory" },
      { name: "etc/gone", data: "lower" },
      { name: "etc/kept", data: "lower" },
      { name: "opq/", type: "directory" },
      { name: "opq/old", data: "lower" },
      { name: "opq/sub/deep", data: "lower" },
    ]);
    const l2 = await tar([
      { name: "etc/.wh.gone" },
      { name: "etc/mine", data: "upper" },
      { name: "etc/.wh.mine" }, // same layer: must not remove it
      { name: "opq/", type: "directory" },
      { name: "opq/.wh..wh..opq" },
      { name: "opq/new", data: "upper" },
    ]);
    const { root } = await build([l1, l2]);
    assert.equal(existsSync(join(root, "etc/gone")), false);
    assert.equal(readFileSync(join(root, "etc/kept"), "utf8"), "lower");
    assert.equal(readFileSync(join(root, "etc/mine"), "utf8"), "upper");
    assert.equal(existsSync(join(root, "etc/.wh.mine")), false);
    assert.deepEqual(ls(join(root, "opq")), ["new"]);
  });

  it("links hard links to one inode", async () => {
    const { root } = await build([
      await tar([
        { name: "a", data: "x" },
        { name: "b", type: "link", linkname: "./a" },
      ]),
    ]);
    assert.equal(statSync(join(root, "a")).ino, statSync(join(root, "b")).ino);
    assert.equal(statSync(join(root, "a")).nlink, 2);
  });

  it("keeps hard links, symlinks (dangling too), modes and setuid bits; replaces paths of another type", async () => {
    const l1 = await tar([
      { name: "bin/su", data: "su", mode: 0o4755 },
      { name: "bin/su2", type: "link", linkname: "bin/su" },
      { name: "bin/dangling", type: "symlink", linkname: "/nowhere/at/all" },
      { name: "bin/sh", type: "symlink", linkname: "su" },
      { name: "tmp/", type: "directory", mode: 0o1777 },
      { name: "x", type: "directory" },
      { name: "x/child", data: "c" },
      { name: "ro", data: "r", mode: 0o400 },
      { name: "usr/lib/", type: "directory" },
      { name: "lib", type: "symlink", linkname: "usr/lib" },
      { name: "lib/libc.so", data: "libc" },
    ]);
    // A new file over one half of a hard link must not write through to the other half.
    const l2 = await tar([
      { name: "x", data: "now a file" },
      { name: "bin/su2", data: "replaced" },
    ]);
    const { root, files } = await build([l1, l2]);
    assert.equal(readlinkSync(join(root, "bin/dangling")), "/nowhere/at/all");
    assert.equal(readlinkSync(join(root, "bin/sh")), "su");
    assert.equal(statSync(join(root, "tmp")).mode & 0o7777, 0o1777);
    assert.equal(readFileSync(join(root, "x"), "utf8"), "now a file");
    assert.equal(readFileSync(join(root, "bin/su"), "utf8"), "su");
    assert.equal(readFileSync(join(root, "bin/su2"), "utf8"), "replaced");
    assert.equal(readFileSync(join(root, "usr/lib/libc.so"), "utf8"), "libc"); // through the in-tree symlink
    assert.equal(statSync(join(root, "bin/su")).mtimeMs, 1_600_000_000_000);
    assert.equal(lstatSync(join(root, "bin/sh")).mtimeMs, 1_600_000_000_000);
    if (isRoot) {
      assert.equal(statSync(join(root, "bin/su")).mode & 0o7777, 0o4755);
      assert.equal(statSync(join(root, "ro")).mode & 0o7777, 0o400);
    }
    assert.equal(files, 13);
  });

  it("applies owners on the host as root", { skip: !isRoot && "needs root" }, async () => {
    const l = await tar([
      { name: "home/u/", type: "directory", uid: 1000, gid: 1001, mode: 0o750 },
      { name: "home/u/f", data: "x", uid: 1000, gid: 1001, mode: 0o6755 },
      { name: "home/u/l", type: "symlink", linkname: "f", uid: 1002, gid: 1003 },
    ]);
    const { root, fixups } = await build([l], { owners: "apply" });
    const f = statSync(join(root, "home/u/f"));
    assert.deepEqual([f.uid, f.gid, f.mode & 0o7777], [1000, 1001, 0o6755]); // chmod after chown keeps setuid
    const d = statSync(join(root, "home/u"));
    assert.deepEqual([d.uid, d.gid, d.mode & 0o7777], [1000, 1001, 0o750]);
    const l2 = lstatSync(join(root, "home/u/l"));
    assert.deepEqual([l2.uid, l2.gid], [1002, 1003]);
    assert.deepEqual(fixups, []);
  });

  it("reads gzip, zstd and plain layers", async () => {
    const a = await tar([{ name: "a", data: "gz" }]);
    const b = await tar([{ name: "b", data: "zst" }]);
    const c = await tar([{ name: "c", data: "plain" }]);
    const { root } = await build([gzipSync(a), zstd(b), c, zstd(await tar([{ name: "d", data: "z2" }]), ["-19"])]);
    assert.deepEqual(
      ["a", "b", "c", "d"].map((f) => readFileSync(join(root, f), "utf8")),
      ["gz", "zst", "plain", "z2"],
    );
  });

  it("refuses a zstd frame asking for a window over the limit", async () => {
    const big = await tar([{ name: "a", data: "x" }]);
    // From a pipe the size is unknown, so zstd keeps the 2 GiB window it was asked for.
    const frame = execFileSync("sh", ["-c", "zstd -q -c --long=31 | cat"], { input: big });
    assert.equal(frame[5], 0xa8); // window descriptor: 2^31
    await assert.rejects(build([frame]), (e: Error) => e instanceof ImageError && /L0: .*window/.test(e.message));
  });
});

describe("fixups in the ext4 image", () => {
  it("carries owners, devices, fifos and capabilities into the image", async () => {
    const cap = Buffer.from("0100000200200000ff000000000000000000000000", "hex").subarray(0, 20);
    const l1 = await tar([
      { name: "etc/shadow", data: "s", uid: 0, gid: 42, mode: 0o640 },
      { name: "home/u/", type: "directory", uid: 100000, gid: 100001, mode: 0o700 },
      { name: "usr/bin/ping", data: "p", mode: 0o4755, pax: { "SCHILY.xattr.security.capability": cap } },
      { name: "dev/null", type: "character-device", devmajor: 1, devminor: 3, mode: 0o666 },
      { name: "dev/gone", type: "character-device", devmajor: 1, devminor: 5 },
      { name: "dev/replaced", type: "block-device", devmajor: 8, devminor: 0 },
      { name: "run/fifo", type: "fifo", mode: 0o600, uid: 7, gid: 8 },
      { name: "etc/sel", data: "x", pax: { "SCHILY.xattr.security.selinux": Buffer.from("dropped") } },
      { name: "gone/", type: "directory", uid: 5 },
      { name: "gone/f", data: "f", uid: 5, pax: { "SCHILY.xattr.user.k": Buffer.from("v") } },
    ]);
    const l2 = await tar([{ name: "dev/.wh.gone" }, { name: "dev/replaced", data: "file now" }, { name: ".wh.gone" }]);
    const { root, fixups } = await build([l1, l2], { owners: "fixup" });
    assert.equal(existsSync(join(root, "dev/null")), false); // nodes exist only as fixups
    const paths = fixups.map((f: Fixup) => `${f.kind} ${f.path}`);
    const stale = /\/dev\/gone|node \/dev\/replaced|selinux|\/gone/;
    assert.deepEqual(
      paths.filter((p) => stale.test(p)),
      [],
    );
    assert.ok(paths.includes("xattr /usr/bin/ping") && paths.includes("node /dev/null"));
    const img = join(base, "fix.ext4");
    const r = await makeExt4(root, img, { fixups, label: "t", freeBytes: 16 << 20 });
    assert.ok(r.sizeBytes >= 16 << 20 && r.files >= 8);
    assert.deepEqual(inode(img, "/etc/shadow"), { type: "regular", mode: 0o640, uid: 0, gid: 42, dev: null });
    const home = inode(img, "/home/u");
    assert.deepEqual([home.type, home.mode, home.uid, home.gid], ["directory", 0o700, 100000, 100001]);
    assert.equal(inode(img, "/usr/bin/ping").mode, 0o4755);
    assert.deepEqual(inode(img, "/dev/null"), { type: "character special", mode: 0o666, uid: 0, gid: 0, dev: "1:3" });
    const fifo = inode(img, "/run/fifo");
    assert.deepEqual([fifo.type, fifo.mode, fifo.uid, fifo.gid], ["FIFO", 0o600, 7, 8]);
    assert.equal(inode(img, "/dev/replaced").type, "regular");
    assert.match(debugfs(img, "ls /dev"), /replaced/);
    assert.doesNotMatch(debugfs(img, "ls /dev"), /gone/);
    const ea = debugfs(img, "ea_get /usr/bin/ping security.capability");
    assert.match(ea.replace(/\s+/g, " "), /01 00 00 02 00 20 00 00 ff 00 00 00/);
  });

  it("makes an image as root with owners applied on the host", { skip: !isRoot && "needs root" }, async () => {
    const l = await tar([
      { name: "srv/", type: "directory", uid: 33, gid: 34, mode: 0o2775 },
      { name: "srv/f", data: "f", uid: 33, gid: 34 },
    ]);
    const { root, fixups } = await build([l]);
    const img = join(base, "apply.ext4");
    await makeExt4(root, img, { fixups, freeBytes: 8 << 20 });
    const srv = inode(img, "/srv");
    assert.deepEqual([srv.mode, srv.uid, srv.gid], [0o2775, 33, 34]);
    assert.deepEqual([inode(img, "/srv/f").uid, inode(img, "/srv/f").gid], [33, 34]);
  });
});

describe("hostile layers", () => {
  it("keeps ../, absolute and symlinked paths inside the root", async () => {
    const outer = fresh("outer");
    const root = join(outer, "root");
    const outside = join(outer, "outside");
    mkdirSync(root);
    mkdirSync(outside);
    const l1 = await tar([
      { name: "../x", data: "1" },
      { name: "/abs/../../y", data: "2" },
      { name: "evil", type: "symlink", linkname: outside },
      { name: "evil2", type: "symlink", linkname: "../../.." },
      { name: "loop", type: "symlink", linkname: "loop/x" },
    ]);
    const l2 = await tar([
      { name: "evil/pwned", data: "3" },
      { name: "evil2/pwned2", data: "4" },
      { name: "evil2/../../z", data: "5" },
    ]);
    await build([l1, l2], {}, root);
    assert.deepEqual(ls(outer), ["outside", "root"]);
    assert.deepEqual(ls(outside), []);
    assert.equal(readFileSync(join(root, "pwned2"), "utf8"), "4");
    assert.equal(readFileSync(join(root, "x"), "utf8"), "1");
    assert.equal(readFileSync(join(root, "y"), "utf8"), "2");
    assert.equal(readFileSync(join(root, "z"), "utf8"), "5");
    assert.equal(readFileSync(join(root, outside, "pwned"), "utf8"), "3"); // the absolute target, taken inside root
    assert.equal(resolveInRoot(root, "evil/pwned"), join(root, outside, "pwned"));
    assert.equal(resolveInRoot(root, "evil2/../../x"), join(root, "x"));
    assert.equal(resolveInRoot(root, "nothing/here"), null);
    assert.equal(resolveInRoot(root, "loop/a"), null);
  });

  it("does not set modes through a symlink that replaced a directory in a later layer", async () => {
    const outer = fresh("outer");
    const root = join(outer, "root");
    mkdirSync(join(outer, "outside/b"), { recursive: true, mode: 0o755 });
    mkdirSync(root);
    const l1 = await tar([{ name: "a/b/", type: "directory", mode: 0o700 }]);
    const l2 = await tar([{ name: "a", type: "symlink", linkname: join(outer, "outside") }]);
    await build([l1, l2], {}, root);
    assert.equal(statSync(join(outer, "outside/b")).mode & 0o7777, 0o755);
  });

  it("refuses hard links that point outside or at nothing, naming the layer and entry", async () => {
    const outer = fresh("outer");
    writeFileSync(join(outer, "secret"), "s");
    const root = join(outer, "root");
    mkdirSync(root);
    const nlink = statSync("/etc/passwd").nlink;
    for (const target of ["../../etc/passwd", "../secret", "/etc/passwd"]) {
      const l = await tar([{ name: "h", type: "link", linkname: target }]);
      await assert.rejects(
        build([l], {}, fresh()),
        (e: Error) => e instanceof ImageError && /L0: entry "h": hard link target/.test(e.message),
      );
    }
    const dirLink = await tar([
      { name: "d/", type: "directory" },
      { name: "h", type: "link", linkname: "d" },
    ]);
    await assert.rejects(build([dirLink], {}, root), /is a directory/);
    assert.equal(statSync("/etc/passwd").nlink, nlink);
    assert.equal(statSync(join(outer, "secret")).nlink, 1);
  });

  it("stops at maxBytes and maxEntries, and refuses over-long names", async () => {
    const root = fresh();
    const b = new RootfsBuilder(root, { maxBytes: 1000 });
    await b.applyLayer(Readable.from([await tar([{ name: "small", data: "x".repeat(600) }])]), "first");
    const big = await tar([{ name: "big", data: "y".repeat(600) }]);
    await assert.rejects(
      b.applyLayer(Readable.from([big]), "second"),
      (e: Error) => e instanceof ImageError && /second: entry "big": .*1000/.test(e.message),
    );
    assert.equal(existsSync(join(root, "big")), false);
    await assert.rejects(
      b.applyLayer(Readable.from([await tar([{ name: "c" }])]), "third"),
      /stopped after an earlier error/,
    );
    assert.throws(() => b.finish(), ImageError);
    const many = await tar(Array.from({ length: 5 }, (_, i) => ({ name: `f${i}` })));
    await assert.rejects(build([many], { maxEntries: 4 }), /more than 4 entries/);
    await assert.rejects(build([await tar([{ name: `${"n".repeat(256)}` }])]), /longer than 255/);
  });

  it("reports a truncated or corrupt layer", async () => {
    const t = await tar([{ name: "a", data: "z".repeat(5000) }]);
    await assert.rejects(build([t.subarray(0, 2048)]), (e: Error) => e instanceof ImageError && /L0/.test(e.message));
    await assert.rejects(
      build([gzipSync(t).subarray(0, 40)]),
      (e: Error) => e instanceof ImageError && /L0/.test(e.message),
    );
  });
});

describe("ext4 sizing and errors", () => {
  it("reports fixups debugfs could not apply, and paths it cannot take", async () => {
    const root = fresh();
    const img = join(base, "bad.ext4");
    const missing: Fixup = { kind: "owner", path: "/missing", uid: 1, gid: 1, mode: 0o100644 };
    await assert.rejects(
      makeExt4(root, img, { fixups: [missing], freeBytes: 8 << 20 }),
      /debugfs could not apply .*\/missing/,
    );
    const quoted: Fixup = { kind: "node", path: '/a"b', type: "p", major: 0, minor: 0, mode: 0o10644, uid: 0, gid: 0 };
    await assert.rejects(makeExt4(root, img, { fixups: [quoted], freeBytes: 8 << 20 }), /a\\"b/);
    assert.equal(existsSync(img), false);
  });

  it("refuses a size too small, naming the size needed, and that size works", async () => {
    const root = fresh();
    writeFileSync(join(root, "blob"), randomBytes(24 << 20));
    const img = join(base, "small.ext4");
    let need = 0;
    await assert.rejects(makeExt4(root, img, { sizeBytes: 16 << 20 }), (e: Error) => {
      const m = /at least (\d+) bytes/.exec(e.message);
      need = Number(m?.[1]);
      return e instanceof ImageError && need > 24 << 20;
    });
    assert.equal(existsSync(img), false);
    assert.deepEqual(
      ls(base).filter((f) => f.startsWith("small.ext4")),
      [],
    ); // no temp file left
    const r = await makeExt4(root, img, { sizeBytes: need });
    assert.equal(r.sizeBytes, need);
  });

  it("grows a file system and keeps its files; refuses to shrink", async () => {
    const root = fresh();
    writeFileSync(join(root, "hello"), "hello world");
    const img = join(base, "grow.ext4");
    await makeExt4(root, img, { sizeBytes: 64 << 20 });
    const big = join(base, "grow-big.ext4");
    await growExt4(img, big, 128 << 20);
    const blocks = (f: string) =>
      Number(
        /Block count:\s+(\d+)/.exec(
          execFileSync("dumpe2fs", ["-h", f], { stdio: ["ignore", "pipe", "ignore"] }).toString(),
        )?.[1],
      );
    assert.equal(blocks(img), 16384);
    assert.equal(blocks(big), 32768);
    assert.equal(debugfs(big, "cat /hello"), "hello world");
    assert.ok(statSync(big).blocks * 512 < 64 << 20, "the copy stays sparse");
    await assert.rejects(growExt4(big, join(base, "shrunk.ext4"), 64 << 20), /shrink .*134217728 to 67108864/);
    assert.equal(existsSync(join(base, "shrunk.ext4")), false);
  });
});
