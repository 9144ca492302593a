/** Snapshots, restore, fork, pause/resume on real VMs. */
import assert from "node:assert/strict";
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { QemuBackend } from "../src/backends/qemu/backend.js";
import { ensureAgent } from "../src/images/agent-build.js";
import { SmolVM, SnapshotInUseError } from "../src/index.js";
import { fullStateFile, readFast, snapshotPlan } from "../src/sandbox/templates.js";
import { StateStore } from "../src/state/store.js";
import { processAlive } from "../src/util/proc.js";
import { cli, isolatedState } from "./helpers.js";

isolatedState();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let src: SmolVM;
before(async () => {
  src = await SmolVM.create({ memSizeMib: 256, name: "origin" });
});
after(async () => {
  await src.delete();
});

describe("snapshot and restore", () => {
  it("a restored sandbox has the snapshot's files, running background process and env; the source is untouched", async () => {
    await src.run("echo snapshot-time > /root/state.txt");
    await src.env.set({ SNAP_ENV: "kept" });
    const bg = await src.spawn("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done");
    const snap = await src.snapshot({ name: "base" });
    assert.equal(src.status, "running");
    await src.run("echo later > /root/state.txt");
    await using clone = await SmolVM.fromSnapshot("base");
    assert.notEqual(clone.vmId, src.vmId);
    assert.equal((await clone.run("cat /root/state.txt")).output, "snapshot-time");
    assert.equal((await src.run("cat /root/state.txt")).output, "later");
    assert.equal((await clone.run("echo $SNAP_ENV")).output, "kept");
    assert.equal((await clone.run("hostname")).output, clone.vmId);
    const listed = (await clone.processes.list()).find((p) => p.pid === bg.pid);
    assert.equal(listed?.running, true, "background process not running in the clone");
    const a = Number((await clone.run("cat /tmp/counter")).output);
    await sleep(500);
    const b = Number((await clone.run("cat /tmp/counter")).output);
    assert.ok(b > a, `counter did not advance in the clone (${a} -> ${b})`);
    assert.equal(StateStore.open().get(clone.vmId)?.snapshotId, snap.id);
    await bg.kill();
  });

  it("forks diverge, draw different random bytes, and have the host's clock", async () => {
    const [a, b] = await src.fork(2);
    assert.ok(a && b);
    try {
      await a.run("echo only-a > /root/fork.txt");
      assert.equal((await b.run("test -e /root/fork.txt; echo $?")).output, "1");
      const rand = await Promise.all([a, b].map((f) => f.run("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")));
      assert.equal(rand[0]?.output.length, 64);
      assert.notEqual(rand[0]?.output, rand[1]?.output);
      for (const f of [a, b]) {
        const guest = Number((await f.run("date +%s")).output);
        assert.ok(Math.abs(guest - Date.now() / 1000) <= 1.5, `guest clock off by ${guest - Date.now() / 1000} s`);
      }
    } finally {
      await a.delete();
      await b.delete();
    }
  });

  it("a snapshot taken while a command runs restores a consistent VM, and the source's command completes", async () => {
    const running = src.run(
      "rm -f /root/log; for i in $(seq 1 40); do echo $i >> /root/log; sleep 0.05; done; echo done",
    );
    await sleep(600);
    const snap = await src.snapshot();
    const r = await running;
    assert.equal(r.output, "done");
    assert.equal((await src.run("wc -l < /root/log")).output, "40");
    await using clone = await SmolVM.fromSnapshot(snap.id);
    const lines = (await clone.run("cat /root/log")).output.split("\n").map(Number);
    assert.ok(lines.length >= 1 && lines.length < 40, `unexpected ${lines.length} lines`);
    assert.deepEqual(
      lines,
      lines.map((_, i) => i + 1),
      "log lines not consecutive",
    );
    assert.equal((await clone.run("echo fresh")).output, "fresh");
  });
});

describe("fast image conversion", () => {
  it("a snapshot's RAM is split out without QEMU, byte for byte what QEMU's own load gives, and restores", async () => {
    await src.run("head -c 3000000 /dev/urandom > /dev/shm/noise; echo converted > /root/conv.txt");
    const snap = await src.snapshot();
    const rec = StateStore.open().getSnapshot(snap.id);
    assert.ok(rec);
    const fast = readFast(join(rec.dir, "fast"));
    assert.equal(fast?.meta.format, "split", "the snapshot was not split when taken");
    assert.equal(rec.memFile, fast?.state);
    assert.equal(existsSync(join(rec.dir, "mem.bin")), false, "the full stream was kept beside the split");
    // rebuild the full stream, and let QEMU load it into a RAM file the slow way
    const backend = new QemuBackend();
    const work = mkdtempSync(join(tmpdir(), "smolvm-conv-"));
    try {
      const full = await fullStateFile(backend, rec, work);
      backend.splitState = async () => null; // as for a stream the splitter does not understand
      await snapshotPlan(backend, { ...rec, dir: work, memFile: full }, await ensureAgent());
      const slow = readFast(join(work, "fast"));
      assert.equal(slow?.meta.format, "device-state");
      assert.ok(readFileSync(slow.ram).equals(readFileSync(fast?.ram as string)), "RAM differs from QEMU's load");
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
    await using clone = await SmolVM.fromSnapshot(snap.id);
    assert.equal((await clone.run("cat /root/conv.txt")).output, "converted");
    const sums = await Promise.all([src, clone].map((v) => v.run("md5sum < /dev/shm/noise")));
    assert.match(sums[0]?.output ?? "", /^[0-9a-f]{32}\b/);
    assert.equal(sums[0]?.output, sums[1]?.output);
  });
});

describe("snapshot lifetime", () => {
  it("deleting the source VM breaks neither snapshots nor clones; a snapshot in use cannot be removed", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    await vm.run("echo one > /root/f");
    const s1 = await vm.snapshot();
    const clone = await SmolVM.fromSnapshot(s1.id);
    await vm.run("echo two > /root/f");
    const s2 = await vm.snapshot();
    assert.equal(s2.parentId, s1.id);
    await vm.delete();
    assert.equal((await clone.run("cat /root/f")).output, "one");
    await using fromS2 = await SmolVM.fromSnapshot(s2.id);
    assert.equal((await fromS2.run("cat /root/f")).output, "two");
    assert.throws(() => SmolVM.deleteSnapshot(s1.id), SnapshotInUseError);
    await clone.delete();
    assert.throws(() => SmolVM.deleteSnapshot(s1.id), /snapshot .*s2|used by snapshot/);
    await fromS2.delete();
    SmolVM.deleteSnapshot(s2.id);
    SmolVM.deleteSnapshot(s1.id);
    assert.deepEqual(
      SmolVM.listSnapshots().filter((s) => s.id === s1.id || s.id === s2.id),
      [],
    );
  });

  it("a truncated or corrupted snapshot is refused with the file named, leaving nothing behind", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    const s = await vm.snapshot();
    await vm.delete();
    const rec = StateStore.open().get(s.id) ?? StateStore.open().getSnapshot(s.id);
    assert.ok(rec && "memFile" in rec);
    const before = (await SmolVM.list()).length;
    // garbage of the right size: only QEMU can tell
    const fd = openSync(rec.memFile, "r+");
    writeSync(fd, Buffer.alloc(4096, 0xab), 0, 4096, 0);
    closeSync(fd);
    await assert.rejects(SmolVM.fromSnapshot(s.id), (e: unknown) => {
      assert.match((e as Error).message, new RegExp(rec.memFile.replace(/[.]/g, "\\.")));
      return true;
    });
    assert.equal((await SmolVM.list()).length, before, "a half-started VM was left behind");
    const memSize = statSync(rec.memFile).size;
    truncateSync(rec.memFile, memSize - 1000);
    await assert.rejects(SmolVM.fromSnapshot(s.id), /damaged: .*state\.bin has \d+ bytes/);
    assert.equal((await SmolVM.list()).length, before);
    truncateSync(rec.memFile, memSize);
    const ram = join(rec.dir, "fast", "ram.raw");
    const ramSize = statSync(ram).size;
    truncateSync(ram, ramSize - 4096);
    await assert.rejects(SmolVM.fromSnapshot(s.id), /ram\.raw is damaged: it has \d+ bytes/);
    // the right size again, but written after the snapshot sealed it: never mapped into a VM
    truncateSync(ram, ramSize);
    await assert.rejects(SmolVM.fromSnapshot(s.id), /ram\.raw was modified after it was written/);
    assert.equal((await SmolVM.list()).length, before);
    SmolVM.deleteSnapshot(s.id);
    assert.equal(existsSync(rec.memFile), false);
  });
});

describe("CLI", () => {
  it("pause, resume, snapshot create/list/inspect/rm, fork, create --snapshot", async () => {
    assert.equal((await cli(["pause", "origin"])).stdout.trim(), `${src.vmId} paused`);
    assert.equal(src.status, "paused");
    assert.equal((await cli(["resume", "origin"])).stdout.trim(), `${src.vmId} running`);
    const created = await cli(["snapshot", "create", "origin", "--name", "cli-snap", "--json"]);
    assert.equal(created.code, 0, created.stderr);
    const snap = JSON.parse(created.stdout) as { id: string; sizeBytes: number };
    assert.ok(snap.sizeBytes > 0);
    const list = JSON.parse((await cli(["snapshot", "list", "--json"])).stdout) as { id: string }[];
    assert.ok(list.some((s) => s.id === snap.id));
    const inspect = JSON.parse((await cli(["snapshot", "inspect", "cli-snap", "--json"])).stdout);
    assert.equal(inspect.memSizeMib, 256);
    const restored = await cli(["create", "--snapshot", "cli-snap", "--name", "from-cli"]);
    assert.equal(restored.code, 0, restored.stderr);
    const refused = await cli(["snapshot", "rm", "cli-snap"]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /still used by VM/);
    const forked = await cli(["fork", "origin", "--count", "2", "--json"]);
    assert.equal(forked.code, 0, forked.stderr);
    const clones = JSON.parse(forked.stdout) as { vmId: string; pid: number }[];
    assert.equal(clones.length, 2);
    for (const c of clones) assert.ok(processAlive(c.pid));
    assert.equal((await cli(["rm", "-f", "from-cli", ...clones.map((c) => c.vmId)])).code, 0);
    // the source VM (and the fork's snapshot) are layered on the snapshot's disk: still refused
    const still = await cli(["snapshot", "rm", "cli-snap"]);
    assert.equal(still.code, 1);
    assert.match(still.stderr, /still used by/);
  });
});

describe("warm start", () => {
  it("create() restores the image's warm-start snapshot; coldBoot boots; both are independent sandboxes", async () => {
    await using warm = await SmolVM.create({ memSizeMib: 256 });
    assert.equal(warm.startTimings?.from, "warm");
    await using warm2 = await SmolVM.create({ memSizeMib: 256 });
    assert.equal(warm2.startTimings?.from, "warm");
    await using cold = await SmolVM.create({ memSizeMib: 256, coldBoot: true });
    assert.equal(cold.startTimings?.from, "boot");
    await warm.run("echo mine > /root/w");
    assert.equal((await warm2.run("test -e /root/w; echo $?")).output, "1");
    assert.equal((await warm2.run("hostname")).output, warm2.vmId);
    const [r1, r2] = await Promise.all([warm, warm2].map((v) => v.run("head -c 16 /dev/urandom | od -An -tx1")));
    assert.notEqual(r1?.stdout, r2?.stdout);
    const guest = Number((await warm2.run("date +%s")).output);
    assert.ok(Math.abs(guest - Date.now() / 1000) <= 1.5);
    // a cold-booted VM's state restores like any other (its RAM is named like a warm one's)
    await cold.run("echo cold > /root/c");
    await using fromCold = await SmolVM.fromSnapshot((await cold.snapshot()).id);
    assert.equal((await fromCold.run("cat /root/c")).output, "cold");
    // a restart of a warm-started VM boots its own disk and keeps its files
    await warm.stop();
    await warm.start();
    assert.equal(warm.startTimings?.from, "boot");
    assert.equal((await warm.run("cat /root/w")).output, "mine");
  });

  it("a different size gets its own template (the template key follows the config)", async () => {
    const { readdirSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { dataDir } = await import("../src/paths.js");
    const before = new Set(readdirSync(join(dataDir(), "warm")));
    await using vm = await SmolVM.create({ memSizeMib: 320 });
    assert.equal(vm.startTimings?.from, "warm");
    const added = readdirSync(join(dataDir(), "warm")).filter((d) => !before.has(d) && !d.includes(".tmp"));
    assert.ok(added.length <= 1);
    assert.equal((await vm.run("grep MemTotal /proc/meminfo | awk '{print int($2/1024)}'")).output.length > 0, true);
  });
});
