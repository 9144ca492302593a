/**
 * The RAM splitter on hand-made streams: what it writes, and what it refuses. (That its output restores exactly like
 * QEMU's own load is tested on real VMs in snapshots.test.ts.)
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { joinRam, splitRam, UnsupportedStreamError } from "../src/backends/qemu/ram-split.js";

const dir = mkdtempSync(join(tmpdir(), "smolvm-split-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const PAGE = 4096;
const u8 = (v: number) => Buffer.from([v]);
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const id = (s: string) => Buffer.concat([u8(s.length), Buffer.from(s)]);
const page = (fill: number) => Buffer.alloc(PAGE, fill);

const HEADER = Buffer.concat([u32(0x5145564d), u32(3), u8(0x07), u32(7), Buffer.from("microvm")]);
const RAM_BYTES = 4 * PAGE;
const start = (ramBytes: number) =>
  Buffer.concat([
    u8(0x01),
    u32(2),
    id("ram"),
    u32(0),
    u32(4),
    u64((ramBytes + PAGE) | 0x04),
    id("ram0"),
    u64(ramBytes),
    id("rom"),
    u64(PAGE),
    u64(0x10),
    u8(0x7e),
    u32(2),
  ]);
const START = start(RAM_BYTES);
const END = Buffer.concat([u8(0x03), u32(2), u64(0x10), u8(0x7e), u32(2)]);
const DEVICES = Buffer.concat([u8(0x04), u32(3), id("dev"), u32(0), u32(1), Buffer.from("device-bytes"), u8(0x1f)]);

function part(...records: Buffer[]): Buffer {
  return Buffer.concat([u8(0x02), u32(2), ...records, u64(0x10), u8(0x7e), u32(2)]);
}

function run(stream: Buffer, ramBytes = RAM_BYTES) {
  const input = join(dir, "in.bin");
  writeFileSync(input, stream);
  const ramPath = join(dir, "ram.raw");
  const strippedPath = join(dir, "rest.bin");
  const res = splitRam(input, { block: "ram0", ramPath, ramBytes, strippedPath });
  return { res, ram: readFileSync(ramPath), rest: readFileSync(strippedPath), ramPath };
}

describe("RAM split", () => {
  it("writes the block's pages into the RAM file and keeps everything else, renaming blocks where needed", () => {
    const stream = Buffer.concat([
      HEADER,
      START,
      part(
        Buffer.concat([u64(0 | 0x08), id("ram0"), page(0x11)]),
        Buffer.concat([u64(PAGE | 0x02 | 0x20), u8(0)]),
        Buffer.concat([u64((2 * PAGE) | 0x02 | 0x20), u8(0x5a)]),
      ),
      // the ROM's page continues "rom" named in this section; then ram0 again, continuing from a later section
      part(Buffer.concat([u64(0 | 0x08), id("rom"), page(0x77)])),
      part(
        Buffer.concat([u64(0 | 0x08 | 0x20), page(0x78)]),
        Buffer.concat([u64((3 * PAGE) | 0x08), id("ram0"), page(0x33)]),
      ),
      END,
      DEVICES,
    ]);
    const { res, ram, rest } = run(stream);
    assert.deepEqual(res, {
      dataPages: 3,
      zeroPages: 1,
      strippedBytes: rest.length,
      join: { offset: HEADER.length + START.length, sectionId: 2, footers: true },
    });
    assert.ok(ram.subarray(0, PAGE).equals(page(0x11)));
    assert.ok(ram.subarray(PAGE, 2 * PAGE).equals(page(0)));
    assert.ok(ram.subarray(2 * PAGE, 3 * PAGE).equals(page(0x5a)));
    assert.ok(ram.subarray(3 * PAGE).equals(page(0x33)));
    const expected = Buffer.concat([
      HEADER,
      START,
      part(),
      part(Buffer.concat([u64(0 | 0x08), id("rom"), page(0x77)])),
      // the ROM record that continued a block is now the first of its section: it names its block
      part(Buffer.concat([u64(0 | 0x08), id("rom"), page(0x78)])),
      END,
      DEVICES,
    ]);
    assert.ok(rest.equals(expected), "stripped stream differs");
  });

  it("joining the RAM back gives a stream that splits into the same RAM and the same rest", () => {
    const stream = Buffer.concat([
      HEADER,
      START,
      part(
        Buffer.concat([u64(PAGE | 0x08), id("ram0"), page(0x21)]),
        Buffer.concat([u64(0 | 0x08), id("rom"), page(0x77)]),
        Buffer.concat([u64((3 * PAGE) | 0x08), id("ram0"), page(0x23)]),
      ),
      END,
      DEVICES,
    ]);
    const first = run(stream);
    const joined = join(dir, "joined.bin");
    joinRam(join(dir, "rest.bin"), { block: "ram0", path: first.ramPath, bytes: RAM_BYTES }, first.res.join, joined);
    const again = run(readFileSync(joined));
    assert.ok(again.ram.equals(first.ram), "RAM differs after the round trip");
    // the same, plus the (now empty) section the pages were joined in
    const off = first.res.join.offset;
    const expected = Buffer.concat([first.rest.subarray(0, off), part(), first.rest.subarray(off)]);
    assert.ok(again.rest.equals(expected), "rest differs after the round trip");
    assert.equal(again.res.dataPages, 2);
  });

  it("a page sent again as zero is cleared; the RAM file stays sparse", () => {
    const big = 64 * 1024 * 1024;
    const stream = Buffer.concat([
      HEADER,
      start(big),
      part(Buffer.concat([u64(PAGE | 0x08), id("ram0"), page(0x44)])),
      part(Buffer.concat([u64(PAGE | 0x02), id("ram0"), u8(0)])),
      END,
      DEVICES,
    ]);
    const { ram, ramPath } = run(stream, big);
    assert.equal(ram.length, big);
    assert.ok(ram.subarray(PAGE, 2 * PAGE).equals(page(0)));
    assert.ok(statSync(ramPath).blocks * 512 < 1024 * 1024, "RAM file is not sparse");
  });

  it("pages written in runs land where they belong: a run, a page sent again inside it, a gap, a fill page", () => {
    const ramBytes = 8 * PAGE;
    const rec = (n: number, fill: number, first = false) =>
      first
        ? Buffer.concat([u64((n * PAGE) | 0x08), id("ram0"), page(fill)])
        : Buffer.concat([u64((n * PAGE) | 0x08 | 0x20), page(fill)]);
    const stream = Buffer.concat([
      HEADER,
      start(ramBytes),
      part(
        rec(0, 0xa1, true),
        rec(1, 0xa2),
        rec(2, 0xa3),
        rec(1, 0xb2), // again, while the run holding it is not written yet
        rec(5, 0xc5), // after a gap
        Buffer.concat([u64((6 * PAGE) | 0x02 | 0x20), u8(0x66)]), // a page filled with one byte
        Buffer.concat([u64((2 * PAGE) | 0x02 | 0x20), u8(0)]), // and one cleared
      ),
      END,
      DEVICES,
    ]);
    const { ram, res } = run(stream, ramBytes);
    const want = [0xa1, 0xb2, 0, 0, 0, 0xc5, 0x66, 0];
    want.forEach((fill, i) => {
      assert.ok(ram.subarray(i * PAGE, (i + 1) * PAGE).equals(page(fill)), `page ${i}`);
    });
    assert.equal(res.dataPages, 6);
    assert.equal(res.zeroPages, 1);
  });

  const refuses = (name: string, stream: Buffer, why: RegExp) =>
    it(`refuses ${name}`, () => {
      assert.throws(
        () => run(stream),
        (e: unknown) => e instanceof UnsupportedStreamError && why.test(e.message),
      );
    });
  refuses("another format", Buffer.concat([u32(0x12345678), u32(3), END]), /not a version 3 QEMU stream/);
  refuses(
    "capabilities in the configuration",
    Buffer.concat([HEADER, u8(0x05), id("configuration/capabilities"), u32(1)]),
    /subsections/,
  );
  refuses(
    "XBZRLE pages",
    Buffer.concat([HEADER, START, part(Buffer.concat([u64(0x40), id("ram0"), u8(0)])), END, DEVICES]),
    /flags 0x40/,
  );
  refuses(
    "a page outside the block",
    Buffer.concat([HEADER, START, part(Buffer.concat([u64(RAM_BYTES | 0x08), id("ram0"), page(1)])), END]),
    /outside ram0/,
  );
  refuses(
    "a record continuing no block",
    Buffer.concat([HEADER, START, part(Buffer.concat([u64(0x08 | 0x20), page(1)])), END]),
    /continues no block/,
  );
  refuses(
    "a stream cut short",
    Buffer.concat([HEADER, START, part(Buffer.concat([u64(0x08), id("ram0")]))]),
    /ends in the middle/,
  );
  refuses("device state before RAM's end", Buffer.concat([HEADER, START, DEVICES]), /section dev before RAM's end/);
  it("refuses a RAM size other than the VM's", () => {
    assert.throws(() => run(Buffer.concat([HEADER, START, END, DEVICES]), 2 * RAM_BYTES), /block ram0 has 16384 bytes/);
  });
});
