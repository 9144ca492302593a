/**
 * Contract: the request sequences the Firecracker backend sends for each thing it does with a VM (boot, pause,
 * resume, snapshot, restore of a clone) against the fake API server, which validates every body against
 * Firecracker's OpenAPI description and enforces its ordering rules. No Firecracker runs; this checks what SmolVM
 * says to one, not what one does.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { FirecrackerClient } from "../src/backends/firecracker/api.js";
import {
  AGENT_VSOCK_PORT,
  bootSequence,
  JAIL_NAMES,
  NIC_ID,
  ROOT_DRIVE,
  restoreSequence,
  snapshotSequence,
} from "../src/backends/firecracker/sequence.js";
import { fcCmdline, fcId, stateFileOf } from "../src/backends/firecracker/vmm.js";
import { FakeFirecracker } from "./support/fake-firecracker.js";

let dir: string;
let fake: FakeFirecracker;
let fc: FirecrackerClient;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "smolvm-fc-seq-"));
  fake = await FakeFirecracker.start(join(dir, "api.sock"));
  fc = new FirecrackerClient(fake.socketPath, { timeoutMs: 5000 });
});
afterEach(async () => {
  await fake.close();
  rmSync(dir, { recursive: true, force: true });
});

const ok = () =>
  assert.deepEqual(
    fake.requests.filter((r) => r.status >= 300),
    [],
    "a request was refused",
  );
const paths = () => fake.requests.map((r) => `${r.method} ${r.path}`);

describe("Firecracker request sequences", () => {
  it("boot: machine, kernel, root drive, vsock, entropy, NIC, then InstanceStart, all valid", async () => {
    await bootSequence(fc, {
      vcpuCount: 2,
      memSizeMib: 512,
      bootArgs: fcCmdline({ hostname: "vm-x", bootArgs: "loglevel=4" }),
      readOnly: false,
      tap: { name: "smvt3", mac: "02:00:00:00:00:02" },
    });
    ok();
    assert.deepEqual(paths(), [
      "PUT /machine-config",
      "PUT /boot-source",
      `PUT /drives/${ROOT_DRIVE}`,
      "PUT /vsock",
      "PUT /entropy",
      `PUT /network-interfaces/${NIC_ID}`,
      "PUT /actions",
    ]);
    assert.equal(fake.state, "Running");
    const boot = fake.requests[1]?.body as { boot_args: string; kernel_image_path: string };
    assert.equal(boot.kernel_image_path, JAIL_NAMES.kernel, "a bare name: resolved in the VM's own folder");
    assert.match(boot.boot_args, /smolvm\.channel=vsock/);
    assert.match(boot.boot_args, /smolvm\.hostname=vm-x/);
    assert.match(boot.boot_args, /loglevel=4$/, "the user's arguments come last, so they win");
    const drive = fake.requests[2]?.body as { path_on_host: string; is_root_device: boolean };
    assert.equal(drive.path_on_host, JAIL_NAMES.disk);
    assert.equal(drive.is_root_device, false, "the initramfs mounts the root, as on QEMU");
  });

  it("without a network there is no NIC request", async () => {
    await bootSequence(fc, { vcpuCount: 1, memSizeMib: 256, bootArgs: "", readOnly: true });
    ok();
    assert.ok(!paths().some((p) => p.includes("network-interfaces")));
  });

  it("snapshot: pause then a full snapshot; resume after; a second one of a paused VM does not pause again", async () => {
    await bootSequence(fc, { vcpuCount: 1, memSizeMib: 256, bootArgs: "", readOnly: false });
    fake.requests.length = 0;
    await snapshotSequence(fc, { statePath: "snap.vmstate", memPath: "snap.mem", running: true });
    await snapshotSequence(fc, { statePath: "snap.vmstate", memPath: "snap.mem", running: false });
    await fc.resumeVm();
    ok();
    assert.deepEqual(paths(), ["PATCH /vm", "PUT /snapshot/create", "PUT /snapshot/create", "PATCH /vm"]);
    assert.equal((fake.requests[1]?.body as { snapshot_type?: string } | undefined)?.snapshot_type, "Full");
    assert.equal(fake.state, "Running");
  });

  it("a snapshot of a running VM without pausing is what the fake (like Firecracker) refuses", async () => {
    await bootSequence(fc, { vcpuCount: 1, memSizeMib: 256, bootArgs: "", readOnly: false });
    await assert.rejects(snapshotSequence(fc, { statePath: "s", memPath: "m", running: false }), /pause it first/);
  });

  it("restore of a clone: a load with its own TAP, vCPUs left stopped for the firewall", async () => {
    await restoreSequence(fc, { statePath: "snap.vmstate", memPath: "snap.mem", tap: "smvt9" });
    ok();
    assert.deepEqual(paths(), ["PUT /snapshot/load"]);
    const load = fake.requests[0]?.body as Record<string, unknown>;
    assert.deepEqual(load.mem_backend, { backend_type: "File", backend_path: "snap.mem" });
    assert.equal(load.resume_vm, false);
    assert.deepEqual(load.network_overrides, [{ iface_id: NIC_ID, host_dev_name: "smvt9" }]);
    assert.equal(load.vsock_override, undefined, "the vsock socket is a bare name: each clone's own folder");
    await fc.resumeVm();
    ok();
  });

  it("a load into a process that was configured is refused, as Firecracker refuses it", async () => {
    await fc.putMachineConfig({ vcpuCount: 1, memSizeMib: 256 });
    await assert.rejects(restoreSequence(fc, { statePath: "s", memPath: "m" }), /not allowed after configuring/);
  });

  it("names: the process id carries the VM id (its liveness marker), files sit beside each other", () => {
    assert.equal(fcId("vm-abc123"), "smolvm-vm-abc123");
    assert.match(fcId("x_y.z"), /^[A-Za-z0-9-]+$/);
    assert.ok(fcId("a".repeat(100)).length <= 64);
    assert.equal(stateFileOf("/s/mem.bin"), "/s/mem.bin.vmstate");
    assert.equal(AGENT_VSOCK_PORT, 1024, "the port guest/agent/init.c listens on");
  });
});
