/** Real microVMs (QEMU; TCG on hosts without a usable KVM). */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { findKernel } from "../src/images/kernel.js";
import { defaultRootfsPath } from "../src/images/store.js";
import { CommandTimeoutError, SmolVM, VMDiedError, VMNotFoundError, VMStateError } from "../src/index.js";
import { reconcile } from "../src/state/reconcile.js";
import { StateStore } from "../src/state/store.js";
import { processAlive, waitFor } from "../src/util/proc.js";
import { cli, isolatedState } from "./helpers.js";

const stateDir = isolatedState();

describe("one VM, many commands", () => {
  let vm: SmolVM;
  before(async () => {
    vm = await SmolVM.create({ memSizeMib: 256, env: { GREETING: "hello" } });
  });
  after(async () => {
    await vm.delete();
  });

  it("runs in the guest kernel, not the host's", async () => {
    const r = await vm.run("uname -r");
    assert.equal(r.output, findKernel()?.version);
    assert.equal(vm.status, "running");
    assert.equal(vm.backend, "qemu");
  });

  it("reports stdout, stderr and exit codes", async () => {
    const r = await vm.run("echo out; echo err >&2; exit 7");
    assert.equal(r.exitCode, 7);
    assert.equal(r.ok, false);
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    assert.equal((await vm.run("true")).ok, true);
    assert.equal((await vm.run(["sh", "-c", "exit 3"])).exitCode, 3);
    const killed = await vm.run("kill -TERM $$");
    assert.equal(killed.signal, 15);
    assert.equal(killed.exitCode, 128 + 15);
  });

  it("applies VM env, per-command env and cwd", async () => {
    const r = await vm.run("echo $GREETING $WHO; pwd", { env: { WHO: "world" }, cwd: "/tmp" });
    assert.equal(r.stdout, "hello world\n/tmp\n");
  });

  it("delivers 1 MiB of output intact", async () => {
    const r = await vm.run("seq 1 200000 | head -c 1048576");
    const expected = Array.from({ length: 200000 }, (_, i) => `${i + 1}\n`)
      .join("")
      .slice(0, 1 << 20);
    assert.equal(r.stdout.length, 1 << 20);
    assert.equal(
      createHash("sha256").update(r.stdout).digest("hex"),
      createHash("sha256").update(expected).digest("hex"),
    );
  });

  it("runs 10 commands at once", async () => {
    await vm.run("rm -rf /tmp/barrier; mkdir /tmp/barrier");
    // each command ends only after all 10 have started
    const script = (i: number) =>
      `touch /tmp/barrier/${i}; n=0; while [ $(ls /tmp/barrier | wc -l) -lt 10 ]; do sleep 0.05; n=$((n+1)); [ $n -gt 600 ] && exit 9; done; echo ${i}`;
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => vm.run(script(i))));
    assert.deepEqual(
      rs.map((r) => r.output),
      Array.from({ length: 10 }, (_, i) => String(i)),
    );
  });

  it("kills a command over its timeout, with its children, and keeps partial output", async () => {
    await assert.rejects(vm.run("echo started; sleep 300 & sleep 301", { timeoutMs: 1500 }), (e: unknown) => {
      assert.ok(e instanceof CommandTimeoutError);
      assert.equal(e.stdout, "started\n");
      return true;
    });
    const ps = await vm.run("ps -o args | grep -c '^sleep 30[01]' || true");
    assert.equal(ps.output, "0");
  });

  it("pauses and resumes", async () => {
    await vm.pause();
    assert.equal(vm.status, "paused");
    await vm.resume();
    assert.equal(vm.status, "running");
    assert.equal((await vm.run("echo back")).output, "back");
  });
});

describe("lifecycle", () => {
  it("keeps two VMs isolated and never touches the base image", async () => {
    const base = defaultRootfsPath();
    const before = createHash("sha256").update(readFileSync(base)).digest("hex");
    await using a = await SmolVM.create({ memSizeMib: 256 });
    await using b = await SmolVM.create({ memSizeMib: 256 });
    assert.equal((await a.run("echo secret > /root/only-in-a && sync")).exitCode, 0);
    assert.equal((await a.run("cat /root/only-in-a")).output, "secret");
    assert.equal((await b.run("test -e /root/only-in-a")).exitCode, 1);
    assert.notEqual(a.vmId, b.vmId);
    assert.equal(createHash("sha256").update(readFileSync(base)).digest("hex"), before);
  });

  it("stop keeps the disk; start boots it again", async () => {
    await using vm = await SmolVM.create({ memSizeMib: 256 });
    await vm.run("echo kept > /root/file");
    await vm.stop();
    assert.equal(vm.status, "stopped");
    await assert.rejects(vm.run("true"), VMStateError);
    await vm.start();
    assert.equal((await vm.run("cat /root/file")).output, "kept");
  });

  it("stopping a paused VM (from another object) still shuts the guest down cleanly: no lost writes", async () => {
    await using vm = await SmolVM.create({ memSizeMib: 256 });
    await vm.run("echo unsynced > /root/p"); // still in the guest's page cache
    await vm.pause();
    const other = await SmolVM.fromId(vm.vmId);
    await other.stop();
    await vm.start();
    assert.equal((await vm.run("cat /root/p")).output, "unsynced");
  });

  it("delete leaves no process, socket or disk file; fromId then throws VMNotFoundError", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    const rec = StateStore.open().get(vm.vmId);
    assert.ok(rec?.handle);
    const { pid, proxyPid, runDir, agentSocket } = rec.handle;
    assert.ok(processAlive(pid) && processAlive(proxyPid));
    assert.ok(existsSync(agentSocket) && existsSync(rec.vmDir));
    await vm.delete();
    assert.equal(processAlive(pid), false, "QEMU still running");
    assert.equal(processAlive(proxyPid), false, "proxy still running");
    assert.equal(existsSync(runDir), false, "sockets left behind");
    assert.equal(existsSync(rec.vmDir), false, "disk layer left behind");
    await assert.rejects(SmolVM.fromId(vm.vmId), VMNotFoundError);
  });

  it("reconcile marks a VM whose VMM was killed as crashed, says why, and frees its resources", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    const h = StateStore.open().get(vm.vmId)?.handle;
    assert.ok(h);
    process.kill(h.pid, "SIGKILL");
    assert.ok(await waitFor(() => !processAlive(h.pid), 3000));
    const fixed = await reconcile(StateStore.open());
    assert.deepEqual(fixed, [vm.vmId]);
    const rec = StateStore.open().get(vm.vmId);
    assert.equal(rec?.status, "crashed");
    assert.match(rec?.error ?? "", /the VMM was killed by SIGKILL/);
    // (a proxy that is exiting by itself has no command line left, and may still be finishing its exit)
    assert.ok(await waitFor(() => !processAlive(h.proxyPid), 3000), "the proxy still runs");
    assert.equal(existsSync(h.runDir), false);
    await vm.delete();
  });

  it("a command pending when the VM dies rejects promptly", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256 });
    const h = StateStore.open().get(vm.vmId)?.handle;
    assert.ok(h);
    const pending = vm.run("sleep 300");
    await new Promise((r) => setTimeout(r, 300));
    process.kill(h.pid, "SIGKILL");
    await assert.rejects(pending, VMDiedError);
    await vm.delete();
  });
});

describe("CLI", () => {
  it("run prints the guest's uname and exits with the command's code", async () => {
    const r = await cli(["run", "--mem", "256", "--", "uname", "-a"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^Linux \\S+ ${findKernel()?.version} `));
    const bad = await cli(["run", "--mem", "256", "--", "echo oops >&2; exit 42"]);
    assert.equal(bad.code, 42);
    assert.equal(bad.stderr.trim().split("\n").pop(), "oops");
    assert.deepEqual(await SmolVM.list(), [], "run left a VM behind");
  });

  it("create in one process, exec from another, then from this one", async () => {
    const created = await cli(["create", "--name", "shared-box", "--mem", "256", "--json"]);
    assert.equal(created.code, 0, created.stderr);
    const info = JSON.parse(created.stdout) as { vmId: string; status: string };
    assert.equal(info.status, "running");
    const ex = await cli(["exec", "shared-box", "--", "echo from-cli > /root/x; cat /root/x"]);
    assert.equal(ex.stdout, "from-cli\n");
    const vm = await SmolVM.fromId(info.vmId);
    assert.equal((await vm.run("cat /root/x")).output, "from-cli");
    // this process holds a connection while another process execs: both are served
    const ex2 = await cli(["exec", info.vmId, "--json", "--", "exit 5"]);
    assert.equal(ex2.code, 5);
    assert.equal(JSON.parse(ex2.stdout).exitCode, 5);
    const list = JSON.parse((await cli(["list", "--json"])).stdout) as { vmId: string }[];
    assert.ok(list.some((v) => v.vmId === info.vmId));
    const refused = await cli(["rm", info.vmId]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /--force/);
    assert.equal((await cli(["rm", "--force", info.vmId])).code, 0);
    await assert.rejects(vm.run("true"));
    const status = await cli(["status", info.vmId]);
    assert.equal(status.code, 1);
    assert.match(status.stderr, /VM not found/);
  });

  it("two processes creating VMs at the same time both succeed", async () => {
    const rs = await Promise.all([cli(["create", "--mem", "256"]), cli(["create", "--mem", "256"])]);
    const ids = rs.map((r) => {
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.trim();
    });
    assert.notEqual(ids[0], ids[1]);
    const rm = await cli(["rm", "--force", ...ids]);
    assert.equal(rm.code, 0, rm.stderr);
    assert.deepEqual(await SmolVM.list(), []);
  });

  it("bad flags are named as the flag", async () => {
    const r = await cli(["run", "--mem", "64", "--", "true"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--mem: must be a whole number of MiB from 128 to 16384/);
  });

  it("doctor --json reports KVM and the accelerator in use, without hanging", async () => {
    const r = await cli(["doctor", "--json"], { timeoutMs: 15_000 });
    const rep = JSON.parse(r.stdout) as { accel: string; kvm: { present: boolean; usable: boolean }; ok: boolean };
    assert.equal(rep.ok, true, r.stdout);
    assert.equal(rep.kvm.present, existsSync("/dev/kvm"));
    assert.equal(rep.accel, process.env.SMOLVM_ACCEL ?? (rep.kvm.usable ? "kvm" : "tcg"));
  });

  it("logs shows the guest console", async () => {
    const id = (await cli(["create", "--mem", "256", "--cold-boot"])).stdout.trim();
    const logs = await cli(["logs", id]);
    assert.match(logs.stdout, /smolvm-agent: \[[\d.]+\] serving on virtio port agent/);
    assert.equal((await cli(["rm", "-f", id])).code, 0);
    assert.equal(existsSync(join(stateDir, "vms", id)), false);
  });
});
