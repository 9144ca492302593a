/** Firecracker's version range and the guest-kernel check, as pure functions. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  checkFirecrackerVersion,
  FIRECRACKER_MIN_VERSION,
  parseFirecrackerVersion,
} from "../src/backends/firecracker/binary.js";
import {
  checkFirecrackerKernel,
  FIRECRACKER_ACPI_VERSION,
  type KernelCheckInput,
} from "../src/backends/firecracker/kernel-check.js";

describe("Firecracker versions", () => {
  it("reads `firecracker --version` output", () => {
    assert.equal(parseFirecrackerVersion("Firecracker v1.12.1\n\n"), "1.12.1");
    assert.equal(parseFirecrackerVersion("Firecracker v1.17.0-dev\n"), "1.17.0-dev");
    assert.equal(parseFirecrackerVersion("Jailer v1.16.0\n", "Jailer"), "1.16.0");
    assert.equal(parseFirecrackerVersion("v20.19.0\n"), null);
    assert.equal(parseFirecrackerVersion("Firecracker v1.2\n"), null);
  });

  it("supports >= 1.12.0 (network_overrides on snapshot load) and < 2.0.0", () => {
    assert.equal(FIRECRACKER_MIN_VERSION, "1.12.0");
    for (const ok of ["1.12.0", "1.16.1", "1.17.0-dev", "1.99.3"]) assert.equal(checkFirecrackerVersion(ok), null, ok);
    assert.match(checkFirecrackerVersion("1.11.1") ?? "", /v1\.11\.1 is older than this client supports \(>= 1\.12\.0/);
    assert.match(checkFirecrackerVersion("2.0.0") ?? "", /newer major version/);
    assert.match(checkFirecrackerVersion("banana") ?? "", /cannot read/);
  });
});

const CI_X86 = [
  "CONFIG_BLK_DEV_INITRD=y",
  "CONFIG_KVM_GUEST=y",
  "CONFIG_VIRTIO_MMIO=y",
  "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
  "CONFIG_VIRTIO_BLK=y",
  "CONFIG_VIRTIO_VSOCKETS=y",
  "CONFIG_ACPI=y",
  "CONFIG_PCI=y",
].join("\n");

// what Debian's cloud kernel (6.1, bookworm) has: drivers as modules, no command-line devices
const DEBIAN_CLOUD = [
  "CONFIG_BLK_DEV_INITRD=y",
  "CONFIG_KVM_GUEST=y",
  "CONFIG_VIRTIO_MMIO=m",
  "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set",
  "CONFIG_VIRTIO_BLK=m",
  "CONFIG_VIRTIO_VSOCKETS=m",
  "CONFIG_ACPI=y",
  "CONFIG_PCI=y",
].join("\n");

const DEBIAN_MODULES = ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "vsock", "vmw_vsock_virtio_transport"];

const input = (o: Partial<KernelCheckInput>): KernelCheckInput => ({
  kernelPath: "/k/vmlinuz",
  image: { kind: "bzimage", protocol: "2.15", format: "lz4", offset: 1024, length: 100 },
  configText: DEBIAN_CLOUD,
  fcVersion: null,
  modules: DEBIAN_MODULES,
  arch: "x64",
  ...o,
});

describe("checkFirecrackerKernel", () => {
  it("a CI-style kernel (command-line devices) boots under any Firecracker", () => {
    for (const fcVersion of [null, "1.7.0", "1.16.1"]) {
      const r = checkFirecrackerKernel(input({ image: { kind: "elf", problem: null }, configText: CI_X86, fcVersion }));
      assert.deepEqual([r.ok, r.reasons, r.fix], [true, [], null], String(fcVersion));
      assert.match(r.summary, /an ELF vmlinux, virtio-mmio devices from the command line/);
    }
  });

  it("Debian's cloud kernel: ACPI only, so it depends on the Firecracker version", () => {
    const unknown = checkFirecrackerKernel(input({}));
    assert.equal(unknown.ok, null);
    assert.match(unknown.reasons.join(), /only through ACPI \(CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\)/);
    assert.match(unknown.reasons.join(), /no Firecracker version to compare/);
    const old = checkFirecrackerKernel(input({ fcVersion: "1.7.0" }));
    assert.equal(old.ok, false);
    assert.match(old.reasons.join(), /since v1\.8\.0, and the installed Firecracker is v1\.7\.0/);
    assert.equal(FIRECRACKER_ACPI_VERSION, "1.8.0");
    for (const r of [unknown, old]) {
      assert.match(r.fix ?? "", /install Firecracker >= v1\.8\.0/);
      assert.match(r.fix ?? "", /SMOLVM_KERNEL=\/path\/to\/vmlinux/);
    }
    const ok = checkFirecrackerKernel(input({ fcVersion: "1.16.1" }));
    assert.equal(ok.ok, true, ok.reasons.join());
    assert.match(ok.summary, /lz4 bzImage \(SmolVM extracts its vmlinux\), virtio-mmio devices through ACPI/);
  });

  it("names what a kernel lacks", () => {
    const neither = checkFirecrackerKernel(
      input({ configText: DEBIAN_CLOUD.replace("CONFIG_ACPI=y", "# CONFIG_ACPI is not set"), fcVersion: "1.16.1" }),
    );
    assert.equal(neither.ok, false);
    assert.match(neither.reasons.join(), /cannot find Firecracker's virtio-mmio devices.*CONFIG_ACPI is not set/);
    assert.doesNotMatch(neither.fix ?? "", /install Firecracker/);
    const noModule = checkFirecrackerKernel(input({ modules: [], fcVersion: "1.16.1" }));
    assert.equal(noModule.ok, false);
    assert.match(
      noModule.reasons.join(),
      /CONFIG_VIRTIO_BLK=m \(virtio-blk, the root disk\) but the guest's initrd has/,
    );
    const noVsock = checkFirecrackerKernel(input({ configText: CI_X86.replace("CONFIG_VIRTIO_VSOCKETS=y", "") }));
    assert.match(noVsock.reasons.join(), /CONFIG_VIRTIO_VSOCKETS is not set \(virtio-vsock/);
  });

  it("images it cannot use, and kernels without a config", () => {
    const arm = checkFirecrackerKernel(input({ image: { kind: "elf", problem: "an ELF for machine 183" } }));
    assert.equal(arm.ok, false);
    const junk = checkFirecrackerKernel(
      input({ image: { kind: "unknown", problem: "neither..." }, fcVersion: "1.16.1" }),
    );
    assert.equal(junk.ok, false);
    const noConfig = checkFirecrackerKernel(input({ configText: null, fcVersion: "1.16.1" }));
    assert.equal(noConfig.ok, null);
    assert.match(noConfig.reasons.join(), /no build configuration for \/k\/vmlinuz/);
    assert.match(noConfig.fix ?? "", /SMOLVM_KERNEL_CONFIG/);
    assert.equal(checkFirecrackerKernel(input({ arch: "arm64" })).ok, null);
  });
});
