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
import { isolatedState, repoRoot } from "./helpers.js";
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

/** Run `body` (an async function body with `SmolVM` in scope) in a Node process inside the fake host. */
let sdkNet: FakeNet;
async function sdk(body: string): Promise<unknown> {
  const script = `const { SmolVM } = await import(${JSON.stringify(join(repoRoot, "dist/src/index.js"))});
const out = await (async () => { ${body} })();
process.stdout.write(JSON.stringify(out ?? null));`;
  const r = await sdkNet.exec(process.execPath, ["--input-type=module", "-e", script], {
    env: { SMOLVM_STATE_DIR: process.env.SMOLVM_STATE_DIR ?? "" },
    timeoutMs: 240_000,
  });
  if (r.code !== 0) throw new Error(`SDK script failed (${r.code}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(r.stdout);
}

describe("network cleanup", { skip: canRun ? false : "needs root, passt, dnsmasq and nft" }, () => {
  const state = isolatedState();
  let net: FakeNet;
  before(async () => {
    net = await createFakeNet({ iperf: false });
    sdkNet = net;
    await net.addForeign();
  });
  after(() => net?.destroy());

  it("20 VMs created and deleted in parallel leave the ruleset and links exactly as before", async () => {
    const before = await net.snapshot();
    assert.match(before.ruleset, /table inet foreign/);
    assert.match(before.links, /tap0/);
    // 4 processes with 5 VMs each, all at once: leases, rules and the table's creation race across processes too
    // (20 CLI processes would spend most of the time starting Node on 2 cores)
    const workers = Array.from({ length: 4 }, (_, w) =>
      sdk(`return Promise.all(${JSON.stringify(["tap", "user", "tap", "user", w % 2 ? "tap" : "user"])}.map(async (network) => {
        const vm = await SmolVM.create({ network, keep: true }); // it outlives this worker process
        vm.close();
        return vm.vmId;
      }));`),
    );
    const ids = (await Promise.all(workers)).flat() as string[];
    assert.equal(new Set(ids).size, 20);
    const mid = await net.snapshot();
    assert.match(mid.ruleset, /table inet smolvm/);
    assert.equal((mid.links.match(/smvt\d+/g) ?? []).length, 10, mid.links);
    assert.match(mid.ruleset, /table inet foreign/);
    const tapVm = ids.find((_, i) => i % 5 === 0) as string;
    assert.equal(await guestGet(net, tapVm, F.peers[0] as string), `peer ${F.peers[0]}`);
    await Promise.all(
      [0, 1, 2, 3].map((w) =>
        sdk(
          `return Promise.all(${JSON.stringify(ids.slice(w * 5, w * 5 + 5))}.map(async (id) => (await SmolVM.fromId(id)).delete()));`,
        ),
      ),
    );
    const afterAll = await net.snapshot();
    assert.equal(afterAll.ruleset, before.ruleset);
    assert.equal(afterAll.links, before.links);
    assert.equal(afterAll.addresses, before.addresses);
    assert.equal(afterAll.routes, before.routes);
    assert.deepEqual(liveMatching("passt -f"), [], "passt processes left");
    assert.deepEqual(liveMatching("--filter-AAAA"), [], "the VMs' dnsmasq");
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
