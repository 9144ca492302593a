import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { platformDefault, resolveBackendName } from "../src/backends/resolve.js";
import { resolveConfig } from "../src/config.js";
import { BackendUnavailableError, ConfigError, SmolVM } from "../src/index.js";
import { StateStore } from "../src/state/store.js";
import { isolatedState } from "./helpers.js";

isolatedState();

function throwsField(fn: () => unknown, field: string, mention?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
    assert.equal(e.field, field);
    if (mention) assert.match(e.message, mention);
    return true;
  });
}

describe("VMConfig validation", () => {
  it("fills defaults", () => {
    const c = resolveConfig({});
    assert.equal(c.vcpuCount, 2);
    assert.equal(c.memSizeMib, 512);
    assert.equal(c.diskMode, "isolated");
    assert.equal(c.backend, "auto");
    assert.match(c.vmId, /^vm-[a-z0-9]{10}$/);
  });

  it("names the field and its allowed range", () => {
    throwsField(() => resolveConfig({ memSizeMib: 64 }), "memSizeMib", /128 to 16384/);
    throwsField(() => resolveConfig({ memSizeMib: 512.5 }), "memSizeMib");
    throwsField(() => resolveConfig({ vcpuCount: 0 }), "vcpuCount", /1 to 32/);
    throwsField(() => resolveConfig({ vcpuCount: 33 }), "vcpuCount");
    throwsField(() => resolveConfig({ diskMode: "cow" as never }), "diskMode", /isolated \| shared/);
    throwsField(() => resolveConfig({ backend: "xen" as never }), "backend", /auto \| firecracker \| qemu/);
    throwsField(() => resolveConfig({ vmId: "Bad/Id" }), "vmId");
    throwsField(() => resolveConfig({ kernelPath: "/nonexistent/vmlinuz" }), "kernelPath", /nonexistent/);
    throwsField(() => resolveConfig({ env: { "1BAD": "x" } }), "env.1BAD");
  });

  it("suggests the camelCase name for a Python-style field", () => {
    throwsField(() => resolveConfig({ mem_size_mib: 256 } as never), "mem_size_mib", /did you mean memSizeMib/);
  });

  it("rejects bad values at construction, before anything boots", () => {
    throwsField(() => new SmolVM({ memSizeMib: 99999 }), "memSizeMib");
  });
});

describe("backend resolution", () => {
  it("explicit > SMOLVM_BACKEND > platform default", () => {
    const saved = process.env.SMOLVM_BACKEND;
    try {
      process.env.SMOLVM_BACKEND = "firecracker";
      assert.equal(resolveBackendName("qemu"), "qemu");
      assert.equal(resolveBackendName(undefined), "firecracker");
      assert.equal(resolveBackendName("auto"), "firecracker");
      process.env.SMOLVM_BACKEND = "vbox";
      throwsField(() => resolveBackendName(undefined), "SMOLVM_BACKEND", /auto \| firecracker \| qemu/);
      delete process.env.SMOLVM_BACKEND;
      assert.equal(resolveBackendName(undefined), "qemu");
    } finally {
      if (saved === undefined) delete process.env.SMOLVM_BACKEND;
      else process.env.SMOLVM_BACKEND = saved;
    }
  });

  it("firecracker without its binary fails at once, naming the fix, before any disk is made", async () => {
    const saved = process.env.SMOLVM_FIRECRACKER_BIN;
    process.env.SMOLVM_FIRECRACKER_BIN = "/nonexistent/firecracker";
    try {
      const vm = new SmolVM({ backend: "firecracker" });
      await assert.rejects(vm.start(), (e: unknown) => {
        assert.ok(e instanceof BackendUnavailableError);
        assert.match(
          (e as Error).message,
          /firecracker backend unavailable: no firecracker binary.*setup --firecracker/,
        );
        return true;
      });
      assert.equal(StateStore.open().get(vm.vmId), null, "a record was left behind");
    } finally {
      if (saved === undefined) delete process.env.SMOLVM_FIRECRACKER_BIN;
      else process.env.SMOLVM_FIRECRACKER_BIN = saved;
    }
  });

  it("auto picks QEMU unless KVM passed its probe and Firecracker is installed", () => {
    assert.equal(
      platformDefault(() => false),
      "qemu",
    );
    const saved = process.env.SMOLVM_FIRECRACKER_BIN;
    process.env.SMOLVM_FIRECRACKER_BIN = "/nonexistent/firecracker";
    try {
      assert.equal(
        platformDefault(() => true),
        "qemu",
        "no binary",
      );
    } finally {
      if (saved === undefined) delete process.env.SMOLVM_FIRECRACKER_BIN;
      else process.env.SMOLVM_FIRECRACKER_BIN = saved;
    }
  });
});
