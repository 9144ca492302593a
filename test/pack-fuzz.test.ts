/**
 * `.smolmachine` files as hostile input, without a VM: packs are built by hand (every field as bad as a test likes)
 * and opened with readPackManifest, verifyPack and extractPack. Whatever the file says, opening it throws PackError
 * or succeeds, writes nothing outside the destination, stays within its declared sizes and refuses disks that name
 * host files. Then fast-check throws random manifests and byte mutations at the same functions.
 */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import fc from "fast-check";
import { stateFileOf } from "../src/backends/firecracker/vmm.js";
import { extractPack, PackError, readPackManifest, verifyPack, writePack } from "../src/images/pack.js";
import { unzstdToFile } from "../src/images/pack-io.js";
import {
  canonicalManifest,
  hostPackKey,
  hostSignature,
  manifestSignedWith,
  packKeyPath,
} from "../src/images/pack-key.js";
import { checkQcow2Header, checkQcow2WithQemuImg, UnsafeQcow2Error } from "../src/images/qcow2.js";
import { cli, repoRoot } from "./helpers.js";
import {
  anyManifest,
  BAD_FIELDS,
  buildPack,
  dataFlips,
  frame,
  isPackError,
  manifestOf,
  mutate,
  mutations,
  onlyPackErrors,
  type Part,
  part,
  QCOW2_HEADER_CASES,
  qemuImg,
  SECTION_CASES,
  scratch,
  sectionEdits,
  zstd,
} from "./pack-builder.js";

const root = mkdtempSync(join(tmpdir(), "smolvm-pack-fuzz-"));
process.env.SMOLVM_DATA_DIR = join(root, "data");
process.env.SMOLVM_STATE_DIR = join(root, "state");
const { packs, work, sentinel, save, freshDest, snapshot, assertSameTree, refusedExtract } = scratch(root);
after(() => rmSync(root, { recursive: true, force: true }));
const execFileP = promisify(execFile);
let n = 0;

let kernel: Part;
let initrd: Part;
let disk: Part;
let mem: Part;
let cleanQcow2: string;
before(() => {
  kernel = part("kernel", Buffer.from("a kernel\n".repeat(100)));
  initrd = part("initrd", Buffer.from("an initrd\n".repeat(100)));
  cleanQcow2 = join(root, "clean.qcow2");
  qemuImg(["create", "-q", "-f", "qcow2", cleanQcow2, "16M"]);
  disk = part("disk", readFileSync(cleanQcow2));
  mem = part("mem", randomBytes(50_000));
});

describe("pack files as hostile input", () => {
  it("a clean pack extracts under fixed names, private, and nothing else", async () => {
    const file = save(buildPack([kernel, initrd, disk, mem]));
    const dest = freshDest();
    const before = snapshot(dest);
    const r = await extractPack(file, dest);
    assert.deepEqual(readdirSync(dest).sort(), ["disk.qcow2", "initrd", "kernel", "mem"]);
    assert.equal(r.disk, join(dest, "disk.qcow2"));
    for (const f of readdirSync(dest)) assert.equal(statSync(join(dest, f)).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dirname(dest)), ["dest"], "a temp dir was left next to the destination");
    assert.deepEqual(readFileSync(join(dest, "disk.qcow2")), readFileSync(cleanQcow2));
    assertSameTree(before, dest);
    // the caller chose the destination by a manifest read earlier: a file that changed since is refused
    const other = readPackManifest(save(buildPack([kernel, initrd, disk]))).manifest;
    const d2 = freshDest();
    const b2 = snapshot(d2);
    await assert.rejects(extractPack(file, d2, other), isPackError(/changed while being read/));
    assertSameTree(b2, d2);
    assert.ok(!existsSync(d2));
  });

  for (const evil of ["../../../tmp/evil", "/abs", "kernel/../../x", "../evil", "KERNEL", "", "kernel\0"]) {
    it(`a section named ${JSON.stringify(evil)} is refused, naming it, and nothing is written`, async () => {
      const file = save(buildPack([{ ...kernel, name: evil }, kernel, initrd, disk]));
      const dest = freshDest();
      await refusedExtract(file, dest, /unknown section/);
      assert.ok(!existsSync(dest));
      await assert.rejects(verifyPack(file), isPackError(/unknown section/));
      const r = await cli(["pack", "inspect", file, "--verify"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /not a usable \.smolmachine file: unknown section/);
    });
  }

  it("a Firecracker pack's vmstate extracts beside its memory, where the backend looks for it; never without mem", async () => {
    const state = randomBytes(3000);
    const vmstate = part("vmstate", state);
    const file = save(buildPack([kernel, initrd, disk, mem, vmstate]));
    const dest = freshDest();
    await extractPack(file, dest);
    assert.deepEqual(readdirSync(dest).sort(), ["disk.qcow2", "initrd", "kernel", "mem", "mem.vmstate"]);
    assert.equal(stateFileOf(join(dest, "mem")), join(dest, "mem.vmstate"));
    assert.deepEqual(readFileSync(join(dest, "mem.vmstate")), state);
    await refusedExtract(save(buildPack([kernel, initrd, disk, vmstate])), freshDest(), /vmstate without section mem/);
  });

  it("duplicate and unknown sections are refused", async () => {
    await refusedExtract(save(buildPack([kernel, kernel, initrd, disk])), freshDest(), /duplicate section kernel/);
    await refusedExtract(save(buildPack([kernel, initrd, disk, { ...mem, name: "swap" }])), freshDest(), /"swap"/);
    const five = buildPack([kernel, initrd, disk, mem, { ...mem, name: "mem" }]);
    await refusedExtract(save(five), freshDest(), /duplicate section mem/);
  });

  it("a symlink or file planted at the output path is refused or ignored, never followed", async () => {
    const file = save(buildPack([kernel, initrd, disk]));
    // the destination itself is a symlink to a folder elsewhere, or a file
    const elsewhere = join(root, "elsewhere");
    mkdirSync(elsewhere, { recursive: true });
    let dest = freshDest();
    symlinkSync(elsewhere, dest);
    await refusedExtract(file, dest, /already exists/);
    assert.deepEqual(readdirSync(elsewhere), []);
    dest = freshDest();
    symlinkSync(sentinel, dest);
    await refusedExtract(file, dest, /already exists/);
    dest = freshDest();
    writeFileSync(dest, "mine");
    await refusedExtract(file, dest, /already exists/);
    assert.equal(readFileSync(dest, "utf8"), "mine");
    dest = freshDest();
    mkdirSync(dest, { recursive: true });
    symlinkSync(sentinel, join(dest, "kernel"));
    await refusedExtract(file, dest, /already exists/);
    // the predictable temp name older versions used: ignored now
    dest = freshDest();
    mkdirSync(`${dest}.tmp-${process.pid}`, { recursive: true });
    symlinkSync(sentinel, join(`${dest}.tmp-${process.pid}`, "kernel"));
    writeFileSync(join(`${dest}.tmp-${process.pid}`, "initrd"), "mine");
    const before = snapshot(dest);
    await extractPack(file, dest);
    assertSameTree(before, dest);
    assert.equal(readFileSync(join(`${dest}.tmp-${process.pid}`, "initrd"), "utf8"), "mine");
  });

  it("a disk naming a backing file or an external data file is refused; a clean one is accepted", async () => {
    const secret = join(root, "secret.raw");
    writeFileSync(secret, Buffer.alloc(1 << 20, 0x41));
    const backed = join(root, "backed.qcow2");
    qemuImg(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", secret, backed]);
    const withData = join(root, "data-file.qcow2");
    qemuImg(["create", "-q", "-f", "qcow2", "-o", `data_file=${join(root, "x.raw")}`, withData, "64M"]);
    assert.throws(
      () => checkQcow2Header(backed),
      (e: unknown) => e instanceof UnsafeQcow2Error,
    );
    assert.throws(() => checkQcow2Header(withData), /external data file/);
    await assert.rejects(checkQcow2WithQemuImg(backed), /backing file/);
    checkQcow2Header(cleanQcow2);
    await checkQcow2WithQemuImg(cleanQcow2);
    const file = save(buildPack([kernel, initrd, part("disk", readFileSync(backed))]));
    const re = new RegExp(`its disk names a backing file \\(${secret}\\): packs must be self-contained`);
    await refusedExtract(file, freshDest(), re);
    const file2 = save(buildPack([kernel, initrd, part("disk", readFileSync(withData))]));
    await refusedExtract(file2, freshDest(), /its disk names an external data file.*x\.raw/);
    await refusedExtract(
      save(buildPack([kernel, initrd, part("disk", Buffer.from("raw disk"))])),
      freshDest(),
      /bad magic/,
    );
  });

  it("qcow2 headers: each unsafe field is refused by the hand-made check", () => {
    const clean = readFileSync(cleanQcow2);
    const variant = (edit: (b: Buffer) => void): string => {
      const b = Buffer.from(clean);
      edit(b);
      const p = join(root, `q${n++}.qcow2`);
      writeFileSync(p, b);
      return p;
    };
    for (const [edit, re] of QCOW2_HEADER_CASES) assert.throws(() => checkQcow2Header(variant(edit)), re);
    checkQcow2Header(variant((b) => b.writeBigUInt64BE(1n, 72))); // dirty is fine
  });

  it("a section that decompresses to more or less than declared is refused", async () => {
    const raw = randomBytes(100_000);
    const small = { name: "kernel", stored: zstd(raw), size: 50_000 };
    await refusedExtract(save(buildPack([small, initrd, disk])), freshDest(), /larger than declared/);
    const big = { name: "kernel", stored: zstd(raw), size: 150_000 };
    await refusedExtract(save(buildPack([big, initrd, disk])), freshDest(), /did not decompress to its size/);
    // zstd of a file records the content size in the frame header: refused before decompressing
    const f = join(root, "raw.bin");
    writeFileSync(f, raw);
    const withSize = spawnSync("zstd", ["-q", "-c", f]).stdout;
    for (const size of [50_000, 150_000]) {
      const p = { name: "kernel", stored: withSize, size };
      await refusedExtract(save(buildPack([p, initrd, disk])), freshDest(), /larger than declared|its size/);
    }
  });

  it("a zstd bomb stops at the declared size, in bounded memory", async () => {
    const bomb = spawnSync("sh", ["-c", "head -c 200M /dev/zero | zstd -q -c"], { maxBuffer: 1 << 20 }).stdout;
    assert.ok(bomb.length < 64 << 10, `bomb of ${bomb.length} bytes`);
    const declared = 1 << 20;
    const out = join(root, `bomb${n++}`);
    const rss0 = process.memoryUsage().rss;
    await assert.rejects(
      unzstdToFile([bomb], out, declared, (why) => new PackError("bomb", why)),
      isPackError(/larger than declared/),
    );
    assert.ok(statSync(out).size <= declared, `wrote ${statSync(out).size} bytes`);
    const dest = freshDest();
    let largest = 0;
    const watch = setInterval(() => {
      for (const d of existsSync(dirname(dest)) ? readdirSync(dirname(dest)) : []) {
        for (const f of readdirSync(join(dirname(dest), d))) {
          try {
            largest = Math.max(largest, statSync(join(dirname(dest), d, f)).size);
          } catch {}
        }
      }
    }, 2);
    const t0 = Date.now();
    try {
      await refusedExtract(
        save(buildPack([{ name: "kernel", stored: bomb, size: declared }, initrd, disk])),
        dest,
        /kernel: larger than declared/,
      );
    } finally {
      clearInterval(watch);
    }
    assert.ok(largest <= declared, `wrote ${largest} bytes`);
    assert.ok(Date.now() - t0 < 10_000, "zstd was not stopped");
    const grew = process.memoryUsage().rss - rss0;
    assert.ok(grew < 50 << 20, `rss grew by ${grew} bytes`);
  });

  it("bad compression is refused naming the section: random bytes, gzip, a corrupt frame, trailing data", async () => {
    const junk = { name: "initrd", stored: randomBytes(5000), size: 5000 };
    await refusedExtract(save(buildPack([kernel, junk, disk])), freshDest(), /section initrd: bad compression/);
    const gz = spawnSync("gzip", ["-c"], { input: Buffer.alloc(4096) }).stdout;
    const gzip = { name: "initrd", stored: gz, size: 4096 };
    await refusedExtract(save(buildPack([kernel, gzip, disk])), freshDest(), /section initrd: bad compression/);
    const frameBytes = zstd(randomBytes(20_000));
    const mid = frameBytes.length >> 1;
    frameBytes[mid] = (frameBytes[mid] as number) ^ 0xff; // in a raw block: the frame checksum no longer matches
    const corrupt = { name: "initrd", stored: frameBytes, size: 20_000 };
    await refusedExtract(save(buildPack([kernel, corrupt, disk])), freshDest(), /section initrd: bad compression/);
    const trailing = { ...initrd, stored: Buffer.concat([initrd.stored, initrd.stored]) };
    await refusedExtract(
      save(buildPack([kernel, trailing, disk])),
      freshDest(),
      /initrd: bad compression \(data after/,
    );
    const empty = { name: "initrd", stored: Buffer.alloc(0), size: 0 };
    await refusedExtract(save(buildPack([kernel, empty, disk])), freshDest(), /initrd: bad compression/);
  });

  it("truncated files, a manifest length past the end and huge declared sizes are refused", async () => {
    const good = buildPack([kernel, initrd, disk]);
    for (const cut of [0, 5, 19, 20, 100, good.length - disk.stored.length - 1, good.length - 1]) {
      const f = save(good.subarray(0, cut));
      assert.throws(() => readPackManifest(f), isPackError(/magic|truncated|runs past/));
      await refusedExtract(f, freshDest(), /magic|truncated|runs past/);
    }
    const long = Buffer.from(good);
    long.writeUInt32BE(good.length, 16);
    assert.throws(() => readPackManifest(save(long)), isPackError(/manifest length out of range/));
    long.writeUInt32BE(0xffffffff, 16);
    assert.throws(() => readPackManifest(save(long)), isPackError(/manifest length out of range/));
    const huge = { ...disk, size: 2 ** 41 };
    assert.throws(() => readPackManifest(save(buildPack([kernel, initrd, huge]))), isPackError(/disk declares/));
    const kbig = { ...kernel, size: 2 ** 30 };
    assert.throws(() => readPackManifest(save(buildPack([kbig, initrd, disk]))), isPackError(/kernel declares/));
    const tib = save(buildPack([kernel, initrd, { ...disk, size: 2 ** 40 }]));
    const fs = statfsSync(work);
    if (fs.bavail * fs.bsize < 2 ** 40) await refusedExtract(tib, freshDest(), /need \d+ bytes.*free/);
    assert.throws(() => readPackManifest(packs), isPackError(/not a regular file/));
    assert.throws(() => readPackManifest(join(root, "nope")), isPackError(/ENOENT/));
  });

  it("every manifest field is validated, and the refusal names it", () => {
    for (const [over, re] of BAD_FIELDS) {
      const f = save(buildPack([kernel, initrd, disk], over));
      assert.throws(() => readPackManifest(f), isPackError(re), JSON.stringify(over));
      assert.throws(
        () => readPackManifest(f),
        (e: unknown) => (e as Error).message.startsWith(f),
      );
    }
    const withProto = Buffer.from(
      buildPack([kernel, initrd, disk], {
        config: { vcpuCount: 1, memSizeMib: 256, bootArgs: "", env: { QQQQQQQQQ: "x" } },
      })
        .toString("latin1")
        .replace("QQQQQQQQQ", "__proto__"),
      "latin1",
    );
    assert.throws(() => readPackManifest(save(withProto)), isPackError(/config\.env/));
    const sec = manifestOf([kernel, initrd, disk]).sections as Record<string, unknown>[];
    for (const [edit, re] of SECTION_CASES) {
      const s = structuredClone(sec);
      edit(s);
      const data = Buffer.concat([kernel.stored, initrd.stored, disk.stored]);
      const f = save(frame(manifestOf([kernel, initrd, disk], { sections: s }), data));
      assert.throws(() => readPackManifest(f), isPackError(re));
    }
  });
});

describe("pack signatures", () => {
  it("the host key is private, made once, and refused when it is unsafe", async () => {
    const key = hostPackKey();
    assert.ok(key && key.length === 32);
    assert.equal(statSync(packKeyPath()).mode & 0o777, 0o600);
    assert.equal(statSync(dirname(packKeyPath())).mode & 0o777, 0o700);
    assert.deepEqual(hostPackKey(), key);
    const saved = readFileSync(packKeyPath());
    chmodSync(packKeyPath(), 0o640);
    assert.throws(() => hostPackKey(), /readable by others/);
    chmodSync(packKeyPath(), 0o600);
    if (process.getuid?.() === 0) {
      chownSync(packKeyPath(), 4321, 4321);
      assert.throws(() => hostPackKey(), /owned by uid 4321/);
      chownSync(packKeyPath(), 0, 0);
    }
    unlinkSync(packKeyPath());
    const elsewhere = join(root, "planted.key");
    writeFileSync(elsewhere, randomBytes(32), { mode: 0o600 });
    symlinkSync(elsewhere, packKeyPath());
    assert.throws(() => hostPackKey(), /symlink/);
    unlinkSync(packKeyPath());
    writeFileSync(packKeyPath(), saved, { mode: 0o600 });
    assert.deepEqual(hostPackKey(), key);
  });

  it("processes racing to make the key all end up with the same one", async () => {
    const data = join(root, "race-data");
    const mod = join(repoRoot, "dist", "src", "images", "pack-key.js");
    const code = `const m = await import(${JSON.stringify(mod)}); process.stdout.write(m.packKeyId(m.hostPackKey()));`;
    const env = { ...process.env, SMOLVM_DATA_DIR: data };
    const node = () => execFileP(process.execPath, ["--input-type=module", "-e", code], { env });
    const ids = (await Promise.all([0, 1, 2, 3, 4, 5].map(node))).map((r) => r.stdout);
    assert.match(ids[0] as string, /^[0-9a-f]{16}$/);
    assert.equal(new Set(ids).size, 1, ids.join(" "));
    assert.deepEqual(readdirSync(join(data, "keys")), ["pack-hmac.key"]);
  });

  it("a pack signed here verifies; a tampered manifest or another key does not", async () => {
    const key = hostPackKey() as Buffer;
    const signed = save(buildPack([kernel, initrd, disk, mem], {}, key));
    const m = readPackManifest(signed).manifest;
    assert.equal(hostSignature(m).signed, true);
    assert.ok(manifestSignedWith(m, key));
    const other = randomBytes(32);
    assert.equal(manifestSignedWith(m, other), false);
    const foreign = readPackManifest(save(buildPack([kernel, initrd, disk, mem], {}, other))).manifest;
    assert.deepEqual(hostSignature(foreign), { signed: false, why: "it was signed on another host" });
    assert.equal(hostSignature(readPackManifest(save(buildPack([kernel, initrd, disk, mem]))).manifest).signed, false);
    const tampered = Buffer.from(
      readFileSync(signed).toString("latin1").replace('"memSizeMib": 256', '"memSizeMib": 512'),
      "latin1",
    );
    const t = readPackManifest(save(tampered)).manifest;
    assert.equal(t.config.memSizeMib, 512);
    assert.deepEqual(hostSignature(t), { signed: false, why: "its signature does not match its manifest" });
    const r = await cli(["pack", "inspect", signed, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { signedByThisHost: boolean }).signedByThisHost, true);
    const r2 = await cli(["pack", "inspect", save(tampered), "--json", "--verify"]);
    assert.equal((JSON.parse(r2.stdout) as { signedByThisHost: boolean }).signedByThisHost, false);
  });

  it("writePack writes a private, signed pack that extracts to the same bytes", async () => {
    const src = join(root, "src");
    mkdirSync(src);
    for (const [f, b] of [
      ["k", Buffer.from("kernel")],
      ["i", Buffer.from("initrd")],
      ["m", randomBytes(10_000)],
    ] as const)
      writeFileSync(join(src, f), b);
    const wd = mkdtempSync(join(root, "wd-"));
    const out = join(packs, "written.smolmachine");
    const meta = {
      config: { vcpuCount: 2, memSizeMib: 512, bootArgs: "", env: { X: "1" } },
      backend: "qemu",
      vmm: "qemu 7.2.0",
      accel: "tcg",
      hostname: "written",
    };
    const files = { kernel: join(src, "k"), initrd: join(src, "i"), disk: cleanQcow2, mem: join(src, "m") };
    const m = await writePack(out, files, meta, wd);
    assert.equal(statSync(out).mode & 0o777, 0o600);
    assert.deepEqual(
      readdirSync(packs).filter((f) => f.startsWith(".")),
      [],
    );
    assert.equal(hostSignature(readPackManifest(out).manifest).signed, true);
    assert.equal(canonicalManifest(readPackManifest(out).manifest), canonicalManifest(m));
    const dest = freshDest();
    await extractPack(out, dest);
    assert.deepEqual(readFileSync(join(dest, "mem")), readFileSync(join(src, "m")));
    await assert.rejects(
      writePack(join(packs, "bad.smolmachine"), files, { ...meta, hostname: "../x" }, mkdtempSync(join(root, "wd-"))),
      isPackError(/hostname/),
    );
    assert.ok(!existsSync(join(packs, "bad.smolmachine")));
  });
});

const budget = { interruptAfterTimeLimit: 20_000, timeout: 10_000 };

describe("fuzzing (fast-check)", () => {
  it("random manifests: read and verify throw PackError or succeed", { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(anyManifest, fc.uint8Array({ maxLength: 6000 }), async (m, data) => {
        const f = save(frame(m, Buffer.from(data)));
        await onlyPackErrors(() => readPackManifest(f));
        await onlyPackErrors(() => verifyPack(f));
        unlinkSync(f);
      }),
      { numRuns: 200, ...budget },
    );
  });

  it("byte mutations of a signed pack: PackError or success, and a changed manifest never verifies", {
    timeout: 60_000,
  }, async () => {
    const key = hostPackKey() as Buffer;
    const good = buildPack([kernel, initrd, disk, mem], {}, key);
    const orig = canonicalManifest(readPackManifest(save(good)).manifest);
    const hot = 20 + good.readUInt32BE(16);
    await fc.assert(
      fc.asyncProperty(mutations(good.length, hot), async (mut) => {
        const f = save(mutate(good, mut));
        await onlyPackErrors(async () => {
          const { manifest: m } = readPackManifest(f);
          if (canonicalManifest(m) !== orig) assert.equal(hostSignature(m).signed, false);
        });
        await onlyPackErrors(() => verifyPack(f));
        unlinkSync(f);
      }),
      { numRuns: 200, ...budget },
    );
  });

  it("extraction of mutated packs: PackError or success, nothing written outside the destination", {
    timeout: 120_000,
  }, async (t) => {
    const parts = [kernel, initrd, disk, mem];
    const good = buildPack(parts);
    let extracted = 0;
    const reasons = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(
        fc.option(sectionEdits, { nil: [], freq: 2 }),
        fc.option(dataFlips, { nil: [], freq: 2 }),
        fc.option(mutations(good.length, good.length), { nil: undefined, freq: 2 }),
        async (edits, flips, mut) => {
          // flips in section bytes get a matching checksum, so they reach the decompressor
          const stored = parts.map((p) => ({ ...p, stored: Buffer.from(p.stored) }));
          for (const f of flips) {
            const p = stored[f.which] as Part;
            p.stored[f.at % p.stored.length] = f.to;
          }
          const m = manifestOf(stored);
          const secs = m.sections as Record<string, unknown>[];
          for (const e of edits) Object.assign(secs[e.which] as object, e.set);
          const bytes = frame(m, Buffer.concat(stored.map((p) => p.stored)));
          const f = save(mut ? mutate(bytes, mut) : bytes);
          const dest = freshDest();
          const before = snapshot(dest);
          let ok = false;
          try {
            await extractPack(f, dest);
            ok = true;
          } catch (e) {
            if (!(e instanceof PackError)) throw e;
            const why = e.message.replace(/^.*file: /, "").replace(/[0-9(].*/, "");
            reasons.set(why, (reasons.get(why) ?? 0) + 1);
          }
          assertSameTree(before, dest);
          assert.deepEqual(readdirSync(dirname(dest)), ok ? ["dest"] : [], "a temp dir was left behind");
          if (ok) {
            extracted++;
            const known = ["disk.qcow2", "initrd", "kernel", "mem"];
            for (const e of readdirSync(dest)) assert.ok(known.includes(e), e);
          }
          rmSync(dirname(dest), { recursive: true, force: true });
          unlinkSync(f);
        },
      ),
      { numRuns: 30, ...budget },
    );
    t.diagnostic(`${extracted} mutated packs extracted; refusals: ${JSON.stringify(Object.fromEntries(reasons))}`);
  });
});
