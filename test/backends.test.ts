/**
 * The same lifecycle, exec, files, snapshot and fork tests on every backend, on real VMs. QEMU runs everywhere;
 * Firecracker runs when this host has a Firecracker binary, a KVM that passes the probe and a kernel it can boot
 * (`smolvm doctor --backend firecracker` says which is missing), and is otherwise skipped with that reason on one line.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";
import type { BackendKind } from "../src/backends/types.js";
import { doctor } from "../src/doctor.js";
import { SmolVM, VMNotFoundError } from "../src/index.js";
import { StateStore } from "../src/state/store.js";
import { processAlive } from "../src/util/proc.js";
import { isolatedState } from "./helpers.js";

isolatedState();

/** Why `backend` cannot run VMs here (null: it can). */
async function unavailable(backend: BackendKind): Promise<string | null> {
  if (backend === "qemu") return null;
  const report = await doctor({ backend });
  const check = report.checks.find((c) => c.name === backend);
  return check?.status === "ok" ? null : (check?.detail ?? "no doctor check");
}

const BACKENDS: BackendKind[] = ["qemu", "firecracker"];
const reasons = new Map<BackendKind, string | null>();
for (const b of BACKENDS) reasons.set(b, await unavailable(b));

for (const backend of BACKENDS) {
  const why = reasons.get(backend) ?? null;
  describe(`backend ${backend}`, { skip: why ? `${backend} cannot run VMs on this host: ${why}` : false }, () => {
    it("lifecycle: create, run, pause and resume, stop and start keep the disk, delete leaves nothing", async () => {
      const vm = await SmolVM.create({ backend, memSizeMib: 256, env: { GREETING: "hello" } });
      try {
        assert.equal(vm.backend, backend);
        const r = await vm.run("echo out; echo err >&2; echo $GREETING; exit 7");
        assert.deepEqual([r.exitCode, r.stdout, r.stderr], [7, "out\nhello\n", "err\n"]);
        await vm.pause();
        assert.equal(vm.status, "paused");
        await vm.resume();
        assert.equal((await vm.run("echo back")).output, "back");
        await vm.run("echo kept > /root/disk.txt; sync");
        await vm.stop();
        assert.equal(vm.status, "stopped");
        await vm.start();
        assert.equal((await vm.run("cat /root/disk.txt")).output, "kept");
      } finally {
        const pid = vm.info().pid;
        const runDir = StateStore.open().get(vm.vmId)?.handle?.runDir;
        await vm.delete();
        assert.equal(processAlive(pid), false, "VMM still running after delete");
        if (runDir) assert.equal(existsSync(runDir), false, "run dir (sockets) left behind");
        await assert.rejects(SmolVM.fromId(vm.vmId), VMNotFoundError);
      }
    });

    it("files: a 1 MiB binary file goes in and comes out byte for byte; folders and listings", async () => {
      await using vm = await SmolVM.create({ backend, memSizeMib: 256 });
      const data = randomBytes(1 << 20);
      await vm.files.write("/root/blob.bin", data);
      const back = await vm.files.read("/root/blob.bin", { encoding: null });
      assert.equal(createHash("sha256").update(back).digest("hex"), createHash("sha256").update(data).digest("hex"));
      assert.equal(
        (await vm.run("sha256sum /root/blob.bin | cut -d' ' -f1")).output,
        createHash("sha256").update(data).digest("hex"),
      );
      await vm.files.mkdir("/root/d/e");
      await vm.files.write("/root/d/e/f.txt", "text");
      assert.deepEqual(
        (await vm.files.list("/root/d/e")).map((e) => e.name),
        ["f.txt"],
      );
    });

    it("snapshot and restore: the clone has the files and the running process; fork gives diverging VMs", async () => {
      await using src = await SmolVM.create({ backend, memSizeMib: 256 });
      await src.run("echo snapshot-time > /root/state.txt");
      const bg = await src.spawn("i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done");
      const snap = await src.snapshot();
      await src.run("echo later > /root/state.txt");
      {
        await using clone = await SmolVM.fromSnapshot(snap.id);
        assert.equal(clone.backend, backend);
        assert.equal((await clone.run("cat /root/state.txt")).output, "snapshot-time");
        assert.equal((await clone.run("hostname")).output, clone.vmId);
        const listed = (await clone.processes.list()).find((p) => p.pid === bg.pid);
        assert.equal(listed?.running, true, "background process not running in the clone");
      }
      assert.equal((await src.run("cat /root/state.txt")).output, "later");
      const [a, b] = await src.fork(2);
      assert.ok(a && b);
      try {
        await a.run("echo only-a > /root/fork.txt");
        assert.equal((await b.run("test -e /root/fork.txt; echo $?")).output, "1");
        const rand = await Promise.all(
          [a, b].map((f) => f.run("head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")),
        );
        assert.notEqual(rand[0]?.output, rand[1]?.output);
      } finally {
        await a.delete();
        await b.delete();
      }
      await bg.kill();
    });
  });
}
