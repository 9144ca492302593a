/**
 * The Firecracker API client against a fake API server (test/support/fake-firecracker.ts) that validates every body
 * against Firecracker's OpenAPI description and enforces the real VMM's rules about when a request is allowed: a full
 * boot, pause, snapshot and resume; the refusals, surfaced as FirecrackerApiError with Firecracker's fault_message;
 * and answers out of bounds (none, too late, too large, not JSON). No Firecracker runs.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { FirecrackerApiError, FirecrackerClient, MAX_RESPONSE_BYTES } from "../src/backends/firecracker/api.js";
import { SmolVMError } from "../src/errors.js";
import { FakeFirecracker } from "./support/fake-firecracker.js";

const AFTER_START = /not supported after starting the microVM/;
const BEFORE_START = /not supported before starting the microVM/;

let dir: string;
let fake: FakeFirecracker;
let fc: FirecrackerClient;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "smolvm-fc-api-"));
  fake = await FakeFirecracker.start(join(dir, "api.sock"));
  fc = new FirecrackerClient(fake.socketPath, { timeoutMs: 5000 });
});
afterEach(async () => {
  await fake.close();
  rmSync(dir, { recursive: true, force: true });
});

/** The call is refused with a 400 naming the request, carrying a fault_message that matches `fault`. */
async function refused(call: Promise<unknown>, method: string, path: string, fault: RegExp): Promise<void> {
  await assert.rejects(call, (e: unknown) => {
    assert.ok(e instanceof FirecrackerApiError, String(e));
    assert.ok(e instanceof SmolVMError);
    assert.equal(e.status, 400);
    assert.equal(e.method, method);
    assert.equal(e.path, path);
    assert.match(e.faultMessage, fault);
    assert.match(e.message, new RegExp(`${method} ${path}: 400: `));
    return true;
  });
}

async function configure(): Promise<void> {
  await fc.putLogger({ logPath: join(dir, "fc.log") });
  await fc.putMetrics({ metricsPath: join(dir, "metrics") });
  await fc.putBootSource({ kernelPath: "/img/vmlinux", bootArgs: "console=ttyS0", initrdPath: "/img/initrd" });
  await fc.putMachineConfig({ vcpuCount: 2, memSizeMib: 256, trackDirtyPages: true });
  await fc.putDrive("root", { path: join(dir, "disk.raw"), readOnly: false, root: true });
  await fc.putDrive("base", { path: "/img/base.raw", readOnly: true, root: false });
  await fc.putNetworkInterface("eth0", { tap: "smol-t0", mac: "02:fc:00:00:00:01" });
  await fc.putVsock({ guestCid: 3, udsPath: join(dir, "v.sock") });
  await fc.putEntropy();
}

describe("a full sequence", () => {
  it("configure, boot, pause, snapshot (Full then Diff), resume, swap a drive's file", async () => {
    await configure();
    assert.deepEqual(fake.configured, [
      "boot-source",
      "machine-config",
      "drives:root",
      "drives:base",
      "network-interfaces:eth0",
      "vsock",
      "entropy",
    ]);
    assert.equal((await fc.describeInstance()).state, "Not started");
    const mc = await fc.getMachineConfig();
    assert.equal(mc.vcpu_count, 2);
    assert.equal(mc.mem_size_mib, 256);
    assert.equal(mc.track_dirty_pages, true);
    assert.equal(await fc.getVersion(), fake.spec.version);

    await fc.instanceStart();
    assert.equal((await fc.describeInstance()).state, "Running");
    await fc.pauseVm();
    assert.equal((await fc.describeInstance()).state, "Paused");
    await fc.createSnapshot({ type: "Full", statePath: join(dir, "state"), memPath: join(dir, "mem") });
    await fc.createSnapshot({ type: "Diff", statePath: join(dir, "state2"), memPath: join(dir, "mem2") });
    await fc.resumeVm();
    assert.equal((await fc.describeInstance()).state, "Running");
    await fc.patchDrive("root", { path: join(dir, "disk2.raw") });
    await fc.sendCtrlAltDel();

    assert.deepEqual(
      fake.requests.filter((r) => r.status !== 204 && r.status !== 200),
      [],
      "every request was accepted",
    );
  });
});

describe("refusals", () => {
  it("configuration after InstanceStart, and a second InstanceStart", async () => {
    await configure();
    await fc.instanceStart();
    await refused(fc.putBootSource({ kernelPath: "/k", bootArgs: "" }), "PUT", "/boot-source", AFTER_START);
    await refused(fc.putMachineConfig({ vcpuCount: 1, memSizeMib: 128 }), "PUT", "/machine-config", AFTER_START);
    await refused(fc.putDrive("x", { path: "/d", readOnly: true, root: false }), "PUT", "/drives/x", AFTER_START);
    await refused(
      fc.putNetworkInterface("eth1", { tap: "t1", mac: "02:00:00:00:00:02" }),
      "PUT",
      "/network-interfaces/eth1",
      AFTER_START,
    );
    await refused(fc.putVsock({ guestCid: 4, udsPath: "/v" }), "PUT", "/vsock", AFTER_START);
    await refused(fc.putEntropy(), "PUT", "/entropy", AFTER_START);
    await refused(fc.instanceStart(), "PUT", "/actions", AFTER_START);
    await refused(
      fc.loadSnapshot({ statePath: "/s", mem: { backend: "File", path: "/m" }, resume: true }),
      "PUT",
      "/snapshot/load",
      /not allowed/,
    );
  });

  it("running-VM requests before InstanceStart", async () => {
    await refused(fc.pauseVm(), "PATCH", "/vm", BEFORE_START);
    await refused(fc.resumeVm(), "PATCH", "/vm", BEFORE_START);
    await refused(fc.sendCtrlAltDel(), "PUT", "/actions", BEFORE_START);
    await refused(fc.patchDrive("root", { path: "/d" }), "PATCH", "/drives/root", BEFORE_START);
    await refused(
      fc.createSnapshot({ type: "Full", statePath: "/s", memPath: "/m" }),
      "PUT",
      "/snapshot/create",
      BEFORE_START,
    );
    await refused(fc.instanceStart(), "PUT", "/actions", /without kernel configuration/);
  });

  it("a snapshot of a running VM", async () => {
    await configure();
    await fc.instanceStart();
    await refused(
      fc.createSnapshot({ type: "Full", statePath: "/s", memPath: "/m" }),
      "PUT",
      "/snapshot/create",
      /pause/,
    );
    await fc.pauseVm();
    await fc.resumeVm();
    await refused(
      fc.createSnapshot({ type: "Diff", statePath: "/s", memPath: "/m" }),
      "PUT",
      "/snapshot/create",
      /pause/,
    );
  });

  it("a snapshot load once anything but the logger and metrics is configured; metrics twice", async () => {
    await fc.putLogger({ logPath: join(dir, "fc.log") });
    await fc.putMetrics({ metricsPath: join(dir, "metrics") });
    await refused(fc.putMetrics({ metricsPath: join(dir, "metrics") }), "PUT", "/metrics", /Reinitialization/);
    await fc.putMachineConfig({ vcpuCount: 2, memSizeMib: 256 });
    await refused(
      fc.loadSnapshot({ statePath: "/s", mem: { backend: "File", path: "/m" }, resume: true }),
      "PUT",
      "/snapshot/load",
      /not allowed after configuring/,
    );
  });

  it("a body the spec does not allow is refused by the fake, its fault_message surfaced", async () => {
    await refused(
      fc.request("PUT", "/machine-config", { vcpu_count: "2", mem_size_mib: 128 }),
      "PUT",
      "/machine-config",
      /vcpu_count must be integer/,
    );
    await refused(
      fc.request("PUT", "/boot-source", { kernel_image_path: "/k", initrd: "/i" }),
      "PUT",
      "/boot-source",
      /additional properties \(initrd\)/,
    );
    await refused(
      fc.request("PUT", "/drives/a", { drive_id: "b", is_root_device: true, is_read_only: false, path_on_host: "/d" }),
      "PUT",
      "/drives/a",
      /does not match/,
    );
    await refused(
      fc.request("PUT", "/snapshot/restore", {}),
      "PUT",
      "/snapshot/restore",
      /Invalid request method and\/or path/,
    );
  });
});

describe("restoring", () => {
  it("a fresh VMM (logger and metrics only) loads a snapshot, paused or resumed; boot requests are then refused", async () => {
    await fc.putLogger({ logPath: join(dir, "fc.log") });
    await fc.loadSnapshot({
      statePath: "/snap/state",
      mem: { backend: "File", path: "/snap/mem" },
      resume: false,
      networkOverrides: [{ ifaceId: "eth0", tap: "smol-c1" }],
      vsockUdsPath: join(dir, "clone.sock"),
    });
    assert.equal((await fc.describeInstance()).state, "Paused");
    await refused(fc.instanceStart(), "PUT", "/actions", AFTER_START);
    await refused(fc.putBootSource({ kernelPath: "/k", bootArgs: "" }), "PUT", "/boot-source", AFTER_START);
    await fc.resumeVm();
    assert.equal((await fc.describeInstance()).state, "Running");
  });

  it("resume_vm: true leaves it running", async () => {
    await fc.loadSnapshot({ statePath: "/snap/state", mem: { backend: "Uffd", path: "/run/uffd.sock" }, resume: true });
    assert.equal((await fc.describeInstance()).state, "Running");
  });
});

describe("answers out of bounds", () => {
  /** A server on its own socket that answers every request with `handler`. */
  async function rogue(
    handler: Parameters<typeof createServer>[1],
  ): Promise<{ server: Server; client: FirecrackerClient }> {
    const server = createServer(handler);
    const path = join(dir, "rogue.sock");
    await new Promise<void>((r) => server.listen(path, r));
    return { server, client: new FirecrackerClient(path, { timeoutMs: 300 }) };
  }

  async function noAnswer(call: Promise<unknown>, why: RegExp): Promise<void> {
    await assert.rejects(call, (e: unknown) => {
      assert.ok(e instanceof FirecrackerApiError, String(e));
      assert.equal(e.status, null);
      assert.match(e.faultMessage, why);
      return true;
    });
  }

  it("no socket", async () => {
    await noAnswer(new FirecrackerClient(join(dir, "absent.sock")).getVersion(), /ENOENT/);
  });

  it("no answer in time", async () => {
    const { server, client } = await rogue(() => {});
    try {
      const t0 = Date.now();
      await noAnswer(client.instanceStart(), /no answer within 300 ms/);
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("answers too large, declared or streamed", async () => {
    const big = `{"firecracker_version":"${"x".repeat(MAX_RESPONSE_BYTES)}"}`;
    for (const declare of [true, false]) {
      const { server, client } = await rogue((_q, res) => {
        res.writeHead(200, declare ? { "Content-Length": Buffer.byteLength(big) } : {});
        res.end(big);
      });
      try {
        await noAnswer(client.getVersion(), /refused/);
      } finally {
        server.closeAllConnections();
        server.close();
      }
    }
  });

  it("an error answer that is not JSON, or has control characters, is shown printable and bounded", async () => {
    const { server, client } = await rogue((q, res) => {
      if (q.url === "/version") res.writeHead(500).end("internal\x1b[31m trouble");
      else res.writeHead(400).end(JSON.stringify({ fault_message: `bad\n${"y".repeat(5000)}` }));
    });
    try {
      await assert.rejects(
        client.getVersion(),
        (e: FirecrackerApiError) => e.status === 500 && e.faultMessage === "internal?[31m trouble",
      );
      await assert.rejects(client.instanceStart(), (e: FirecrackerApiError) => {
        assert.equal(e.status, 400);
        assert.ok(e.faultMessage.startsWith("bad?yyy") && e.faultMessage.length <= 1003);
        return true;
      });
    } finally {
      server.close();
    }
  });

  it("a success answer of the wrong shape is refused", async () => {
    const { server, client } = await rogue((q, res) => {
      const body =
        q.url === "/"
          ? { app_name: "x", id: "y", state: "Exploded", vmm_version: "1" }
          : q.url === "/version"
            ? []
            : { vcpu_count: -1 };
      res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(body));
    });
    try {
      await noAnswer(client.describeInstance(), /state "Exploded"/);
      await noAnswer(client.getVersion(), /unexpected answer/);
      await noAnswer(client.getMachineConfig(), /vcpu_count -1/);
    } finally {
      server.close();
    }
  });
});
