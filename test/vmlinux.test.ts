/**
 * vmlinux extraction: synthetic bzImages in every format a host tool here can write, the errors, and the real
 * Debian kernel, whose extracted vmlinux then boots a VM (QEMU loads an ELF vmlinux through its PVH note).
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ImageError } from "../src/errors.js";
import { ensureKernel } from "../src/images/kernel.js";
import { elfProblem, ensureVmlinux, extractVmlinux, inspectKernelImage } from "../src/images/vmlinux.js";
import { SmolVM } from "../src/index.js";
import { which } from "../src/util/run.js";
import { isolatedState } from "./helpers.js";

isolatedState();
const dir = mkdtempSync(join(tmpdir(), "smolvm-vmlinux-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** An ELF64 x86-64 executable header and a body that compresses, but not to nothing. */
function fakeElf(machine = 62, size = 300_000): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 64; i < size; i++) b[i] = (i * 7 + (i >> 9)) & 0xff;
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2;
  b[5] = 1;
  b[6] = 1;
  b.writeUInt16LE(2, 16);
  b.writeUInt16LE(machine, 18);
  return b;
}

/** A bzImage: one setup sector after the boot sector, then the payload (and the kernel's size trailer). */
function bzImage(payload: Buffer, uncompressed: number | null, protocol = 0x020f): Buffer {
  const head = Buffer.alloc(1024);
  head[0x1f1] = 1;
  head.write("HdrS", 0x202, "latin1");
  head.writeUInt16LE(protocol, 0x206);
  const trailer = Buffer.alloc(uncompressed === null ? 0 : 4);
  if (uncompressed !== null) trailer.writeUInt32LE(uncompressed, 0);
  head.writeUInt32LE(0, 0x248);
  head.writeUInt32LE(payload.length + trailer.length, 0x24c);
  return Buffer.concat([head, payload, trailer]);
}

const compressors: [string, string, string[]][] = [
  ["gzip", "gzip", ["-9c"]],
  ["xz", "xz", ["--check=crc32", "-c"]],
  ["zstd", "zstd", ["-c", "-q"]],
  ["bzip2", "bzip2", ["-c"]],
  ["lz4", "lz4", ["-l", "-c", "-q"]],
];

describe("extractVmlinux on synthetic bzImages", () => {
  const elf = fakeElf();
  for (const [format, tool, args] of compressors) {
    it(`${format}`, { skip: which(tool) ? false : `no ${tool} on this host` }, async () => {
      const payload = execFileSync(tool, args, { input: elf, maxBuffer: 64 << 20 });
      const img = join(dir, `bz-${format}`);
      writeFileSync(img, bzImage(payload, format === "gzip" ? null : elf.length));
      const info = inspectKernelImage(img);
      assert.equal(info.kind, "bzimage");
      assert.equal(info.kind === "bzimage" && info.format, format);
      const out = join(dir, `vmlinux-${format}`);
      await extractVmlinux(img, out);
      assert.ok(readFileSync(out).equals(elf), `${format}: the extracted vmlinux is the original`);
    });
  }

  it("an ELF input is copied; ensureVmlinux uses it as is", async () => {
    const p = join(dir, "already.elf");
    writeFileSync(p, fakeElf());
    await extractVmlinux(p, join(dir, "copy.elf"));
    assert.ok(readFileSync(join(dir, "copy.elf")).equals(readFileSync(p)));
    assert.equal(await ensureVmlinux(p), p);
  });

  it("refuses with the file named: not a kernel, old protocol, wrong size, wrong machine, bad lz4", async () => {
    const cases: [string, Buffer, RegExp][] = [
      ["junk", Buffer.alloc(4096, 1), /neither an ELF vmlinux nor an x86 bzImage/],
      ["old", bzImage(Buffer.alloc(64), 64, 0x0206), /boot protocol 2\.06 predates 2\.08/],
      ["arm", fakeElf(183), /machine 183, not x86-64/],
      ["unknown", bzImage(Buffer.alloc(64, 7), 64), /unknown compression/],
      [
        "short",
        bzImage(execFileSync("xz", ["--check=crc32", "-c"], { input: fakeElf() }), 12345),
        /decompressed to 300000 bytes, its trailer says 12345/,
      ],
      ["lz4bad", bzImage(Buffer.from([0x02, 0x21, 0x4c, 0x18, 9, 0, 0, 0, 0xf0, 1, 2]), 10), /bad lz4 payload/],
      [
        "notelf",
        bzImage(execFileSync("gzip", ["-c"], { input: Buffer.alloc(1000, 0x41) }), null),
        /decompressed kernel is not an ELF file/,
      ],
    ];
    for (const [name, bytes, re] of cases) {
      const p = join(dir, name);
      writeFileSync(p, bytes);
      await assert.rejects(extractVmlinux(p, join(dir, `${name}.out`)), (e: Error) => {
        assert.ok(e instanceof ImageError, `${name}: ${e}`);
        assert.match(e.message, re);
        assert.ok(e.message.includes(p), `${name}: names the file: ${e.message}`);
        return true;
      });
      assert.throws(() => statSync(join(dir, `${name}.out`)), "no partial output");
    }
  });
});

describe("the Debian kernel's vmlinux", () => {
  let vmlinux = "";

  it("is extracted whole, checked, and cached beside the kernel", async () => {
    const k = await ensureKernel();
    vmlinux = join(dir, "vmlinux-debian");
    const t0 = performance.now();
    await extractVmlinux(k.kernelPath, vmlinux);
    const took = performance.now() - t0;
    const bytes = readFileSync(vmlinux);
    assert.equal(elfProblem(bytes.subarray(0, 64)), null, "an ELF64 x86-64 executable");
    const info = inspectKernelImage(k.kernelPath);
    assert.equal(info.kind, "bzimage");
    if (info.kind === "bzimage" && info.format !== "gzip") {
      const trailer = readFileSync(k.kernelPath).subarray(info.offset + info.length - 4, info.offset + info.length);
      assert.equal(bytes.length, trailer.readUInt32LE(0), "as long as the bzImage says");
    }
    assert.ok(took < 30_000, `extraction took ${took} ms`);
    const cached = await ensureVmlinux(k.kernelPath);
    assert.equal(cached, join(k.kernelPath, "..", "vmlinux"));
    assert.ok(readFileSync(cached).equals(bytes), "the cache holds the same vmlinux");
    const mtime = statSync(cached).mtimeMs;
    assert.equal(await ensureVmlinux(k.kernelPath), cached);
    assert.equal(statSync(cached).mtimeMs, mtime, "the second call reuses the cache");
  });

  it("boots a VM whole, finding its virtio-mmio devices through ACPI as under Firecracker", async () => {
    assert.ok(vmlinux, "extracted above");
    const k = await ensureKernel();
    const vm = await SmolVM.create({ kernelPath: vmlinux, memSizeMib: 256 });
    try {
      const r = await vm.run("uname -r; cat /proc/cmdline; ls /sys/bus/virtio/devices | wc -l");
      assert.equal(r.exitCode, 0, r.stderr);
      const [release, cmdline, devices] = r.stdout.trim().split("\n");
      assert.equal(release, k.version);
      assert.doesNotMatch(cmdline ?? "", /virtio_mmio\.device=/, "no devices on the command line");
      assert.ok(Number(devices) >= 2, `virtio devices found: ${devices}`);
      assert.equal((await vm.run("echo whole")).stdout, "whole\n");
    } finally {
      await vm.delete();
    }
  });
});
