/** The tar reader against hostile archives, and a round trip through the writer. No VM needed. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { SmolVMError } from "../src/errors.js";
import { extractTar, packDir, TransferLimitError, UnsafeArchiveError } from "../src/sandbox/tar.js";
import { SPARSE_BLOCK, SparseWriter } from "../src/util/sparse.js";
import { tarEntry } from "./helpers.js";

const dir = mkdtempSync(join(tmpdir(), "smolvm-tar-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const hdr = (name: string, type: string, body = "", link = "") => [tarEntry(name, type, body, link)];
const archive = (...entries: Buffer[][]) => [Buffer.concat([...entries.flat(), Buffer.alloc(1024)])];
let n = 0;
const fresh = () => {
  const d = join(dir, `dest${n++}`);
  mkdirSync(d);
  return d;
};

describe("tar extraction refuses what could escape the destination", () => {
  const cases: [string, Buffer[]][] = [
    ["a ../ path", archive(hdr("ok.txt", "0", "fine"), hdr("../escaped.txt", "0", "evil"))],
    ["an absolute path", archive(hdr("/tmp/smolvm-abs-escape.txt", "0", "evil"))],
    ["a symlink pointing outside", archive(hdr("link", "2", "", "../../outside"))],
    ["an absolute symlink", archive(hdr("link", "2", "", "/etc"))],
    ["a write through a symlink", archive(hdr("d", "2", "", "."), hdr("d/x", "0", "x"), hdr("sub/", "5"))],
    ["a hard link", archive(hdr("h", "1", "", "/etc/passwd"))],
    ["a device file", archive(hdr("dev", "3"))],
    [
      "a symlink chain that escapes through other links",
      archive(
        hdr("y", "2", "", "."),
        hdr("x", "2", "", "y/.."),
        hdr("x2", "2", "", "x/.."),
        hdr("t", "2", "", "x2/etc"),
      ),
    ],
  ];
  for (const [what, tar] of cases) {
    it(`refuses ${what}`, async () => {
      const d = fresh();
      await assert.rejects(extractTar(tar, d), UnsafeArchiveError);
      assert.equal(existsSync(join(d, "..", "escaped.txt")), false);
      assert.equal(existsSync("/tmp/smolvm-abs-escape.txt"), false);
    });
  }

  for (const size of ["9", "-1000"]) {
    it(`refuses a size field of ${JSON.stringify(size)} instead of looping`, async () => {
      const b = hdr("a.txt", "x", "")[0] as Buffer;
      b.fill(0, 124, 136);
      b.write(size, 124);
      b.fill(0x20, 148, 156);
      let sum = 0;
      for (const x of b) sum += x;
      b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
      await assert.rejects(extractTar([Buffer.concat([b, Buffer.alloc(1024)])], fresh()), UnsafeArchiveError);
    });
  }

  it("refuses a corrupted header", async () => {
    const t = archive(hdr("a.txt", "0", "x"));
    const b = t[0] as Buffer;
    b.writeUInt8(b.readUInt8(10) ^ 0xff, 10);
    await assert.rejects(extractTar(t, fresh()), /checksum/);
  });
});

describe("tar round trip", () => {
  it("packs and extracts files, folders, long names and inner symlinks", async () => {
    const src = join(dir, "src");
    const long = `${"deep/".repeat(30)}file.txt`;
    mkdirSync(join(src, "deep/".repeat(30)), { recursive: true });
    writeFileSync(join(src, long), "long name");
    writeFileSync(join(src, "bin.dat"), Buffer.from([0, 1, 2, 3, 255]));
    symlinkSync("bin.dat", join(src, "alias"));
    mkdirSync(join(src, "empty"));
    const chunks: Buffer[] = [];
    for await (const c of packDir(src)) chunks.push(c);
    // feed in odd-sized pieces to exercise the streaming parser
    const all = Buffer.concat(chunks);
    const pieces = [];
    for (let o = 0; o < all.length; o += 777) pieces.push(all.subarray(o, o + 777));
    const d = fresh();
    const stats = await extractTar(pieces, d);
    assert.equal(readFileSync(join(d, long), "utf8"), "long name");
    assert.deepEqual([...readFileSync(join(d, "bin.dat"))], [0, 1, 2, 3, 255]);
    assert.equal(readlinkSync(join(d, "alias")), "bin.dat");
    assert.ok(existsSync(join(d, "empty")));
    assert.equal(stats.files, 2);
    assert.equal(stats.symlinks, 1);
  });
});

/** A ustar file header for `size` bytes of data (which the caller streams), checksum fixed up. */
function fileHeader(name: string, size: number): Buffer {
  const h = tarEntry(name, "0");
  h.write(`${size.toString(8).padStart(11, "0")}\0`, 124);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return h;
}

/** One file entry whose data is produced in 1 MiB pieces by `piece(offset, length)`, then the end marker. */
function* bigFile(name: string, size: number, piece: (off: number, len: number) => Buffer): Generator<Buffer> {
  yield fileHeader(name, size);
  for (let o = 0; o < size; o += 1 << 20) yield piece(o, Math.min(1 << 20, size - o));
  yield Buffer.alloc((512 - (size % 512)) % 512);
  yield Buffer.alloc(1024);
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const used = (f: string) => statSync(f).blocks * 512;

describe("tar extraction: byte limit, holes, odd archives", () => {
  it("keeps a 64 MiB file of zeros as a hole", async () => {
    const d = fresh();
    const zeros = Buffer.alloc(1 << 20);
    const stats = await extractTar(
      bigFile("zeros.bin", 64 << 20, (_o, len) => zeros.subarray(0, len)),
      d,
    );
    const f = join(d, "zeros.bin");
    assert.equal(statSync(f).size, 64 << 20);
    assert.equal(stats.bytes, 64 << 20);
    assert.ok(used(f) < 64 << 10, `${used(f)} bytes on disk`);
    const back = readFileSync(f);
    assert.equal(back.length, 64 << 20);
    assert.ok(back.equals(Buffer.alloc(64 << 20)));
  });

  it("keeps every byte of a file mixing data and zero runs, holes only where it is all zeros", async () => {
    const size = (3 << 20) + 1234;
    const data = Buffer.alloc(size);
    for (let o = 0; o < size; o += 1 << 20) data.fill(0x5a, o + 100, Math.min(size, o + 300_000)); // data, then ~750 KiB of zeros
    data.writeUInt8(7, size - 1);
    const d = fresh();
    await extractTar(
      bigFile("mixed.bin", size, (o, len) => data.subarray(o, o + len)),
      d,
    );
    const f = join(d, "mixed.bin");
    assert.equal(sha(readFileSync(f)), sha(data));
    assert.ok(used(f) < 2 << 20, `${used(f)} bytes on disk`);
  });

  it("stops at maxBytes with TransferLimitError and writes nothing past the limit", async () => {
    const d = fresh();
    const tar = archive(hdr("a.txt", "0", "x".repeat(600)), hdr("b.txt", "0", "y".repeat(600)));
    const err = await extractTar(tar, d, { maxBytes: 1000 }).then(
      () => assert.fail("should have stopped"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof TransferLimitError && err instanceof SmolVMError);
    assert.equal(err.limit, 1000);
    assert.equal(err.path, "b.txt");
    assert.match(err.message, /limit of 1000 bytes \(maxBytes\) while receiving "b\.txt"; nothing was kept/);
    assert.equal(readFileSync(join(d, "a.txt"), "utf8"), "x".repeat(600));
    assert.equal(existsSync(join(d, "b.txt")), false);
    // exactly at the limit is fine; holes count like data
    assert.equal((await extractTar(tar, fresh(), { maxBytes: 1200 })).bytes, 1200);
    const zeros = Buffer.alloc(1 << 20);
    await assert.rejects(
      extractTar(
        bigFile("z", 8 << 20, (_o, len) => zeros.subarray(0, len)),
        fresh(),
        { maxBytes: 4 << 20 },
      ),
      TransferLimitError,
    );
    await assert.rejects(extractTar(tar, fresh(), { maxBytes: -1 }), SmolVMError);
  });

  it("refuses a dangling symlink that only escapes once the links before it are followed", async () => {
    const d = fresh();
    // lexically y/../escape is inside; the kernel follows y (-> .) first, so it is ../escape
    await assert.rejects(extractTar(archive(hdr("y", "2", "", "."), hdr("a", "2", "", "y/../escape")), d), /resolves/);
    const loop = archive(hdr("p", "2", "", "q"), hdr("q", "2", "", "p"));
    await assert.rejects(extractTar(loop, fresh()), UnsafeArchiveError);
    // an inner dangling link is fine
    const ok = await extractTar(archive(hdr("sub/", "5"), hdr("sub/l", "2", "", "../later/x")), fresh());
    assert.equal(ok.symlinks, 1);
  });

  it("reports host file system failures and truncation as SmolVMError", async () => {
    const dup = archive(hdr("a", "0", "1"), hdr("a", "0", "2"));
    const e = await extractTar(dup, fresh()).catch((x: unknown) => x);
    assert.ok(e instanceof SmolVMError && !(e instanceof UnsafeArchiveError), String(e));
    assert.match(e.message, /"a".*EEXIST/);
    const long = ` path=${"n".repeat(300)}\n`; // one component longer than NAME_MAX
    const pax = hdr("PaxHeader", "x", `${long.length + 3}${long}`);
    await assert.rejects(extractTar(archive(pax, hdr("short", "5")), fresh()), /ENAMETOOLONG/);
    await assert.rejects(extractTar(archive(hdr("./.", "0", "x")), fresh()), UnsafeArchiveError);
    const full = (archive(hdr("a", "0", "x"))[0] as Buffer).subarray(0, 700);
    await assert.rejects(extractTar([full], fresh()), /middle of an entry/);
    await assert.rejects(extractTar([full.subarray(0, 300)], fresh()), /middle of a header/);
  });

  it("ignores (without buffering) whatever follows the end marker", async () => {
    const d = fresh();
    const tail = Buffer.alloc(1 << 20, 0xab);
    const src = function* () {
      yield* archive(hdr("a", "0", "1"));
      for (let i = 0; i < 64; i++) yield tail;
    };
    assert.equal((await extractTar(src(), d)).files, 1);
  });
});

describe("SparseWriter", () => {
  const file = () => join(dir, `sparse${n++}`);
  const region = fc.record({
    len: fc.oneof(fc.integer({ min: 1, max: 3 * SPARSE_BLOCK }), fc.integer({ min: 1, max: 24 * SPARSE_BLOCK })),
    zero: fc.boolean(),
    byte: fc.integer({ min: 1, max: 255 }),
  });

  it("writes byte-identical files under any chunking, allocating only blocks with data", () => {
    fc.assert(
      fc.property(
        fc.array(region, { maxLength: 12 }),
        fc.array(fc.integer({ min: 0, max: 2 * SPARSE_BLOCK + 7 }), { maxLength: 20 }),
        (regions, cuts) => {
          const data = Buffer.concat(regions.map((r) => Buffer.alloc(r.len, r.zero ? 0 : r.byte)));
          const f = file();
          const fd = openSync(f, "wx");
          try {
            const w = new SparseWriter(fd);
            let o = 0;
            for (const c of cuts) {
              w.write(data.subarray(o, o + c));
              o = Math.min(data.length, o + c);
            }
            w.write(data.subarray(o));
            assert.equal(w.position, data.length);
            w.finish();
          } finally {
            closeSync(fd);
          }
          assert.ok(readFileSync(f).equals(data));
          let withData = 0;
          for (let o = 0; o < data.length; o += SPARSE_BLOCK) {
            if (data.subarray(o, o + SPARSE_BLOCK).some((b) => b !== 0)) withData++;
          }
          // zero blocks must be holes (slack for file systems that allocate a little more)
          assert.ok(used(f) <= withData * SPARSE_BLOCK + (32 << 10), `${used(f)} on disk for ${withData} blocks`);
          rmSync(f);
        },
      ),
      { numRuns: 300, plugins: [fc.interruptAfterTimeLimit(20_000)] },
    );
  });

  it("leaves aligned zero blocks as holes and writes partial and non-zero blocks", () => {
    const f = file();
    const fd = openSync(f, "w");
    const w = new SparseWriter(fd);
    const mib = 1 << 20;
    for (let i = 0; i < 16; i++) w.write(Buffer.alloc(mib)); // 16 MiB of zeros in 1 MiB chunks
    const mark = Buffer.from("end");
    w.write(mark.subarray(0, 1)); // a non-zero block split across writes
    w.write(mark.subarray(1));
    w.finish();
    closeSync(fd);
    assert.equal(statSync(f).size, 16 * mib + 3);
    assert.ok(used(f) <= 64 << 10, `${used(f)} bytes on disk`);
    const back = readFileSync(f);
    assert.equal(back.subarray(16 * mib).toString(), "end");
    assert.ok(back.subarray(0, 16 * mib).equals(Buffer.alloc(16 * mib)));
  });
});
