/**
 * `doctor --backend firecracker --json` says exactly why Firecracker is unavailable on this host: the binary, its
 * version, KVM, the guest kernel (Debian's cloud kernel here: virtio-mmio through ACPI only).
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { findKernel } from "../src/images/kernel.js";
import { cli } from "./helpers.js";

interface Report {
  ok: boolean;
  kvm: { usable: boolean; reason: string };
  checks: { name: string; status: string; detail: string }[];
  firecracker: {
    binary: string | null;
    version: string | null;
    kernel: { ok: boolean | null; reasons: string[]; fix: string | null };
    blockers: { what: string; reason: string; fix?: string }[];
  };
}

const dir = mkdtempSync(join(tmpdir(), "smolvm-fcdoc-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A stand-in `firecracker` that only answers --version. */
function fakeFirecracker(version: string): string {
  const p = join(dir, `firecracker-${version}`);
  writeFileSync(p, `#!/bin/sh\necho "Firecracker v${version}"\necho\n`);
  chmodSync(p, 0o755);
  return p;
}

async function doctor(env: Record<string, string>) {
  const r = await cli(["doctor", "--backend", "firecracker", "--json"], { env, timeoutMs: 180_000 });
  const report = JSON.parse(r.stdout) as Report;
  const fc = report.checks.find((c) => c.name === "firecracker");
  const kernel = report.checks.find((c) => c.name === "firecracker kernel");
  assert.ok(fc && kernel, "a firecracker check and a firecracker kernel check");
  return { report, fc, kernel, what: report.firecracker.blockers.map((b) => b.what) };
}

// Debian's cloud kernel (what `smolvm setup` fetches): CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set, ACPI is
const debianKernel = findKernel()?.source === "debian";

describe("doctor --backend firecracker", () => {
  it("names each reason: the binary (and where it looked), KVM, and the kernel", async () => {
    const { report, fc, kernel, what } = await doctor({ SMOLVM_FIRECRACKER_BIN: "/nonexistent/firecracker" });
    assert.equal(report.ok, false);
    assert.equal(fc.status, "fail");
    assert.match(fc.detail, /SMOLVM_FIRECRACKER_BIN=\/nonexistent\/firecracker does not exist/);
    assert.match(fc.detail, /fix: smolvm setup --firecracker/);
    assert.doesNotMatch(fc.detail, /not yet its backend/, "this release drives Firecracker");
    assert.ok(what.includes("binary"), what.join());
    if (report.kvm.usable) assert.doesNotMatch(fc.detail, /KVM cannot run/);
    else assert.ok(fc.detail.includes(`KVM cannot run a guest here (${report.kvm.reason})`), fc.detail);
    if (debianKernel) {
      // without a binary there is no version to hold the kernel against
      assert.equal(report.firecracker.kernel.ok, null);
      assert.equal(kernel.status, "warn");
      assert.match(
        kernel.detail,
        /only through ACPI \(CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\).*since v1\.8\.0/,
      );
      assert.match(kernel.detail, /no Firecracker version to compare/);
      assert.match(kernel.detail, /fix: install Firecracker >= v1\.8\.0.*SMOLVM_KERNEL=\/path\/to\/vmlinux/);
    }
  });

  it("an old binary: its version is unsupported, and Debian's kernel cannot boot under it", async () => {
    const bin = fakeFirecracker("1.7.0");
    const { report, fc, kernel, what } = await doctor({ SMOLVM_FIRECRACKER_BIN: bin });
    assert.equal(report.firecracker.binary, bin);
    assert.equal(report.firecracker.version, "1.7.0");
    assert.ok(what.includes("version") && !what.includes("binary"), what.join());
    assert.match(fc.detail, /Firecracker v1\.7\.0 is older than this client supports \(>= 1\.12\.0 and < 2\.0\.0/);
    if (debianKernel) {
      assert.equal(report.firecracker.kernel.ok, false);
      assert.equal(kernel.status, "fail");
      assert.match(kernel.detail, /since v1\.8\.0, and the installed Firecracker is v1\.7\.0/);
    }
  });

  it("a supported binary: neither the binary nor its version is a reason, and Debian's kernel boots under it", async () => {
    const { report, fc, kernel, what } = await doctor({ SMOLVM_FIRECRACKER_BIN: fakeFirecracker("1.16.1") });
    assert.doesNotMatch(fc.detail, /binary|SMOLVM_FIRECRACKER_BIN|older than/);
    assert.ok(!what.includes("binary") && !what.includes("version"), what.join());
    if (debianKernel) {
      assert.equal(report.firecracker.kernel.ok, true, report.firecracker.kernel.reasons.join());
      assert.equal(kernel.status, "ok");
      assert.match(kernel.detail, /bzImage \(SmolVM extracts its vmlinux\), virtio-mmio devices through ACPI/);
      assert.ok(!what.includes("kernel"));
    }
  });

  it("a binary that is not Firecracker", async () => {
    const { fc } = await doctor({ SMOLVM_FIRECRACKER_BIN: process.execPath });
    assert.match(fc.detail, /--version' printed "v\d+\.\d+\.\d+".*not "Firecracker vX\.Y\.Z"/);
  });
});
