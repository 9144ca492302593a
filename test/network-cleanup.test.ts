/**
 * Networking leaves nothing behind: after deletes (20 VMs in parallel), after `kill -9` of a VMM and reconcile, the
 * fake host's ruleset, links, addresses and routes are exactly as before, and other software's nftables table and
 * TAP device are untouched throughout.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { isolatedState } from "./helpers.js";
import { createFakeNet, FAKENET as F, type FakeNet } from "./support/fakenet.js";
import { createVm, deleteVm, guestGet, smolvm, status } from "./support/netvm.js";

const canRun =
  process.getuid?.() === 0 &&
  ["passt", "dnsmasq", "nft"].every((b) => spawnSync("sh", ["-c", `command -v ${b}`]).status === 0);

/** Live processes (not zombies) whose command line contains `s`. */
function liveMatching(s: string): number[] {
  const r = spawnSync("ps", ["-eo", "pid=,stat=,args="], { encoding: "utf8" });
  return r.stdout
    .split("\n")
    .filter((l) => l.includes(s) && !/^\s*\d+\s+Z/.test(l) && !l.includes("ps -eo"))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

describe("network cleanup", { skip: canRun ? false : "needs root, passt, dnsmasq and nft" }, () => {
  const state = isolatedState();
  let net: FakeNet;
  before(async () => {
    net = await createFakeNet({ iperf: false });
    await net.addForeign();
  });
  after(() => net?.destroy());

  it("20 VMs created and deleted in parallel leave the ruleset and links exactly as before", async () => {
    const before = await net.snapshot();
    assert.match(before.ruleset, /table inet foreign/);
    assert.match(before.links, /tap0/);
    const modes = Array.from({ length: 20 }, (_, i) => (i % 2 ? "tap" : "user"));
    const vms = await Promise.all(modes.map((m) => createVm(net, ["--net", m])));
    const mid = await net.snapshot();
    assert.match(mid.ruleset, /table inet smolvm/);
    assert.equal((mid.links.match(/smvt\d+/g) ?? []).length, 10, mid.links);
    assert.match(mid.ruleset, /table inet foreign/);
    assert.equal(await guestGet(net, vms[1]?.id as string, F.peers[0] as string), `peer ${F.peers[0]}`);
    await Promise.all(vms.map((v) => deleteVm(net, v.id)));
    const afterAll = await net.snapshot();
    assert.equal(afterAll.ruleset, before.ruleset);
    assert.equal(afterAll.links, before.links);
    assert.equal(afterAll.addresses, before.addresses);
    assert.equal(afterAll.routes, before.routes);
    assert.deepEqual(liveMatching("passt"), [], "passt processes left");
  });

  it("after kill -9 of the VMM and reconcile, no TAP, rule, lease, resolver, passt or listener remains", async () => {
    const before = await net.snapshot();
    const tap = await createVm(net, ["--net", "tap"]);
    const user = await createVm(net, ["--net", "user"]);
    const none = await createVm(net, []);
    const exposed: number[] = [];
    for (const v of [tap, user, none]) {
      const r = await smolvm(net, ["port", "expose", v.id, "8000", "--json"]);
      assert.equal(r.code, 0, r.stderr);
      exposed.push((JSON.parse(r.stdout) as { port: number }).port);
    }
    const pids: number[] = [];
    for (const v of [tap, user, none]) pids.push((await status(net, v.id)).pid as number);
    const netOf = (await status(net, tap.id)).network as { tapDevice: string };
    assert.equal(liveMatching("--filter-AAAA").length, 1, "the tap VM's dnsmasq");
    for (const p of pids) process.kill(p, "SIGKILL");
    const r = await smolvm(net, ["list", "--json"]); // list reconciles
    assert.equal(r.code, 0, r.stderr);
    const after = await net.snapshot();
    assert.equal(after.ruleset, before.ruleset);
    assert.equal(after.links, before.links);
    assert.doesNotMatch(after.links, new RegExp(netOf.tapDevice));
    const db = new Database(join(state, "smolvm.db"), { readonly: true });
    for (const t of ["net_leases", "ports", "vm_net"]) {
      assert.equal((db.prepare(`SELECT count(*) AS n FROM ${t}`).get() as { n: number }).n, 0, t);
    }
    db.close();
    for (const port of exposed) {
      const ss = await net.exec("ss", ["-Htln", `sport = :${port}`]);
      assert.equal(ss.stdout.trim(), "", `listener on ${port}`);
    }
    assert.deepEqual(liveMatching("passt -f"), [], "passt");
    assert.deepEqual(liveMatching("--filter-AAAA"), [], "the VMs' dnsmasq");
    for (const v of [tap, user, none]) await deleteVm(net, v.id);
  });
});
