/**
 * The pool (src/lifecycle/pool.ts) on real VMs: `create()` served from paused, pre-started VMs, each handed out with
 * a fresh identity; the pool refills; closing it deletes every VM waiting in it.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { qmpOnce } from "../src/backends/qemu/qmp.js";
import { resolveConfig } from "../src/config.js";
import { SmolVM } from "../src/index.js";
import { readLease, selfOwner } from "../src/lifecycle/lease.js";
import { POOL_LABEL, poolShape } from "../src/lifecycle/pool.js";
import { StateStore } from "../src/state/store.js";
import { processAlive, waitFor } from "../src/util/proc.js";
import { isolatedState } from "./helpers.js";

isolatedState();
after(() => SmolVM.closePool());

const SHAPE = { memSizeMib: 256, vcpuCount: 1 } as const;

describe("pool", () => {
  it("hands out paused VMs with a fresh identity each; counts hits and misses apart; refills", async () => {
    SmolVM.configurePool({ size: 2 });
    const before = SmolVM.poolStats();
    // the first create of a shape is a miss: started as usual, and the pool fills behind it
    await using first = await SmolVM.create({ ...SHAPE });
    assert.equal(SmolVM.poolStats().misses, before.misses + 1);
    assert.ok(await waitFor(() => SmolVM.poolStats().ready === 2, 180_000, 200), "the pool did not fill");
    // waiting VMs are paused (no CPU) and hidden from list()
    const waiting = StateStore.open()
      .list()
      .filter((r) => r.config.labels?.[POOL_LABEL]);
    assert.equal(waiting.length, 2);
    assert.ok(waiting.every((r) => r.status === "paused"));
    assert.ok(!(await SmolVM.list()).some((v) => waiting.some((w) => w.id === v.vmId)));

    const a = await SmolVM.create({ ...SHAPE, name: "pooled-a", env: { WHO: "a" }, labels: { team: "x" } });
    const b = await SmolVM.create({ ...SHAPE, env: { WHO: "b" }, timeoutMs: 600_000 });
    try {
      const s = SmolVM.poolStats();
      assert.equal(s.hits, before.hits + 2);
      assert.ok(waiting.some((w) => w.id === a.vmId) && waiting.some((w) => w.id === b.vmId), "not from the pool");
      assert.notEqual(a.vmId, b.vmId);
      assert.equal(a.status, "running");
      // identity: hostname, env, labels, name, the host's clock, entropy of its own
      assert.equal((await a.run("hostname")).output, "pooled-a");
      assert.equal((await b.run("hostname")).output, b.vmId);
      assert.equal((await a.run("echo $WHO")).output, "a");
      assert.equal((await b.run("echo $WHO")).output, "b");
      assert.deepEqual(a.info().labels, { team: "x" });
      assert.equal(a.name, "pooled-a");
      assert.equal((await SmolVM.fromId("pooled-a")).vmId, a.vmId);
      const rand = await Promise.all(
        [a, b, first].map((v) => v.run("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")),
      );
      assert.equal(new Set(rand.map((r) => r.output)).size, 3, "two VMs drew the same random bytes");
      for (const v of [a, b]) {
        const skew = Number((await v.run("date +%s")).output) - Date.now() / 1000;
        assert.ok(Math.abs(skew) <= 2, `guest clock off by ${skew} s`);
      }
      assert.ok(
        (await SmolVM.list()).some((v) => v.vmId === a.vmId),
        "a handed-out VM is listed",
      );
      // lifetimes: each the caller's (a kept lease needs no write, a new deadline is written)
      const leaseOf = (v: SmolVM) => readLease(StateStore.open().getById(v.vmId)?.vmDir ?? "");
      assert.deepEqual(leaseOf(a), { expiresAt: null, action: "delete", owner: selfOwner() });
      const lb = leaseOf(b);
      assert.ok(lb?.expiresAt && Math.abs(lb.expiresAt - (Date.now() + 600_000)) < 60_000, JSON.stringify(lb));
      // the QMP connection held while it waited is released: anyone can drive the VMM again
      for (const v of [a, b]) {
        const h = StateStore.open().getById(v.vmId)?.handle;
        assert.ok(h);
        const st = (await qmpOnce(h.controlSocket, "query-status", undefined, 5000)) as { status: string };
        assert.equal(st.status, "running");
      }
      await a.pause();
      await a.resume();
      assert.equal((await a.run("echo again")).output, "again");
      // and the pool fills again
      assert.ok(await waitFor(() => SmolVM.poolStats().ready === 2, 180_000, 200), "the pool did not refill");
    } finally {
      await a.delete();
      await b.delete();
    }
  });

  it("configs it cannot serve bypass it (counted); the shape follows size and image", async () => {
    const s0 = SmolVM.poolStats();
    await using cold = await SmolVM.create({ ...SHAPE, coldBoot: true });
    assert.equal(cold.status, "running");
    assert.equal(SmolVM.poolStats().bypassed, s0.bypassed + 1);
    assert.equal(SmolVM.poolStats().hits, s0.hits);
    const shape = (c: object) => poolShape(resolveConfig(c), "qemu", false);
    assert.equal(shape({ ...SHAPE, name: "n", env: { A: "1" } }), shape({ ...SHAPE }));
    assert.notEqual(shape({ memSizeMib: 512, vcpuCount: 1 }), shape({ ...SHAPE }));
    assert.equal(poolShape(resolveConfig({ ...SHAPE }), "qemu", true), null, "an explicit vmId");
  });

  it("closing the pool deletes every waiting VM and leaves no process", async () => {
    const waiting = StateStore.open()
      .list()
      .filter((r) => r.config.labels?.[POOL_LABEL]);
    assert.ok(waiting.length > 0);
    await SmolVM.closePool();
    for (const w of waiting) {
      assert.equal(StateStore.open().getById(w.id), null, `pool VM ${w.id} still recorded`);
      assert.equal(processAlive(w.handle?.pid ?? null), false, `pool VM ${w.id}'s VMM still runs`);
    }
    assert.equal(SmolVM.poolStats().ready, 0);
  });
});
