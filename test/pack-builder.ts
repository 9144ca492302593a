/** Building `.smolmachine` files by hand for tests, as hostile as a test likes (see pack-fuzz.test.ts). */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { extractPack, PackError, type PackManifest } from "../src/images/pack.js";
import { signManifest } from "../src/images/pack-key.js";

export const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

/** Compress with the zstd binary (from stdin: the frame does not record the content size). */
export function zstd(input: Buffer): Buffer {
  const r = spawnSync("zstd", ["-q", "-c"], { input, maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, String(r.stderr));
  return r.stdout;
}

export function qemuImg(args: string[]): void {
  const r = spawnSync("qemu-img", args, { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
}

/** A section: its stored (compressed) bytes and the size it declares. */
export interface Part {
  name: string;
  stored: Buffer;
  size: number;
}
export const part = (name: string, raw: Buffer): Part => ({ name, stored: zstd(raw), size: raw.length });

/** The binary format: magic, u32 BE version, u32 BE manifest length, manifest JSON, sections. */
export function frame(manifest: unknown, data: Buffer, version = 1): Buffer {
  const json = Buffer.from(JSON.stringify(manifest, null, 2));
  const head = Buffer.alloc(20);
  head.write("SMOLMACHINE\0", 0, "latin1");
  head.writeUInt32BE(version, 12);
  head.writeUInt32BE(json.length, 16);
  return Buffer.concat([head, json, data]);
}

/** A valid manifest for `parts` stored back to back, with fields replaced by `over`. */
export function manifestOf(parts: Part[], over: Record<string, unknown> = {}): Record<string, unknown> {
  let offset = 0;
  const sections = parts.map((p) => {
    const s = { name: p.name, offset, length: p.stored.length, size: p.size, sha256: sha(p.stored) };
    offset += p.stored.length;
    return { ...s, compression: "zstd" };
  });
  return {
    formatVersion: 1,
    createdAt: "2025-01-01T00:00:00.000Z",
    config: { vcpuCount: 1, memSizeMib: 256, bootArgs: "quiet", env: { A: "b" } },
    backend: "qemu",
    vmm: "qemu 7.2.0",
    accel: "kvm",
    hostname: "packed",
    diskFormat: "qcow2",
    sections,
    ...over,
  };
}

/** A whole pack file; signed with `key` when given. */
export function buildPack(parts: Part[], over: Record<string, unknown> = {}, key?: Buffer): Buffer {
  const m = manifestOf(parts, over);
  if (key) m.signature = signManifest(m as unknown as PackManifest, key);
  return frame(m, Buffer.concat(parts.map((p) => p.stored)));
}

/** The same pack with its manifest edited (section bytes kept: offsets count from the manifest's end). */
export function rewriteManifest(pack: Buffer, edit: (m: Record<string, unknown>) => void): Buffer {
  const len = pack.readUInt32BE(16);
  const m = JSON.parse(pack.subarray(20, 20 + len).toString("utf8")) as Record<string, unknown>;
  edit(m);
  return frame(m, pack.subarray(20 + len), pack.readUInt32BE(12));
}

/** Every path under `root` but `except` (files: mode, size, mtime; folders: mode): to compare before and after. */
export function tree(root: string, except: string[] = []): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      if (except.some((x) => p === x || p.startsWith(`${x}/`))) continue;
      const st = lstatSync(p);
      out.set(p, st.isDirectory() ? `dir ${st.mode}` : `${st.mode}:${st.size}:${st.mtimeMs}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

/** An assert.throws/rejects check: a PackError whose message matches `re`. */
export const isPackError = (re?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof PackError, `not a PackError: ${(e as Error)?.stack ?? String(e)}`);
  if (re) assert.match(e.message, re);
  return true;
};

/**
 * A test's temp tree: packs/ (files under test), work/ (destinations), a sentinel file, and tmp/ (where
 * `../../../tmp/evil` from an old-style `<dest>.tmp-<pid>` folder would land). Checks that opening a pack changed
 * nothing in the tree outside its destination (folder mtimes aside: the destination's parent gets a temp dir).
 */
export function scratch(root: string) {
  const packs = join(root, "packs");
  const work = join(root, "work");
  const sentinel = join(root, "sentinel.txt");
  for (const d of [packs, work, join(root, "tmp")]) mkdirSync(d);
  writeFileSync(sentinel, "precious");
  let n = 0;
  const snapshot = (dest: string) => tree(root, [dest, join(root, "data")]);
  const assertSameTree = (before: Map<string, string>, dest: string): void => {
    const now = snapshot(dest);
    for (const [p, v] of now) assert.equal(before.get(p), v, `${p} appeared or changed outside the destination`);
    for (const p of before.keys()) assert.ok(now.has(p), `${p} vanished`);
    assert.equal(readFileSync(sentinel, "utf8"), "precious");
  };
  return {
    packs,
    work,
    sentinel,
    snapshot,
    assertSameTree,
    save(bytes: Buffer): string {
      const f = join(packs, `p${n++}.smolmachine`);
      writeFileSync(f, bytes);
      return f;
    },
    /** A destination path whose parent exists (extraction may make its temp dir there, and nothing else). */
    freshDest(): string {
      const d = join(work, `d${n++}`);
      mkdirSync(d);
      return join(d, "dest");
    },
    /** Extract: refused with a PackError matching `re`, and nothing touched outside `dest`. */
    async refusedExtract(file: string, dest: string, re: RegExp): Promise<void> {
      const before = snapshot(dest);
      await assert.rejects(extractPack(file, dest), isPackError(re));
      assertSameTree(before, dest);
    },
  };
}

const cfg = (c: Record<string, unknown>) => ({
  config: { vcpuCount: 1, memSizeMib: 256, bootArgs: "", env: {}, ...c },
});
/** Manifest fields that must be refused, and what the refusal must name. */
export const BAD_FIELDS: [Record<string, unknown>, RegExp][] = [
  [{ formatVersion: 2 }, /formatVersion/],
  [{ createdAt: 5 }, /createdAt/],
  [{ createdAt: "\u001b[31mred" }, /createdAt/],
  [{ config: null }, /config/],
  [cfg({ vcpuCount: 0 }), /config\.vcpuCount/],
  [cfg({ vcpuCount: 1.5 }), /config\.vcpuCount/],
  [cfg({ vcpuCount: 33 }), /config\.vcpuCount/],
  [cfg({ memSizeMib: 64 }), /config\.memSizeMib/],
  [cfg({ memSizeMib: 16385 }), /config\.memSizeMib/],
  [cfg({ bootArgs: "a\nb" }), /config\.bootArgs/],
  [cfg({ bootArgs: "a\0b" }), /config\.bootArgs/],
  [cfg({ bootArgs: "x".repeat(4097) }), /config\.bootArgs/],
  [cfg({ bootArgs: 3 }), /config\.bootArgs/],
  [cfg({ env: [] }), /config\.env/],
  [cfg({ env: { "1X": "y" } }), /config\.env/],
  [cfg({ env: { "A=B": "y" } }), /config\.env/],
  [cfg({ env: { A: 5 } }), /config\.env\.A/],
  [{ backend: 7 }, /backend/],
  [{ vmm: "" }, /vmm/],
  [{ accel: "xen" }, /accel/],
  [{ hostname: "Bad_Host" }, /hostname/],
  [{ hostname: "a".repeat(64) }, /hostname/],
  [{ diskFormat: "raw" }, /diskFormat/],
  [{ sections: {} }, /sections/],
  [{ signature: { alg: "none" } }, /signature/],
  [{ signature: { alg: "hmac-sha256", keyId: "x", value: "0".repeat(64) } }, /signature\.keyId/],
];

type Sections = Record<string, unknown>[];
const set = (i: number, v: Record<string, unknown>) => (s: Sections) => Object.assign(s[i] as object, v);
/** Edits of a valid [kernel, initrd, disk] section list that must be refused, and what the refusal must say. */
export const SECTION_CASES: [(s: Sections) => void, RegExp][] = [
  [set(0, { offset: -1 }), /section kernel: offset/],
  [set(1, { length: 1.5 }), /section initrd: length/],
  [set(2, { size: "1" }), /section disk: size/],
  [set(0, { sha256: "zz" }), /section kernel has no valid checksum/],
  [set(0, { compression: "gzip" }), /section kernel: compression/],
  [set(1, { offset: 0 }), /overlaps/],
  [set(2, { offset: 1e9 }), /section disk runs past the end/],
  [(s) => s.splice(1, 1), /missing section initrd/],
  [(s) => s.push(null as unknown as Record<string, unknown>), /sections\[3\]/],
];

const setExt = (type: number, len: number) => (b: Buffer) => {
  b.writeUInt32BE(type, b.readUInt32BE(100));
  b.writeUInt32BE(len, b.readUInt32BE(100) + 4);
};
/** Edits of a clean qcow2 v3 header that the hand-made check must refuse, and what it must say. */
export const QCOW2_HEADER_CASES: [(b: Buffer) => void, RegExp][] = [
  [(b) => b.writeUInt32BE(0, 0), /bad magic/],
  [(b) => b.writeUInt32BE(4, 4), /version 4/],
  [(b) => b.writeBigUInt64BE(0x200n, 8), /backing file/],
  [(b) => b.writeUInt32BE(5, 16), /backing file/],
  [(b) => b.writeUInt32BE(1, 32), /encrypted/],
  [(b) => b.writeBigUInt64BE(2n, 72), /corrupt/],
  [(b) => b.writeBigUInt64BE(4n, 72), /external data file/],
  [(b) => b.writeBigUInt64BE(1n << 40n, 72), /unknown incompatible/],
  [(b) => b.writeUInt32BE(40, 20), /cluster_bits/],
  [(b) => b.writeUInt32BE(1 << 30, 100), /header length/],
  [setExt(0xe2792aca, 3), /backing file format/],
  [setExt(0x44415441, 6), /external data file/],
  [setExt(0x12345678, 0xfffffff0), /runs past/],
];

/** Run `f`; a PackError is fine (the file was refused), any other error fails the property. */
export async function onlyPackErrors(f: () => unknown): Promise<void> {
  try {
    await f();
  } catch (e) {
    if (!(e instanceof PackError)) throw e;
  }
}

export interface Mutation {
  flips: { at: number; to: number }[];
  cut: number | undefined;
}
/** Random mutations of a file of `len` bytes: byte flips (half of them in the first `hot`), a truncation. */
export const mutations = (len: number, hot: number): fc.Arbitrary<Mutation> =>
  fc.record({
    flips: fc.array(fc.record({ at: fc.oneof(fc.nat(hot - 1), fc.nat(len - 1)), to: fc.nat(255) }), { maxLength: 8 }),
    cut: fc.option(fc.nat(len), { nil: undefined }),
  });
export function mutate(bytes: Buffer, m: Mutation): Buffer {
  const b = Buffer.from(bytes);
  for (const f of m.flips) b[f.at % b.length] = f.to;
  return m.cut === undefined ? b : b.subarray(0, m.cut);
}

/** Edits of sections 0-3 of a pack: names (hostile ones too), sizes, offsets. */
export const sectionEdits = fc.array(
  fc.record({
    which: fc.nat(3),
    set: fc.record(
      {
        name: fc.constantFrom("kernel", "mem", "disk", "../x", "/abs", "kernel/../../x", "initrd"),
        size: fc.oneof(fc.nat(300_000), fc.constant(2 ** 40), fc.constant(-1)),
        offset: fc.nat(400_000),
        length: fc.nat(400_000),
      },
      { requiredKeys: [] },
    ),
  }),
  { maxLength: 3 },
);
/** Byte flips in the stored bytes of sections 0-3. */
export const dataFlips = fc.array(fc.record({ which: fc.nat(3), at: fc.nat(), to: fc.nat(255) }), { maxLength: 4 });

const num = fc.oneof(fc.nat(5000), fc.integer(), fc.double(), fc.constant(2 ** 53), fc.string({ maxLength: 3 }));
const field = <T>(good: T) => fc.oneof({ weight: 4, arbitrary: fc.constant(good) }, fc.anything());
/** Manifests mostly valid field by field, with random sections (names, positions, sizes) and random junk. */
export const anyManifest = fc.record({
  formatVersion: field(1),
  createdAt: field("2025-01-01T00:00:00Z"),
  config: field({ vcpuCount: 1, memSizeMib: 256, bootArgs: "", env: {} }),
  backend: field("qemu"),
  vmm: field("qemu 7"),
  accel: field("kvm"),
  hostname: field("h"),
  diskFormat: field("qcow2"),
  sections: fc.oneof(
    {
      weight: 4,
      arbitrary: fc.array(
        fc.record({
          name: fc.oneof(fc.constantFrom("kernel", "initrd", "disk", "mem"), fc.string({ maxLength: 12 })),
          offset: num,
          length: num,
          size: num,
          sha256: fc.oneof(fc.constant("0".repeat(64)), fc.string({ maxLength: 64 })),
          compression: fc.oneof(fc.constant("zstd"), fc.anything()),
        }),
        { maxLength: 6 },
      ),
    },
    fc.anything(),
  ),
  signature: fc.option(fc.anything(), { nil: undefined }),
});
