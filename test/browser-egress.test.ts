/**
 * The browser obeys the VM's egress policy, in a fake host namespace whose "internet" is a veth peer in another test
 * namespace (no packet leaves the test's namespaces).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isolatedState, repoRoot } from "./helpers.js";
import { createFakeNet, FAKENET as F, type FakeNet } from "./support/fakenet.js";

const state = isolatedState();

const canNet =
  process.getuid?.() === 0 &&
  ["passt", "dnsmasq", "nft"].every((b) => spawnSync("sh", ["-c", `command -v ${b}`]).status === 0);

describe("browser egress", { skip: canNet ? false : "needs root, passt, dnsmasq and nft" }, () => {
  let net: FakeNet;
  let dir: string;
  before(async () => {
    net = await createFakeNet();
    dir = mkdtempSync(join(tmpdir(), "smolvm-browser-egress-"));
  });
  after(() => {
    net?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('with allowDomains ["a.test"] the browser loads a.test and fails on b.test', async () => {
    // the SDK runs inside the fake host namespace, so the VM's TAP, firewall and exposed ports are there too
    const script = join(dir, "egress.mjs");
    writeFileSync(
      script,
      `import { SmolVM } from ${JSON.stringify(join(repoRoot, "dist/src/index.js"))};
// booted, not restored: a warm template of this network mode would be built for this one test
const vm = await SmolVM.create({ image: "browser", coldBoot: true, network: { mode: "tap", internet: { allowDomains: ["a.test"] } } });
const out = {};
try {
  await vm.browser.start();
  out.a = await vm.browser.open("http://a.test/");
  out.aText = (await vm.browser.text()).text;
  out.b = await vm.browser.open("http://b.test/").then((r) => ({ ok: r }), (e) => ({ error: e.message }));
  out.bIp = await vm.browser.open("http://${F.records["b.test"]}/", { timeoutMs: 15000 }).then((r) => ({ ok: r }), (e) => ({ error: e.message }));
} finally {
  await vm.delete();
}
console.log(JSON.stringify(out));`,
    );
    const r = await net.exec(process.execPath, [script], { timeoutMs: 600_000, env: { SMOLVM_STATE_DIR: state } });
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").at(-1) as string);
    assert.equal(out.a.url, "http://a.test/");
    assert.match(out.aText, new RegExp(`peer ${F.records["a.test"]}`), "a.test's page, through the allowlist");
    assert.match(out.b.error ?? "", /cannot open http:\/\/b\.test\/: net::ERR_NAME_NOT_RESOLVED/);
    assert.ok(out.bIp.error, `b.test's address directly is blocked too: ${JSON.stringify(out.bIp)}`);
  });
});
