/**
 * Every request the Firecracker API client sends, checked against Firecracker's own OpenAPI description
 * (test/fixtures/firecracker-api.yaml, v1.17): the method and path exist, and the body is valid for that operation's
 * body parameter, both as the spec says and strictly (no field Firecracker does not know). The requests are captured
 * by a server on a Unix socket that answers everything; no Firecracker runs. The validator is shown to reject wrong
 * bodies, so these checks can fail.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FirecrackerClient } from "../src/backends/firecracker/api.js";
import {
  bootSourceBody,
  driveBody,
  machineConfigBody,
  networkInterfaceBody,
  snapshotLoadBody,
  vsockBody,
} from "../src/backends/firecracker/bodies.js";
import { loadSpec } from "./support/firecracker-spec.js";

const spec = loadSpec();

interface Seen {
  method: string;
  path: string;
  body: unknown;
}

/** Answers every request (204, or a minimal valid JSON answer to the GETs) and keeps what it was sent. */
async function recorder(socketPath: string): Promise<{ server: Server; seen: Seen[] }> {
  const seen: Seen[] = [];
  const answers: Record<string, unknown> = {
    "/": { app_name: "Firecracker", id: "anonymous-instance", state: "Not started", vmm_version: spec.version },
    "/version": { firecracker_version: spec.version },
    "/machine-config": { vcpu_count: 2, mem_size_mib: 512, smt: false },
  };
  const server = createServer(async (req, res) => {
    let text = "";
    for await (const c of req) text += c;
    seen.push({ method: req.method ?? "", path: req.url ?? "", body: text ? JSON.parse(text) : undefined });
    const answer = req.method === "GET" ? answers[req.url ?? ""] : undefined;
    if (answer === undefined) res.writeHead(204).end();
    else res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(answer));
  });
  await new Promise<void>((r) => server.listen(socketPath, r));
  return { server, seen };
}

type Call = (c: FirecrackerClient) => Promise<unknown>;

/** Each case: what the client is asked, and the operation it must reach. Every client method appears at least once. */
const CASES: Array<{ name: string; method: string; operationId: string; call: Call }> = [
  {
    name: "boot source with initrd",
    method: "putBootSource",
    operationId: "putGuestBootSource",
    call: (c) =>
      c.putBootSource({ kernelPath: "/img/vmlinux", bootArgs: "console=ttyS0 quiet", initrdPath: "/img/initrd" }),
  },
  {
    name: "boot source, kernel only",
    method: "putBootSource",
    operationId: "putGuestBootSource",
    call: (c) => c.putBootSource({ kernelPath: "/img/vmlinux", bootArgs: "" }),
  },
  {
    name: "machine config",
    method: "putMachineConfig",
    operationId: "putMachineConfiguration",
    call: (c) => c.putMachineConfig({ vcpuCount: 2, memSizeMib: 512 }),
  },
  {
    name: "machine config, dirty pages and 2M huge pages",
    method: "putMachineConfig",
    operationId: "putMachineConfiguration",
    call: (c) => c.putMachineConfig({ vcpuCount: 32, memSizeMib: 16384, trackDirtyPages: true, hugePages: "2M" }),
  },
  {
    name: "root drive, read-write",
    method: "putDrive",
    operationId: "putGuestDriveByID",
    call: (c) => c.putDrive("root", { path: "/vms/a/disk.raw", readOnly: false, root: true }),
  },
  {
    name: "data drive, read-only, with cache and engine",
    method: "putDrive",
    operationId: "putGuestDriveByID",
    call: (c) =>
      c.putDrive("base_1", {
        path: "/img/base.raw",
        readOnly: true,
        root: false,
        cache: "Writeback",
        ioEngine: "Async",
      }),
  },
  {
    name: "drive backing file swap after boot",
    method: "patchDrive",
    operationId: "patchGuestDriveByID",
    call: (c) => c.patchDrive("root", { path: "/vms/a/disk2.raw" }),
  },
  {
    name: "network interface on a TAP",
    method: "putNetworkInterface",
    operationId: "putGuestNetworkInterfaceByID",
    call: (c) => c.putNetworkInterface("eth0", { tap: "smol-ab12", mac: "02:fc:00:00:00:01", mtu: 1500 }),
  },
  {
    name: "vsock",
    method: "putVsock",
    operationId: "putGuestVsock",
    call: (c) => c.putVsock({ guestCid: 3, udsPath: "/run/smolvm/a/v.sock" }),
  },
  { name: "entropy", method: "putEntropy", operationId: "putEntropyDevice", call: (c) => c.putEntropy() },
  {
    name: "logger",
    method: "putLogger",
    operationId: "putLogger",
    call: (c) => c.putLogger({ logPath: "/run/smolvm/a/fc.log", level: "Info" }),
  },
  {
    name: "metrics",
    method: "putMetrics",
    operationId: "putMetrics",
    call: (c) => c.putMetrics({ metricsPath: "/run/smolvm/a/metrics" }),
  },
  { name: "InstanceStart", method: "instanceStart", operationId: "createSyncAction", call: (c) => c.instanceStart() },
  {
    name: "SendCtrlAltDel",
    method: "sendCtrlAltDel",
    operationId: "createSyncAction",
    call: (c) => c.sendCtrlAltDel(),
  },
  { name: "pause", method: "pauseVm", operationId: "patchVm", call: (c) => c.pauseVm() },
  { name: "resume", method: "resumeVm", operationId: "patchVm", call: (c) => c.resumeVm() },
  ...(["Full", "Diff"] as const).map((type) => ({
    name: `snapshot create ${type}`,
    method: "createSnapshot",
    operationId: "createSnapshot",
    call: (c: FirecrackerClient) => c.createSnapshot({ type, statePath: "/snap/state", memPath: "/snap/mem" }),
  })),
  {
    name: "snapshot load, File backend",
    method: "loadSnapshot",
    operationId: "loadSnapshot",
    call: (c) =>
      c.loadSnapshot({ statePath: "/snap/state", mem: { backend: "File", path: "/snap/mem" }, resume: true }),
  },
  {
    name: "snapshot load, Uffd backend, paused",
    method: "loadSnapshot",
    operationId: "loadSnapshot",
    call: (c) =>
      c.loadSnapshot({ statePath: "/snap/state", mem: { backend: "Uffd", path: "/run/uffd.sock" }, resume: false }),
  },
  {
    name: "snapshot load with network and vsock overrides",
    method: "loadSnapshot",
    operationId: "loadSnapshot",
    call: (c) =>
      c.loadSnapshot({
        statePath: "/snap/state",
        mem: { backend: "File", path: "/snap/mem" },
        resume: true,
        trackDirtyPages: true,
        networkOverrides: [{ ifaceId: "eth0", tap: "smol-cd34" }],
        vsockUdsPath: "/run/smolvm/clone/v.sock",
        clockRealtime: true,
      }),
  },
  {
    name: "describe instance",
    method: "describeInstance",
    operationId: "describeInstance",
    call: (c) => c.describeInstance(),
  },
  { name: "version", method: "getVersion", operationId: "getFirecrackerVersion", call: (c) => c.getVersion() },
  {
    name: "machine config query",
    method: "getMachineConfig",
    operationId: "getMachineConfiguration",
    call: (c) => c.getMachineConfig(),
  },
];

describe("Firecracker API contract (spec v1.17)", () => {
  let dir: string;
  let rec: Awaited<ReturnType<typeof recorder>>;
  let client: FirecrackerClient;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "smolvm-fc-contract-"));
    rec = await recorder(join(dir, "api.sock"));
    client = new FirecrackerClient(join(dir, "api.sock"), { timeoutMs: 5000 });
  });
  after(() => {
    rec.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the fixture is Firecracker's swagger 2.0 description, version 1.17", () => {
    assert.equal(spec.raw.swagger, "2.0");
    assert.match(spec.version, /^1\.17\./);
  });

  it("every public client method has a contract case", () => {
    const methods = Object.getOwnPropertyNames(FirecrackerClient.prototype).filter(
      (m) => !["constructor", "request", "put", "patch"].includes(m),
    );
    const covered = new Set(CASES.map((c) => c.method));
    assert.deepEqual(
      methods.filter((m) => !covered.has(m)),
      [],
    );
  });

  for (const c of CASES) {
    it(`${c.name}: the operation exists and the body is valid for it`, async () => {
      const from = rec.seen.length;
      await c.call(client);
      const sent = rec.seen.slice(from);
      assert.equal(sent.length, 1, "one request");
      const { method, path, body } = sent[0] as Seen;
      const op = spec.operation(method, path);
      assert.ok(op, `the spec has ${method} ${path}`);
      assert.equal(op.operationId, c.operationId);
      if (op.bodySchema) assert.notEqual(body, undefined, "a body is sent");
      assert.deepEqual(spec.validate(method, path, body), [], "valid as the spec says");
      assert.deepEqual(spec.validate(method, path, body, { strict: true }), [], "no field Firecracker does not know");
      // each required field of the body's definition is really checked: the body without it is refused
      const ref = op.bodySchema?.$ref;
      if (typeof ref === "string") {
        const def = (spec.raw.definitions as Record<string, { required?: string[] }>)[ref.split("/").pop() as string];
        for (const field of def?.required ?? []) {
          const without = { ...(body as Record<string, unknown>) };
          delete without[field];
          assert.notDeepEqual(spec.validate(method, path, without), [], `${field} is required`);
        }
      }
    });
  }

  it("snapshot load sends mem_backend, never the deprecated mem_file_path (exactly one may be given)", () => {
    const b = snapshotLoadBody({ statePath: "/s", mem: { backend: "File", path: "/m" }, resume: false });
    assert.deepEqual(b.mem_backend, { backend_type: "File", backend_path: "/m" });
    assert.equal("mem_file_path" in b, false);
  });

  it("ids in the URL path are those in the body", () => {
    const drives = rec.seen.filter((s) => s.path.startsWith("/drives/"));
    const nics = rec.seen.filter((s) => s.path.startsWith("/network-interfaces/"));
    assert.ok(drives.length >= 3 && nics.length >= 1);
    for (const d of drives) assert.equal(`/drives/${(d.body as { drive_id: string }).drive_id}`, d.path);
    for (const n of nics) assert.equal(`/network-interfaces/${(n.body as { iface_id: string }).iface_id}`, n.path);
  });
});

describe("the contract check can fail", () => {
  it("refuses wrong types, missing required fields, values out of range and outside enums", () => {
    const mc = machineConfigBody({ vcpuCount: 2, memSizeMib: 512 });
    assert.match(
      spec.validate("PUT", "/machine-config", { ...mc, vcpu_count: "2" }).join(),
      /vcpu_count must be integer/,
    );
    assert.match(spec.validate("PUT", "/machine-config", { ...mc, vcpu_count: 33 }).join(), /vcpu_count must be <= 32/);
    assert.match(spec.validate("PUT", "/boot-source", { boot_args: "x" }).join(), /kernel_image_path/);
    const { is_root_device: _, ...noRoot } = driveBody("root", { path: "/d", readOnly: false, root: true });
    assert.match(spec.validate("PUT", "/drives/root", noRoot).join(), /is_root_device/);
    assert.match(spec.validate("PUT", "/vsock", { guest_cid: 2, uds_path: "/v" }).join(), /guest_cid must be >= 3/);
    assert.match(spec.validate("PATCH", "/vm", { state: "Running" }).join(), /allowed values/);
    assert.match(
      spec
        .validate("PUT", "/snapshot/create", { snapshot_type: "Incremental", snapshot_path: "/s", mem_file_path: "/m" })
        .join(),
      /allowed values/,
    );
    assert.match(
      spec.validate("PUT", "/snapshot/load", { snapshot_path: "/s", mem_backend: { backend_type: "File" } }).join(),
      /backend_path/,
    );
    assert.match(spec.validate("PUT", "/actions", { action_type: "InstanceStop" }).join(), /allowed values/);
    assert.match(spec.validate("PUT", "/network-interfaces/eth0", { iface_id: "eth0" }).join(), /host_dev_name/);
    assert.match(spec.validate("PUT", "/entropy", undefined).join(), /required/);
  });

  it("a misspelt field passes the spec as written but not the strict check (Firecracker refuses unknown fields)", () => {
    const body = { ...bootSourceBody({ kernelPath: "/k", bootArgs: "" }), initrd: "/i" };
    assert.deepEqual(spec.validate("PUT", "/boot-source", body), []);
    assert.match(
      spec.validate("PUT", "/boot-source", body, { strict: true }).join(),
      /additional properties \(initrd\)/,
    );
    const nic = { ...networkInterfaceBody("eth0", { tap: "t0", mac: "02:00:00:00:00:01" }), mac: "x" };
    assert.notDeepEqual(spec.validate("PUT", "/network-interfaces/eth0", nic, { strict: true }), []);
    const load = {
      ...snapshotLoadBody({ statePath: "/s", mem: { backend: "File", path: "/m" }, resume: true }),
      resume: true,
    };
    assert.notDeepEqual(spec.validate("PUT", "/snapshot/load", load, { strict: true }), []);
  });

  it("operations the spec does not have are not found", () => {
    assert.equal(spec.operation("PUT", "/snapshot/restore"), null);
    assert.equal(spec.operation("PATCH", "/boot-source"), null);
    assert.equal(spec.operation("PUT", "/drives"), null);
    assert.equal(spec.operation("PUT", "/drives/a/b"), null);
    assert.equal(spec.operation("PUT", "/vm"), null);
  });

  it("the body builders refuse impossible inputs before any request", () => {
    assert.throws(() => machineConfigBody({ vcpuCount: 0, memSizeMib: 512 }), /vcpu count/);
    assert.throws(() => machineConfigBody({ vcpuCount: 33, memSizeMib: 512 }), /vcpu count/);
    assert.throws(() => machineConfigBody({ vcpuCount: 1.5, memSizeMib: 512 }), /vcpu count/);
    assert.throws(() => machineConfigBody({ vcpuCount: 1, memSizeMib: 511, hugePages: "2M" }), /even/);
    assert.throws(() => driveBody("../x", { path: "/d", readOnly: false, root: true }), /drive id/);
    assert.throws(() => driveBody("root", { path: "sub/disk.raw", readOnly: false, root: true }), /absolute path/);
    assert.throws(() => driveBody("root", { path: "..", readOnly: false, root: true }), /absolute path/);
    assert.equal(driveBody("root", { path: "rootfs", readOnly: false, root: false }).path_on_host, "rootfs");
    assert.throws(() => networkInterfaceBody("eth0", { tap: "t0", mac: "02:00:00:00:00" }), /MAC/);
    assert.throws(() => networkInterfaceBody("eth0", { tap: "a-name-far-too-long", mac: "02:00:00:00:00:01" }), /TAP/);
    assert.throws(() => vsockBody({ guestCid: 2, udsPath: "/v" }), /CID/);
    assert.throws(() => bootSourceBody({ kernelPath: "/k\0", bootArgs: "" }), /absolute path/);
  });
});
