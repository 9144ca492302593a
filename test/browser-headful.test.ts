/**
 * Headful browsers and crashes on real VMs: a crashed browser is reported and restarted headful, VNC is read as a
 * framebuffer the size of the CDP screenshot, stop() leaves nothing. Forks: browser-fork.test.ts.
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import type { SmolVM } from "../src/index.js";
import { isolatedState } from "./helpers.js";
import { BLUE, browserVmWithSite, FORM } from "./support/browser-site.js";
import { decodePng, shareOf, vncFramebuffer } from "./support/pixels.js";

isolatedState();

describe("headful browsers and crashes", () => {
  const theVm = browserVmWithSite();
  let vm: SmolVM;
  before(() => {
    vm = theVm();
  });

  it("a browser that crashes is reported with its reason, and start() launches it again", async () => {
    await vm.run("kill -9 $(cat /run/smolvm-browser/chromium.pid)");
    let s = await vm.browser.status();
    for (let i = 0; i < 50 && s.running; i++) {
      await new Promise((r) => setTimeout(r, 200));
      s = await vm.browser.status();
    }
    assert.equal(s.running, false);
    assert.match(s.error ?? "", /Chromium was killed by signal 9/);
    await assert.rejects(vm.browser.screenshot(), /the browser is not running \(Chromium was killed by signal 9/);
    // the restart is headful: the display, VNC and noVNC come up with it
    const info = await vm.browser.start({ headless: false, viewport: { width: 1024, height: 640 } });
    assert.equal(info.running, true);
    assert.equal(info.fromTemplate, false);
    assert.match(info.vncAddress ?? "", /^127\.0\.0\.1:\d+$/);
    assert.match(info.vncUrl ?? "", /^http:\/\/127\.0\.0\.1:\d+\/vnc\.html\?/);
  });

  it("headful: VNC speaks RFB and shows the page at the CDP screenshot's size; noVNC loads", async () => {
    const s = await vm.browser.status();
    assert.equal(s.headless, false);
    await vm.browser.open(FORM);
    const png = decodePng(await vm.browser.screenshot());
    assert.deepEqual([png.width, png.height], [1024, 640]);
    const [host, port] = (s.vncAddress as string).split(":");
    const fb = await vncFramebuffer(host as string, Number(port));
    assert.match(fb.version, /^RFB 003\.00\d$/);
    assert.deepEqual([fb.width, fb.height], [png.width, png.height], "VNC shows exactly the page");
    assert.ok(shareOf(fb, ...BLUE) > 0.5, "the VNC framebuffer shows the page, not an empty display");
    const res = await fetch(s.vncUrl as string);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /noVNC/);
  });

  it("stop() ends every browser process and closes its ports", async () => {
    await vm.browser.stop();
    assert.deepEqual(await vm.browser.status(), { running: false });
    assert.deepEqual(vm.ports(), []);
    const ps = await vm.run("ps -e -o comm= 2>/dev/null || ls /proc");
    assert.doesNotMatch(ps.stdout, /chromium|Xvfb|x11vnc|websockify/);
  });
});
