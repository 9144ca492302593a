/** QEMU's TCG translation buffer is bounded so a busy VM stays inside its VMM's memory limit (no OOM kill). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { limitsFor } from "../src/backends/cgroups.js";
import { accelArgs, kernelCmdline, TCG_TB_MIB } from "../src/backends/qemu/args.js";

test("TCG gets a bounded translation buffer that fits the VMM's memory limit beside guest RAM", () => {
  assert.deepEqual(accelArgs("tcg"), ["-accel", `tcg,tb-size=${TCG_TB_MIB}`]);
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
