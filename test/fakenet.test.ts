/**
 * The fake host + fake internet harness (test/support/fakenet.ts): everything answers from the host namespace, DNS
 * records change at run time, and destroy() leaves nothing behind, in particular nothing in the root namespace.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { createFakeNet, FAKENET, type FakeNet, fetchIn, lookupIn } from "./support/fakenet.js";

const rootLinks = () => spawnSync("ip", ["-o", "link", "show"], { encoding: "utf8" }).stdout;
const rootRuleset = () => spawnSync("nft", ["list", "ruleset"], { encoding: "utf8" }).stdout;
const netnsList = () => spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout;
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const hasIperf = spawnSync("sh", ["-c", "command -v iperf3"]).status === 0;
const canRun =
  process.getuid?.() === 0 && spawnSync("ip", ["-V"]).status === 0 && spawnSync("dnsmasq", ["-v"]).status === 0;

describe("fakenet", { skip: canRun ? false : "needs root, ip and dnsmasq" }, () => {
  let net: FakeNet;
  let linksBefore = "";
  let rulesetBefore = "";
  let linksDuring = "";

  before(async () => {
    linksBefore = rootLinks();
    rulesetBefore = rootRuleset();
    net = await createFakeNet();
    linksDuring = rootLinks();
  });
  after(() => net?.destroy());

  it("every peer and the metadata address answer from the host ns with their own body", async () => {
    await Promise.all(
      [...net.peers, net.metadata].map(async (ip) => {
        const r = await fetchIn(net, `http://${ip}/`);
        assert.equal(r.status, 200);
        assert.equal(r.body, `peer ${ip}\n`);
      }),
    );
    assert.equal((await fetchIn(net, `http://${net.peers[1]}/whoami`)).body, `${net.hostAddr}\n`);
  });

  it("peers stream /big", async () => {
    const r = await fetchIn(net, `http://${net.peers[2]}/big`);
    assert.equal(r.bytes, 64 * 1024 * 1024);
    assert.equal((await fetchIn(net, `http://${net.peers[0]}/big?bytes=1000`)).bytes, 1000);
  });

  it("the host ns's own servers answer on loopback, veth and LAN addresses", async () => {
    assert.equal((await fetchIn(net, `http://127.0.0.1:${FAKENET.loopbackPort}/`)).body, "host-loopback\n");
    assert.equal((await fetchIn(net, `http://${net.hostAddr}:${FAKENET.vethPort}/`)).body, "host-veth\n");
    assert.equal((await fetchIn(net, `http://${net.lanAddr}:${FAKENET.lanPort}/`)).body, "host-lan\n");
    // The internet reaches the host's veth address, but not its loopback or LAN.
    assert.equal(
      (await fetchIn(net, `http://${net.hostAddr}:${FAKENET.vethPort}/`, { ns: "inet" })).body,
      "host-veth\n",
    );
    await assert.rejects(fetchIn(net, `http://${net.lanAddr}:${FAKENET.lanPort}/`, { ns: "inet", timeoutMs: 500 }));
  });

  it("the host ns resolves through dnsmasq in the internet ns", async () => {
    const r = await net.exec("cat", ["/etc/resolv.conf"]);
    assert.equal(r.stdout, `nameserver ${net.dns}\n`);
    const g = await net.exec("getent", ["hosts", "a.test"]);
    assert.equal(g.code, 0, g.stderr);
    assert.match(g.stdout, /^198\.51\.100\.10\s+a\.test$/m);
    assert.deepEqual(await lookupIn(net, "b.test"), ["198.51.100.20"]);
    assert.deepEqual(await lookupIn(net, "c.test"), ["198.51.100.30"]);
    assert.equal((await net.exec("getent", ["hosts", "nope.test"])).code, 2);
  });

  it("setRecord changes the answer within 3 s", async () => {
    const t0 = Date.now();
    await net.setRecord("a.test", "198.51.100.20");
    assert.ok(Date.now() - t0 < 3000);
    assert.deepEqual(await lookupIn(net, "a.test"), ["198.51.100.20"]);
    await net.setRecord("new.test", ["198.51.100.30", "198.51.100.10"]);
    assert.deepEqual((await lookupIn(net, "new.test")).sort(), ["198.51.100.10", "198.51.100.30"]);
    await net.setRecord("new.test", null);
    await assert.rejects(lookupIn(net, "new.test"), /ENOTFOUND/);
    await net.setRecord("a.test", "198.51.100.10");
    assert.deepEqual(await lookupIn(net, "a.test"), ["198.51.100.10"]);
  });

  it("iperf3 server runs on the first peer", { skip: !hasIperf }, async () => {
    assert.deepEqual(net.iperf, { host: net.peers[0], port: 5201 });
    const r = await net.exec("iperf3", ["-c", net.peers[0]!, "-n", "8M", "-J"], { timeoutMs: 10_000 });
    assert.equal(r.code, 0, r.stderr || r.stdout);
    const bits = JSON.parse(r.stdout).end.sum_received.bits_per_second as number;
    assert.ok(bits > 0);
  });

  it("snapshot is stable and sees foreign state", async () => {
    const a = await net.snapshot();
    const b = await net.snapshot();
    assert.deepEqual(a, b);
    assert.match(a.links, /^eth0: /m);
    assert.match(a.links, /^lan0: /m);
    assert.doesNotMatch(a.links, /^\d/m);
    assert.match(a.routes, /^default via 203\.0\.113\.1 dev eth0/m);
    await net.addForeign();
    const c = await net.snapshot();
    assert.match(c.ruleset, /table inet foreign \{/);
    assert.match(c.ruleset, /type filter hook forward priority filter; policy accept;/);
    assert.match(c.links, /^tap0: /m);
    assert.notDeepEqual(a, c);
  });

  it("destroy() leaves no namespace, process, /etc/netns entry or root-ns device behind", async () => {
    const pids = await net.pids();
    assert.ok(pids.length >= 3, `expected the servers in the namespaces, got ${pids}`);
    const hostNs = net.hostNs;
    const inetNs = net.inetNs;
    assert.match(hostNs, /^smvt-h-[0-9a-f]+$/);
    assert.match(inetNs, /^smvt-i-[0-9a-f]+$/);
    assert.ok(existsSync(`/etc/netns/${hostNs}/resolv.conf`));
    await net.destroy();
    await net.destroy(); // idempotent
    const list = netnsList();
    assert.ok(!list.includes(hostNs) && !list.includes(inetNs), list);
    assert.ok(!existsSync(`/run/netns/${hostNs}`) && !existsSync(`/run/netns/${inetNs}`));
    assert.ok(!existsSync(`/etc/netns/${hostNs}`));
    assert.ok(!existsSync(net.dir));
    assert.deepEqual(
      pids.filter((p) => alive(p)),
      [],
    );
    assert.equal(linksDuring, linksBefore, "the fake net must not create anything in the root namespace");
    assert.equal(rootLinks(), linksBefore);
    assert.equal(rootRuleset(), rulesetBefore);
  });
});
