/**
 * No leftovers, on real VMs: the snapshots fork and pack take are temporary; `snapshot rm` names what is built on a
 * snapshot and deletes snapshot trees with -r; `system df` and `system prune`. This file runs on a data dir of its
 * own (a copy of the shared kernel, agent, initramfs and base image), since `system prune --all` empties caches.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { findDefaultImage } from "../src/images/store.js";
import { backingFile, chainOf } from "../src/images/usage.js";
import { SmolVM } from "../src/index.js";
import type { DiskUsage } from "../src/lifecycle/disk-usage.js";
import type { SystemPruneResult } from "../src/lifecycle/prune.js";
import { StateStore } from "../src/state/store.js";
import { cli, isolatedState, repoRoot } from "./helpers.js";

/** A snapshot folder's files but its console log (a few KiB, kept or not): what holds memory or disk. */
const memoryless = (dir: string) => readdirSync(dir).filter((f) => f !== "console.log");

const shared = findDefaultImage();
assert.ok(shared, "run 'node bin/smolvm.js setup --with-test-tools' first");
const data = mkdtempSync(join(tmpdir(), "smolvm-prune-data-"));
process.env.SMOLVM_DATA_DIR = data;
for (const d of ["kernels", "agent", "initrd", "images"]) mkdirSync(join(data, d), { recursive: true });
copyFileSync(join(dirname(dirname(shared.kernelPath)), "current.json"), join(data, "kernels", "current.json"));
cpSync(dirname(shared.agentPath), join(data, "agent", basename(dirname(shared.agentPath))), { recursive: true });
copyFileSync(shared.initrdPath, join(data, "initrd", basename(shared.initrdPath)));
execFileSync("cp", ["--sparse=always", shared.rootfsPath, join(data, "images", basename(shared.rootfsPath))]);
const state = isolatedState();
after(() => rmSync(data, { recursive: true, force: true }));

const snapshotsDir = join(state, "snapshots");
const listed = () => (existsSync(snapshotsDir) ? readdirSync(snapshotsDir) : []);
const snapList = async (all: boolean) =>
  JSON.parse((await cli(["snapshot", "list", "--json", ...(all ? ["--all"] : [])])).stdout) as {
    id: string;
    name: string | null;
    temporary: boolean;
  }[];
/** Allocated bytes of a tree as du counts them (each inode once). */
const du = (p: string) => Number(execFileSync("du", ["-s", "--block-size=1", p], { encoding: "utf8" }).split("\t")[0]);

let src: SmolVM;
before(async () => {
  src = await SmolVM.create({ memSizeMib: 256, name: "keeper" });
  await src.run("echo kept > /root/kept");
});

describe("temporary snapshots", () => {
  it("fork: the snapshot loses its memory once the clones run, and goes with the source and its clones", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    await vm.run("echo before > /root/f");
    const forked = await cli(["fork", vm.vmId, "--count", "2", "--json"]);
    assert.equal(forked.code, 0, forked.stderr);
    const clones = (JSON.parse(forked.stdout) as { vmId: string }[]).map((c) => c.vmId);
    assert.deepEqual(await snapList(false), [], "a fork's snapshot is listed as a user's");
    const temp = (await snapList(true)).filter((s) => s.temporary);
    assert.equal(temp.length, 1);
    const rec = StateStore.open().getSnapshot(temp[0]?.id as string);
    assert.ok(rec);
    assert.deepEqual(memoryless(rec.dir), ["disk.qcow2"], "memory state kept after the fork");
    await vm.run("echo after > /root/g; sync");
    assert.equal((await cli(["rm", "-f", ...clones])).code, 0);
    // the source runs on, on a layer over the snapshot's: its chain is intact, across a restart too
    assert.equal((await vm.run("cat /root/f /root/g")).output, "before\nafter");
    const chain = chainOf(StateStore.open().getById(vm.vmId)?.diskPath as string);
    assert.ok(chain.includes(rec.diskFile), `${rec.diskFile} not in the source's chain`);
    for (const f of chain) assert.ok(existsSync(f), `${f} missing`);
    await vm.stop();
    await vm.start();
    assert.equal((await vm.run("cat /root/f /root/g")).output, "before\nafter");
    await vm.delete();
    assert.deepEqual(await snapList(true), []);
    assert.equal(existsSync(rec.dir), false, `${rec.dir} left on disk`);
    assert.deepEqual(listed(), []);
  });

  it("pack: the snapshot it takes goes with the VM", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    const out = mkdtempSync(join(tmpdir(), "smolvm-prune-pack-"));
    try {
      const r = await cli(["pack", "create", vm.vmId, "--with-memory", "-o", join(out, "vm.smolmachine")]);
      assert.equal(r.code, 0, r.stderr);
      const temp = await snapList(true);
      assert.equal(temp.length, 1);
      assert.equal(temp[0]?.temporary, true);
      assert.deepEqual(memoryless(join(snapshotsDir, temp[0]?.id as string)), ["disk.qcow2"]);
      await vm.delete();
      assert.deepEqual(await snapList(true), []);
      assert.deepEqual(listed(), []);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe("snapshot rm", () => {
  it("names the snapshots and VMs built on it; -r deletes snapshot trees but never a VM", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256, name: "tree" });
    const parent = JSON.parse((await cli(["snapshot", "create", "tree", "--name", "parent", "--json"])).stdout);
    const child = JSON.parse((await cli(["snapshot", "create", "tree", "--name", "child", "--json"])).stdout);
    assert.equal(child.parentId, parent.id);
    const plain = await cli(["snapshot", "rm", "parent"]);
    assert.equal(plain.code, 1);
    assert.match(plain.stderr, new RegExp(`snapshot child \\(${child.id}\\)`));
    assert.match(plain.stderr, /smolvm rm tree/);
    assert.match(plain.stderr, /--recursive/);
    const recursive = await cli(["snapshot", "rm", "-r", "parent"]);
    assert.equal(recursive.code, 1);
    assert.match(recursive.stderr, new RegExp(`VM tree \\(${vm.vmId}\\)`));
    assert.match(recursive.stderr, /never deletes VMs/);
    assert.equal((await snapList(false)).length, 2, "a refused rm deleted something");
    await vm.delete();
    const r = await cli(["snapshot", "rm", "-r", "parent", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { deleted: [child.id, parent.id] });
    assert.deepEqual(await snapList(true), []);
    assert.deepEqual(listed(), []);
  });
});

describe("system df and prune", () => {
  it("df: a new snapshot adds its files' allocated size; the base image is counted as du counts it", async () => {
    const df = async () => {
      const r = await cli(["system", "df", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as DiskUsage;
    };
    const kind = (u: DiskUsage, k: string) => u.kinds.find((x) => x.kind === k) as DiskUsage["kinds"][number];
    const before = await df();
    const snap = JSON.parse((await cli(["snapshot", "create", "keeper", "--name", "kept", "--json"])).stdout);
    const after = await df();
    const dir = join(snapshotsDir, snap.id);
    const size = du(dir);
    assert.ok(size > 1e6, `snapshot of ${size} bytes`);
    assert.equal(kind(after, "snapshots").bytes - kind(before, "snapshots").bytes, size);
    assert.equal(kind(after, "snapshots").count, kind(before, "snapshots").count + 1);
    assert.equal(kind(after, "snapshots").items.find((i) => i.id === snap.id)?.reclaimable, 0);
    const base = kind(after, "images").items.find((i) => i.name === "base");
    assert.equal(base?.bytes, du(join(data, "images", basename(shared.rootfsPath))));
    const layers = kind(after, "caches").items.find((i) => i.id === "overlays");
    assert.equal(layers?.bytes, du(join(data, "overlays")));
    assert.equal(layers?.reclaimable, layers?.bytes);
    const text = await cli(["system", "df", "-v"]);
    assert.match(text.stdout, /^snapshots +\d+ /m);
    assert.match(text.stdout, new RegExp(snap.id));
  });

  it("prune removes an orphaned temporary snapshot and a stale template, keeps all in use; --all too", async () => {
    // a fork whose source was deleted while it ran, killed before it ended: its snapshot is left to prune
    const vm = await SmolVM.create({ memSizeMib: 256 });
    const script = join(state, "crash.mjs");
    const dist = join(repoRoot, "dist", "src");
    writeFileSync(
      script,
      `import { tempSnapshot } from ${JSON.stringify(join(dist, "lifecycle", "temp-snapshot.js"))};
       import { deleteVm } from ${JSON.stringify(join(dist, "lifecycle", "teardown.js"))};
       import { backendFor } from ${JSON.stringify(join(dist, "state", "reconcile.js"))};
       import { StateStore } from ${JSON.stringify(join(dist, "state", "store.js"))};
       const store = StateStore.open();
       const rec = store.getById(${JSON.stringify(vm.vmId)});
       const t = await tempSnapshot(store, backendFor(rec.backend), rec, "running", "forked");
       await deleteVm(store, store.getById(rec.id));
       console.log(t.snap.id);
       process.kill(process.pid, "SIGKILL");`,
    );
    const orphan = await new Promise<string>((resolve) => {
      const child = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "inherit"] });
      let out = "";
      child.stdout.on("data", (d) => {
        out += d;
      });
      child.on("close", () => resolve(out.trim()));
    });
    assert.match(orphan, /^snap-[0-9a-f]{10}$/);
    await cli(["list"]); // reconcile: the memory files the killed process held are gone now, its disk layer is not
    assert.deepEqual(memoryless(join(snapshotsDir, orphan)), ["disk.qcow2"]);
    const orphanBytes = du(join(snapshotsDir, orphan));
    // a template whose image is gone
    const stale = join(data, "warm", "0123456789abcdef");
    mkdirSync(stale, { recursive: true });
    const qcow2Over = (base: string, file: string) =>
      execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", base, file, "64M"]);
    qcow2Over("/nonexistent.ext4", join(stale, "disk.qcow2"));
    writeFileSync(join(stale, "inputs.json"), JSON.stringify({ version: 1 }));
    const inUse = readdirSync(join(data, "warm")).filter((n) => n !== basename(stale) && !n.endsWith(".lock"));
    assert.equal(inUse.length, 1, `templates: ${inUse}`);
    // and one that could still be restored from, but nothing sits on (only --all removes it)
    const unused = join(data, "warm", "fedcba9876543210");
    mkdirSync(unused);
    const rootfs = join(data, "images", basename(shared.rootfsPath));
    qcow2Over(rootfs, join(unused, "disk.qcow2"));
    copyFileSync(join(data, "warm", inUse[0] as string, "inputs.json"), join(unused, "inputs.json"));
    // the empty layers kept to copy for new VMs: one over a base that is gone goes always, the rest with --all
    const overlays = join(data, "overlays");
    const kept = readdirSync(overlays);
    // the bases of some are gone already: the snapshots a fork and a pack took (deleted above)
    const live = kept.filter((n) => existsSync(backingFile(join(overlays, n)) as string));
    const gone = kept.filter((n) => !live.includes(n)).map((n) => join(overlays, n));
    assert.ok(live.length >= 1 && gone.length >= 1, `kept empty layers: ${live.length} live, ${gone.length} stale`);
    const deadLayer = join(overlays, "0123456789abcdef0123456789abcdef.qcow2");
    qcow2Over("/nonexistent.ext4", deadLayer);

    const noTty = await cli(["system", "prune"]);
    assert.equal(noTty.code, 2);
    assert.match(noTty.stderr, /--force/);
    assert.ok(existsSync(stale));

    const r = await cli(["system", "prune", "-f", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const pruned = JSON.parse(r.stdout) as SystemPruneResult;
    assert.deepEqual(pruned.snapshots, [orphan]);
    assert.deepEqual(pruned.templates, [stale]);
    assert.ok(pruned.bytes >= orphanBytes, `reclaimed ${pruned.bytes}, the orphan alone had ${orphanBytes}`);
    assert.equal(existsSync(join(snapshotsDir, orphan)), false);
    assert.equal(existsSync(stale), false);
    assert.ok(existsSync(unused), "a usable template was removed without --all");
    assert.deepEqual(pruned.overlays.sort(), [...gone, deadLayer].sort());
    assert.deepEqual(readdirSync(overlays).sort(), live.sort());

    const all = await cli(["system", "prune", "--all", "-f", "--json"]);
    assert.equal(all.code, 0, all.stderr);
    const prunedAll = JSON.parse(all.stdout) as SystemPruneResult;
    assert.deepEqual([prunedAll.snapshots, prunedAll.templates], [[], [unused]]);
    assert.deepEqual(prunedAll.overlays.sort(), live.map((n) => join(overlays, n)).sort());
    assert.deepEqual(readdirSync(overlays), []);
    assert.ok(existsSync(join(data, "warm", inUse[0] as string)), "the running VM's template was removed");
    assert.deepEqual(
      (await snapList(true)).map((s) => s.name),
      ["kept"],
    );
    assert.equal((await src.run("cat /root/kept")).output, "kept");
    await using restored = await SmolVM.fromSnapshot("kept");
    assert.equal((await restored.run("cat /root/kept")).output, "kept");
    assert.equal(readdirSync(overlays).length, 1, "the restore's empty layer was not made again and kept");
  });
});
