/**
 * The guest clock is kept in sync with the host's while the VM runs (its proxy sets it periodically: here every
 * 1.5 s, by default every 30 s), and again when a paused VM resumes.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { SmolVM } from "../src/index.js";
import { isolatedState } from "./helpers.js";

isolatedState();
process.env.SMOLVM_CLOCK_SYNC_MS = "1500";

/** Guest time minus host time, in seconds (to within the command's round trip). */
async function skew(vm: SmolVM): Promise<number> {
  const r = await vm.run("date +%s");
  return Number(r.stdout.trim()) - Date.now() / 1000;
}

describe("guest clock", () => {
  it("a guest clock set wrong is put right while the VM runs, and after a resume", async () => {
    await using vm = await SmolVM.create({ memSizeMib: 256 });
    await vm.run("date -s '2001-09-09 01:46:40' >/dev/null");
    assert.ok((await skew(vm)) < -1e8, "the guest clock was set back");
    const until = Date.now() + 20_000;
    while (Math.abs(await skew(vm)) > 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 500));
    assert.ok(Math.abs(await skew(vm)) <= 2, `guest clock still off by ${await skew(vm)} s`);

    await vm.pause();
    await new Promise((r) => setTimeout(r, 4000));
    await vm.resume();
    assert.ok(Math.abs(await skew(vm)) <= 2, `after a 4 s pause the guest clock is off by ${await skew(vm)} s`);
  });
});
