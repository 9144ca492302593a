/**
 * Networking on real VMs, inside a fake host namespace whose "internet" is a veth peer in another test namespace
 * (HTTP peers, dnsmasq, a fake metadata address). Each isolation check has a positive control: the same target
 * answers once a CIDR allows it, so a check cannot pass because networking is simply broken.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { cliPath, isolatedState } from "./helpers.js";
import { createFakeNet, FAKENET as F, type FakeNet } from "./support/fakenet.js";
import { createVm, deleteVm, guestGet, guestSh, smolvm, status } from "./support/netvm.js";

/** dist/ (this file is dist/test/network.test.js) */
const distRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

const canRun =
  process.getuid?.() === 0 &&
  ["passt", "dnsmasq", "nft"].every((b) => spawnSync("sh", ["-c", `command -v ${b}`]).status === 0);

/** An HTTP server on every address of the host namespace (so the gateway address would answer if allowed). */
const ANY_PORT = 8091;
const ANY_SERVER = `require("node:http").createServer((q, s) => s.end("host-any\\n")).listen(${ANY_PORT}, "0.0.0.0", () => console.log("ready"))`;

describe("networking", { skip: canRun ? false : "needs root, passt, dnsmasq and nft" }, () => {
  isolatedState();
  let net: FakeNet;
  before(async () => {
    net = await createFakeNet();
    const srv = net.spawn(process.execPath, ["-e", ANY_SERVER]);
    await new Promise((r) => srv.stdout?.once("data", r));
  });
  after(() => net?.destroy());

  for (const mode of ["tap", "user"] as const) {
    describe(`${mode} mode`, () => {
      let vm: string;
      before(async () => {
        vm = (await createVm(net, ["--net", mode])).id;
      });
      after(() => deleteVm(net, vm));

      it("reaches the fake internet by address and by name", async () => {
        assert.equal(await guestGet(net, vm, F.peers[0] as string), `peer ${F.peers[0]}`);
        assert.equal(await guestGet(net, vm, "a.test"), `peer ${F.records["a.test"]}`);
        const r = await guestSh(net, vm, "cat /etc/resolv.conf");
        assert.match(r.stdout, /^nameserver /m);
      });

      it("was restored with its network configured already (not reconfigured), translated at the host", async () => {
        // the warm template's guest has the configuration every guest has; a reconfiguration would have rewritten
        // /etc/resolv.conf after the VM was created
        const st = await status(net, vm);
        const created = Date.parse(String(st.createdAt)) / 1000;
        const r = await guestSh(net, vm, "stat -c %Y /etc/resolv.conf; ip -4 addr show eth0; ip neigh");
        const [mtime] = r.stdout.trim().split("\n");
        assert.ok(Number(mtime) < created - 1, `resolv.conf written at ${mtime}, VM created at ${created}`);
        assert.match(r.stdout, /inet 10\.0\.2\.15\/24/);
        assert.match(r.stdout, /10\.0\.2\.2 dev eth0 lladdr 02:53:4d:00:00:01 .*PERMANENT/);
        const n = st.network as { guestIp: string; tapDevice?: string; interfaceIp?: string };
        if (mode === "tap") {
          // the host and the network see the VM at its leased address only
          assert.match(n.guestIp, /^172\.16\./);
          assert.equal(n.interfaceIp, "10.0.2.15");
          const neigh = await net.exec("ip", ["neigh", "show", "dev", n.tapDevice as string]);
          assert.match(
            neigh.stdout,
            new RegExp(`^${n.guestIp.replace(/\./g, "\\.")} lladdr 02:53:4d:00:00:02 PERMANENT`, "m"),
          );
          assert.equal(await guestGet(net, vm, F.peers[0] as string, 80, "/whoami"), F.hostAddr);
        }
      });

      it("reaches nothing of the host: its addresses, the gateway, its LAN, the metadata address", async () => {
        const st = await status(net, vm);
        const n = st.network as { gatewayIp: string; guestIp: string; mode: string; macAddress: string };
        assert.equal(n.mode, mode);
        const targets: [string, number][] = [
          [n.gatewayIp, ANY_PORT], // the gateway address: in user mode slirp would map it to the host's 127.0.0.1
          [n.gatewayIp, F.loopbackPort],
          [F.hostAddr, ANY_PORT],
          [F.hostAddr, F.vethPort],
          [F.lanAddr, F.lanPort],
          [F.metadata, 80],
        ];
        for (const [host, port] of targets) assert.equal(await guestGet(net, vm, host, port), "", `${host}:${port}`);
      });

      it("an explicit CIDR opens the host address it names (positive control)", async () => {
        const r = await smolvm(net, ["network", "set", vm, "--allow-cidr", `${F.hostAddr}/32`, F.peers[1] as string]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await guestGet(net, vm, F.hostAddr, F.vethPort), "host-veth");
        assert.equal(await guestGet(net, vm, F.peers[1] as string), `peer ${F.peers[1]}`);
        assert.equal(await guestGet(net, vm, F.peers[0] as string), "", "a peer outside the allowlist");
        assert.equal(await guestGet(net, vm, F.lanAddr, F.lanPort), "", "still not the LAN");
      });

      it("off reaches nothing, not even DNS; open again restores it", async () => {
        assert.equal((await smolvm(net, ["network", "set", vm, "--internet", "off"])).code, 0);
        assert.equal(await guestGet(net, vm, F.peers[0] as string), "");
        const r = await guestSh(net, vm, "nslookup a.test 2>&1; echo rc=$?; cat /etc/resolv.conf");
        assert.doesNotMatch(r.stdout, /198\.51\.100\.10/);
        assert.doesNotMatch(r.stdout, /^nameserver/m, "no resolver: a lookup fails at once");
        assert.equal((await smolvm(net, ["network", "set", vm, "--internet", "open"])).code, 0);
        assert.equal(await guestGet(net, vm, "a.test"), `peer ${F.records["a.test"]}`);
      });
    });
  }

  it("allowDomains allows a.test (even after its address changes) and blocks b.test", async () => {
    const { id } = await createVm(net, ["--net", "tap", "--allow-domain", "a.test"]);
    try {
      assert.equal(await guestGet(net, id, "a.test"), `peer ${F.records["a.test"]}`);
      assert.equal(await guestGet(net, id, "b.test"), "", "a name outside the allowlist");
      assert.equal(await guestGet(net, id, F.records["b.test"] as string), "", "its address, directly");
      assert.equal(await guestGet(net, id, F.peers[2] as string), "", "a.test's next address, before the change");
      await net.setRecord("a.test", F.peers[2] as string);
      assert.equal(await guestGet(net, id, "a.test"), `peer ${F.peers[2]}`);
    } finally {
      await net.setRecord("a.test", F.records["a.test"] as string);
      await deleteVm(net, id);
    }
  });

  it("user mode on a host where passt cannot start fails with passt's own words, leaving nothing", async () => {
    // a namespace of this test's own with no uplink: passt refuses to run without an external interface
    const ns = `smolvm-nouplink-${process.pid}`;
    const running = () =>
      spawnSync("ps", ["-eo", "stat=,comm="], { encoding: "utf8" })
        .stdout.split("\n")
        .filter((l) => /^[^Z]\S*\s+(passt|qemu-system)/.test(l.trim())).length;
    const before = running();
    assert.equal(spawnSync("ip", ["netns", "add", ns]).status, 0);
    try {
      const r = spawnSync("ip", ["netns", "exec", ns, process.execPath, cliPath, "create", "--net", "user"], {
        encoding: "utf8",
        timeout: 120_000,
      });
      assert.notEqual(r.status, 0, r.stdout);
      assert.match(r.stderr, /passt for VM \S+ exited: .*interface/i);
      assert.equal(running(), before, "no passt or QEMU left running");
    } finally {
      spawnSync("ip", ["netns", "del", ns]);
    }
  });

  it("user mode refuses a domain allowlist with a clear error", async () => {
    const r = await smolvm(net, ["create", "--net", "user", "--allow-domain", "a.test"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /allowDomains: needs mode "tap"/);
  });

  it("an exposed guest port answers on 127.0.0.1 only, outlives the CLI that exposed it, and closes (mode none)", async () => {
    const { id } = await createVm(net, []);
    try {
      await guestSh(net, id, "mkdir -p /www && echo exposed > /www/index.html && httpd -p 8000 -h /www");
      const r = await smolvm(net, ["port", "expose", id, "8000", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      const p = JSON.parse(r.stdout) as { host: string; port: number; url: string; guestPort: number };
      assert.equal(p.host, "127.0.0.1");
      assert.equal(p.url, `http://127.0.0.1:${p.port}`);
      // the CLI that exposed it has exited: the listener is the forward daemon's
      assert.equal((await net.fetch(`${p.url}/index.html`)).body, "exposed\n");
      await assert.rejects(net.fetch(`http://${F.hostAddr}:${p.port}/index.html`, { timeoutMs: 3000 }));
      const forwarders = spawnSync("ps", ["-eo", "uid=,args="], { encoding: "utf8" })
        .stdout.split("\n")
        .filter((l) => l.includes(" forward --agent "));
      assert.equal(forwarders.length, 1, forwarders.join("\n"));
      assert.notEqual(Number(forwarders[0]?.trim().split(/\s+/)[0]), 0, "the forwarder dropped root");
      const list = await smolvm(net, ["port", "list", id, "--json"]);
      assert.deepEqual(JSON.parse(list.stdout), [p]);
      assert.equal((await smolvm(net, ["port", "close", id, "8000"])).code, 0);
      await assert.rejects(net.fetch(`${p.url}/index.html`, { timeoutMs: 3000 }));
    } finally {
      await deleteVm(net, id);
    }
  });

  it("a pack with memory from a networked VM restores with a network of its own", async () => {
    const { id } = await createVm(net, ["--net", "tap"]);
    const file = join(mkdtempSync(join(tmpdir(), "smolvm-netpack-")), "vm.smolmachine");
    try {
      await guestSh(net, id, "echo packed > /dev/shm/mark"); // tmpfs: only a memory restore keeps it
      const p = await smolvm(net, ["pack", "create", id, "-o", file, "--with-memory"]);
      assert.equal(p.code, 0, p.stderr);
      const r = await smolvm(net, ["pack", "run", file, "--net", "user", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      const clone = (JSON.parse(r.stdout) as { vmId: string }).vmId;
      try {
        assert.equal((await guestSh(net, clone, "cat /dev/shm/mark")).stdout.trim(), "packed", "its memory came along");
        assert.equal(((await status(net, clone)).network as { mode: string }).mode, "user");
        assert.equal(await guestGet(net, clone, F.peers[0] as string), `peer ${F.peers[0]}`);
      } finally {
        await deleteVm(net, clone);
      }
    } finally {
      rmSync(join(file, ".."), { recursive: true, force: true });
      await deleteVm(net, id);
    }
  });

  it("two VMs cannot reach each other", async () => {
    const a = await createVm(net, ["--net", "tap"]);
    const b = await createVm(net, ["--net", "tap"]);
    try {
      const aIp = ((await status(net, a.id)).network as { guestIp: string }).guestIp;
      const bIp = ((await status(net, b.id)).network as { guestIp: string }).guestIp;
      assert.notEqual(aIp, bIp);
      await guestSh(net, a.id, "mkdir -p /www && echo vm-a > /www/index.html && httpd -p 8080 -h /www");
      assert.equal(await guestGet(net, a.id, "127.0.0.1", 8080, "/index.html"), "vm-a", "a serves (positive control)");
      assert.equal(await guestGet(net, b.id, aIp, 8080, "/index.html"), "", "b reaches a");
      assert.equal(await guestGet(net, a.id, bIp, 22), "", "a reaches b");
    } finally {
      await deleteVm(net, a.id);
      await deleteVm(net, b.id);
    }
  });

  it("deleting one VM leaves every other VM's rules: it stays online and confined", async () => {
    const a = await createVm(net, ["--net", "tap"]);
    const b = await createVm(net, ["--net", "tap"]);
    try {
      await deleteVm(net, a.id);
      const t = await net.exec("nft", ["list", "table", "inet", "smolvm"]);
      assert.equal(t.code, 0, "the table went with the first VM's rules");
      assert.equal(await guestGet(net, b.id, F.peers[0] as string, 80, "/whoami"), F.hostAddr, "b is offline");
      assert.equal(await guestGet(net, b.id, F.lanAddr, F.lanPort), "", "b reaches the host's LAN");
      assert.equal(await guestGet(net, b.id, F.metadata, 80), "", "b reaches the metadata address");
    } finally {
      await deleteVm(net, a.id);
      await deleteVm(net, b.id);
    }
  });

  it("pool VMs in tap mode: each handed out with its own address and TAP, both online", async () => {
    // the pool lives in one process: a script in the fake host fills it, takes two (kept, so they outlive it)
    const dir = mkdtempSync(join(tmpdir(), "smolvm-pooltap-"));
    const script = join(dir, "pool.mjs");
    writeFileSync(
      script,
      `import { SmolVM } from ${JSON.stringify(pathToFileURL(join(distRoot, "src", "index.js")).href)};
const shape = { memSizeMib: 256, vcpuCount: 1, network: { mode: "tap" } };
SmolVM.configurePool({ size: 2 });
await (await SmolVM.create(shape)).delete(); // a miss: the pool fills behind it
for (const t = Date.now(); SmolVM.poolStats().ready < 2; await new Promise((r) => setTimeout(r, 200)))
  if (Date.now() - t > 180000) throw new Error("the pool did not fill");
const a = await SmolVM.create({ ...shape, keep: true });
const b = await SmolVM.create({ ...shape, keep: true });
const stats = SmolVM.poolStats();
await SmolVM.closePool();
console.log(JSON.stringify({ stats, ids: [a.vmId, b.vmId] }));
`,
    );
    let ids: string[] = [];
    try {
      const r = await net.exec(process.execPath, [script], {
        timeoutMs: 300_000,
        env: { SMOLVM_STATE_DIR: process.env.SMOLVM_STATE_DIR ?? "" },
      });
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim().split("\n").pop() as string) as {
        stats: { hits: number };
        ids: string[];
      };
      ids = out.ids;
      assert.equal(out.stats.hits, 2, "both came from the pool");
      const nets = await Promise.all(ids.map(async (id) => (await status(net, id)).network as Record<string, string>));
      assert.notEqual(nets[0]?.guestIp, nets[1]?.guestIp);
      assert.notEqual(nets[0]?.tapDevice, nets[1]?.tapDevice);
      const got = await Promise.all(ids.map((id) => guestGet(net, id, F.peers[0] as string, 80, "/whoami")));
      assert.deepEqual(got, [F.hostAddr, F.hostAddr]);
    } finally {
      for (const id of ids) await deleteVm(net, id);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("two forks of one snapshot each get their own address and both fetch at once", async () => {
    const { id } = await createVm(net, ["--net", "tap"]);
    const clones: string[] = [];
    try {
      await guestSh(net, id, "echo parent > /root/mark");
      const snap = await smolvm(net, ["snapshot", "create", id, "--json"]);
      assert.equal(snap.code, 0, snap.stderr);
      const snapId = (JSON.parse(snap.stdout) as { id: string }).id;
      for (let i = 0; i < 2; i++) clones.push((await createVm(net, ["--snapshot", snapId])).id);
      const nets = await Promise.all(clones.map(async (c) => (await status(net, c)).network as Record<string, string>));
      // each clone has its own leased address and TAP; inside, both have the address every guest has (translated
      // at their TAPs), so neither was reconfigured after the restore
      assert.notEqual(nets[0]?.guestIp, nets[1]?.guestIp);
      assert.notEqual(nets[0]?.tapDevice, nets[1]?.tapDevice);
      assert.deepEqual(
        nets.map((n) => n.interfaceIp),
        ["10.0.2.15", "10.0.2.15"],
      );
      const got = await Promise.all(clones.map((c) => guestGet(net, c, F.peers[0] as string, 80, "/whoami")));
      // the peer sees the fake host's address (NAT), once per clone
      assert.deepEqual(got, [F.hostAddr, F.hostAddr]);
      const macs = await Promise.all(clones.map((c) => guestSh(net, c, "cat /sys/class/net/eth0/address")));
      assert.deepEqual(
        macs.map((m) => m.stdout.trim()),
        nets.map((n) => n.macAddress),
      );
    } finally {
      for (const c of clones) await deleteVm(net, c);
      await deleteVm(net, id);
    }
  });
});
