/** The tar reader against hostile archives, and a round trip through the writer. No VM needed. */
import assert from "node:assert/strict";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { extractTar, packDir, UnsafeArchiveError } from "../src/sandbox/tar.js";
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
