/**
 * What the Firecracker backend does on the host before any VMM runs, with real files and a real TAP (in a network
 * namespace of the test's own): disks as Firecracker reads them (raw copies, qcow2 layers converted, shared images
 * as they are), the TAP it attaches to by name, and the kernel command line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { bootTimerAddress, FirecrackerBackend, fcCmdline } from "../src/backends/firecracker/vmm.js";
import { ConfigError } from "../src/errors.js";
import { repoRoot } from "./helpers.js";

const dir = mkdtempSync(join(tmpdir(), "smolvm-fc-host-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const fc = new FirecrackerBackend();

/** A 64 MiB raw image with data at a few places and holes between. */
function rawImage(path: string): Buffer {
  writeFileSync(path, "");
  spawnSync("truncate", ["-s", "64M", path]);
  const marks = Buffer.from("smolvm-firecracker-disk");
  for (const at of [0, 5 << 20, 63 << 20]) {
    spawnSync("dd", [`of=${path}`, "bs=1", `seek=${at}`, "conv=notrunc", "status=none"], { input: marks });
  }
  return readFileSync(path);
}

describe("Firecracker disks", () => {
  it("an isolated VM gets a sparse raw copy of a raw image; the image is never written", async () => {
    const base = join(dir, "base.raw");
    const content = rawImage(base);
    const vmDir = join(dir, "vm1");
    const d = await fc.prepareDisk({ base, baseFormat: "raw", mode: "isolated", vmDir });
    assert.deepEqual(d, { path: join(vmDir, "disk.raw"), format: "raw" });
    assert.ok(readFileSync(d.path).equals(content), "the copy differs");
    assert.ok(statSync(d.path).blocks * 512 < 4 << 20, "the copy is not sparse");
    writeFileSync(d.path, "changed", { flag: "r+" });
    assert.ok(readFileSync(base).equals(content), "writing the copy changed the image");
    // a stopped VM keeps its disk
    assert.deepEqual(await fc.prepareDisk({ base, baseFormat: "raw", mode: "isolated", vmDir }), d);
    assert.equal(readFileSync(d.path).subarray(0, 7).toString(), "changed");
  });

  it("a qcow2 layer (a QEMU snapshot's, a pack's) is converted to raw with the same content", async () => {
    const base = join(dir, "base2.raw");
    const content = rawImage(base);
    const layer = join(dir, "layer.qcow2");
    const mk = spawnSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, layer]);
    assert.equal(mk.status, 0, mk.stderr?.toString());
    const d = await fc.prepareDisk({ base: layer, baseFormat: "qcow2", mode: "isolated", vmDir: join(dir, "vm2") });
    assert.equal(d.format, "raw");
    assert.ok(readFileSync(d.path).equals(content), "the converted disk differs");
    assert.equal(existsSync(`${d.path}.tmp-${process.pid}`), false);
  });

  it("shared: the raw image itself; a qcow2 layer is refused, naming diskMode", async () => {
    const base = join(dir, "base.raw");
    assert.deepEqual(await fc.prepareDisk({ base, baseFormat: "raw", mode: "shared", vmDir: join(dir, "vm3") }), {
      path: base,
      format: "raw",
    });
    await assert.rejects(
      fc.prepareDisk({ base: join(dir, "layer.qcow2"), baseFormat: "qcow2", mode: "shared", vmDir: join(dir, "vm4") }),
      (e: unknown) => e instanceof ConfigError && e.field === "diskMode",
    );
  });
});

describe("Firecracker TAP", { skip: process.getuid?.() === 0 ? false : "needs root" }, () => {
  it("is created persistent and set up like the launcher's, then removed (in a network namespace of our own)", () => {
    const tapJs = join(repoRoot, "dist", "src", "backends", "firecracker", "tap.js");
    const script = `
      import { createPersistentTap, removeTap } from ${JSON.stringify(tapJs)};
      import { execFileSync } from "node:child_process";
      import { readFileSync } from "node:fs";
      const ip = (...a) => execFileSync("ip", a, { encoding: "utf8" });
      await createPersistentTap("smvt-test0", { uid: 4242, gid: 4242 }, {
        mac: "02:00:00:00:00:01", address: "10.0.0.1/30", neighbor: { ip: "10.0.0.2", mac: "02:00:00:00:00:02" },
      });
      const out = {
        link: JSON.parse(ip("-j", "link", "show", "smvt-test0"))[0],
        addr: JSON.parse(ip("-j", "addr", "show", "smvt-test0"))[0].addr_info.map((a) => a.local + "/" + a.prefixlen),
        neigh: ip("neigh", "show", "dev", "smvt-test0").trim(),
        owner: readFileSync("/sys/class/net/smvt-test0/owner", "utf8").trim(),
        ipv6: readFileSync("/proc/sys/net/ipv6/conf/smvt-test0/disable_ipv6", "utf8").trim(),
      };
      let dup = "";
      try { await createPersistentTap("smvt-test0", null, null); } catch (e) { dup = e.message; }
      await removeTap("smvt-test0");
      out.dup = dup;
      out.gone = !ip("link", "show").includes("smvt-test0");
      console.log(JSON.stringify(out));
    `;
    // its own sysfs too: /sys/class/net must show the namespace's devices
    const r = spawnSync(
      "unshare",
      [
        ...["--net", "--mount", "sh", "-c", 'mount -t sysfs sysfs /sys && exec "$0" --input-type=module -e "$1"'],
        ...[process.execPath, script],
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}");
    assert.equal(out.link.address, "02:00:00:00:00:01");
    assert.deepEqual(out.addr, ["10.0.0.1/30"]);
    assert.match(out.neigh, /^10\.0\.0\.2 lladdr 02:00:00:00:00:02 PERMANENT/);
    assert.equal(out.owner, "4242", "Firecracker under the jailer attaches as the VM's uid");
    assert.equal(out.ipv6, "1");
    assert.match(out.dup, /already exists/);
    assert.equal(out.gone, true);
  });
});

describe("Firecracker kernel command line", () => {
  it("its console, reboot by the i8042, no PCI, the vsock channel, the hostname, then the user's arguments", () => {
    const line = fcCmdline({ hostname: "vm-1", bootArgs: "quiet=0 loglevel=7" });
    for (const part of ["console=ttyS0", "reboot=k", "pci=off", "smolvm.channel=vsock", "smolvm.hostname=vm-1"]) {
      assert.ok(line.split(" ").includes(part), `${part} missing from ${line}`);
    }
    assert.ok(line.endsWith("quiet=0 loglevel=7"), "the user's arguments must come last, to win");
    assert.ok(!line.includes("i8042.nopnp"), "it breaks SendCtrlAltDel on ACPI guests (Firecracker 1.12 dropped it)");
    assert.ok(!line.includes("boot_timer"));
  });

  it("the boot timer: its MMIO address by Firecracker version, passed to the guest only when asked", () => {
    assert.equal(bootTimerAddress("1.12.1"), "0xd0000000");
    assert.equal(bootTimerAddress("1.13.0"), "0xc0000000");
    assert.equal(bootTimerAddress("1.16.1"), "0xc0000000");
    assert.ok(fcCmdline({ hostname: "h", bootArgs: "" }, "0xc0000000").includes("smolvm.boot_timer=0xc0000000"));
  });
});
