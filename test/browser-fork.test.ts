/**
 * A VM whose browser runs, forked twice: two independent browsers (each signs in on its own; neither sees the other's
 * cookie, nor does the source).
 */
import assert from "node:assert/strict";
import { before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import type { SmolVM } from "../src/index.js";
import { isolatedState } from "./helpers.js";
import { browserVmWithSite, FORM } from "./support/browser-site.js";

isolatedState();

describe("browser forks", () => {
  const theVm = browserVmWithSite();
  let vm: SmolVM;
  before(() => {
    vm = theVm();
  });

  it("a browser snapshot forked twice gives two independent browsers", async () => {
    await vm.browser.open(FORM);
    const clones = await vm.fork(2);
    try {
      const cookies: string[] = [];
      for (const [i, c] of clones.entries()) {
        const info = await c.browser.start(); // the running browser, as forked
        assert.equal(info.running, true);
        assert.equal(info.fromTemplate, true, "the source's browser, not a new one");
        const browser = await chromium.connectOverCDP(info.cdpUrl as string);
        try {
          const page = browser.contexts()[0]?.pages()[0];
          assert.ok(page);
          page.setDefaultTimeout(120_000);
          await page.goto(FORM);
          await page.fill("#user", `user${i}`);
          await Promise.all([page.waitForURL(/\/me$/), page.click("#go")]);
          const jar = await browser.contexts()[0]?.cookies();
          assert.equal(jar?.length, 1, "only its own sign-in's cookie");
          cookies.push(String(jar?.[0]?.value));
        } finally {
          await browser.close();
        }
      }
      assert.match(cookies[0] as string, /^user0-/);
      assert.match(cookies[1] as string, /^user1-/);
      // the source, signed in as nobody since the fork, is unaffected
      assert.equal((await vm.browser.open(`${FORM.replace("/form", "/me")}`)).title, "Me");
      assert.doesNotMatch((await vm.browser.text()).text, /user[01]-/);
    } finally {
      for (const c of clones) await c.delete();
    }
  });
});
