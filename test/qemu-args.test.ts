/** QEMU's TCG translation buffer is bounded so a busy VM stays inside its VMM's memory limit (no OOM kill). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { limitsFor } from "../src/backends/cgroups.js";
import { accelArgs, kernelCmdline, TCG_TB_MIB } from "../src/backends/qemu/args.js";

test("TCG gets a bounded translation buffer that fits the VMM's memory limit beside guest RAM", () => {
  assert.deepEqual(accelArgs("tcg").slice(0, 2), ["-accel", `tcg,tb-size=${TCG_TB_MIB}`]);
  for (const mem of [128, 512, 2048]) {
    const overheadMib = limitsFor(mem, 2).memBytes / 1048576 - mem;
    // QEMU's own heap, device state and I/O buffers need some 150 MiB beside the code buffer
    assert.ok(TCG_TB_MIB + 150 <= overheadMib, `tb-size ${TCG_TB_MIB} MiB fits in ${overheadMib} MiB for ${mem} MiB`);
  }
  assert.deepEqual(accelArgs("kvm").slice(0, 2), ["-accel", "kvm"]);
});

test("a panicking guest resets at once (panic=-1 reboot=t), so QEMU's -no-reboot ends the VM", () => {
  const words = kernelCmdline({ hostname: "h", bootArgs: "" }, "tcg", 0).split(" ");
  assert.ok(words.includes("panic=-1") && words.includes("reboot=t"), words.join(" "));
});

test("an idle TCG guest can stop its tick: ARAT on the CPU, a trusted TSC; SMOLVM_IDLE_TUNING=0 brings back the old", () => {
  const saved = process.env.SMOLVM_IDLE_TUNING;
  try {
    delete process.env.SMOLVM_IDLE_TUNING;
    assert.deepEqual(accelArgs("tcg").slice(2), ["-cpu", "qemu64,+arat"]);
    const words = kernelCmdline({ hostname: "h", bootArgs: "" }, "tcg", 0).split(" ");
    for (const w of ["tsc=reliable", "nowatchdog", "sysctl.vm.compaction_proactiveness=0"])
      assert.ok(words.includes(w), w);
    assert.ok(!kernelCmdline({ hostname: "h", bootArgs: "" }, "kvm", 0).includes("tsc=reliable"));
    process.env.SMOLVM_IDLE_TUNING = "0";
    assert.deepEqual(accelArgs("tcg"), ["-accel", `tcg,tb-size=${TCG_TB_MIB}`]);
    const old = kernelCmdline({ hostname: "h", bootArgs: "" }, "tcg", 0).split(" ");
    assert.ok(!old.includes("tsc=reliable") && old.includes("smolvm.pit=keep"), old.join(" "));
  } finally {
    if (saved === undefined) delete process.env.SMOLVM_IDLE_TUNING;
    else process.env.SMOLVM_IDLE_TUNING = saved;
  }
});
