/**
 * Browser sandboxes on real VMs (the `browser` image): Playwright and Puppeteer drive the VM's Chromium over CDP,
 * pages come from a server inside the guest, screenshots are decoded and checked pixel by pixel, and a pack keeps the
 * running browser. Headful mode, crashes and forks: browser-headful.test.ts; egress: browser-egress.test.ts.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";
import { ConfigError, SmolVM } from "../src/index.js";
import { isolatedState } from "./helpers.js";
import { assertBlueViewport, FORM, startSite, targetIds } from "./support/browser-site.js";
import { decodePng } from "./support/pixels.js";

isolatedState();

describe("browser sandboxes", () => {
  let vm: SmolVM;
  let cdpUrl: string;
  before(async () => {
    vm = await SmolVM.create({ image: "browser" });
  });
  after(async () => {
    await vm?.delete();
  });

  it("a VM too small for Chromium is refused before anything starts, naming memSizeMib", async () => {
    const small = new SmolVM({ image: "browser", memSizeMib: 512 });
    await assert.rejects(small.browser.start(), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.field, "memSizeMib");
      assert.match(e.message, /has 512 MiB; Chromium .* needs at least 1024 MiB/);
      return true;
    });
    assert.equal(small.status, "created", "no VM was started");
    assert.equal(vm.config.memSizeMib, 2048, "the browser image's default memory");
  });

  it("start() adopts the warm template's running browser; each VM gets its own page targets", async () => {
    const info = await vm.browser.start();
    assert.equal(info.running, true);
    assert.equal(info.fromTemplate, true, "restored running, not launched");
    assert.match(info.cdpUrl ?? "", /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(info.wsEndpoint ?? "", /^ws:\/\/127\.0\.0\.1:\d+\/devtools\/browser\/[0-9a-f-]+$/);
    cdpUrl = info.cdpUrl as string;
    const other = await SmolVM.create({ image: "browser" });
    try {
      const info2 = await other.browser.start();
      assert.equal(info2.fromTemplate, true);
      assert.notEqual(info2.cdpUrl, cdpUrl);
      const [a, b] = [await targetIds(cdpUrl), await targetIds(info2.cdpUrl as string)];
      assert.equal(a.length, 1);
      assert.equal(b.length, 1);
      assert.notEqual(a[0], b[0], "two clones of one template do not share a page target id");
    } finally {
      await other.delete();
    }
    assert.deepEqual((await vm.browser.start()).cdpUrl, cdpUrl, "start() again returns the running browser");
    await startSite(vm);
  });

  it("playwright-core drives it over CDP: a page from the guest, title, script, form, screenshot", async () => {
    const browser = await chromium.connectOverCDP(cdpUrl);
    try {
      const ctx = browser.contexts()[0];
      assert.ok(ctx, "the browser's default context");
      const page = ctx.pages()[0] ?? (await ctx.newPage());
      page.setDefaultTimeout(120_000); // TCG, with other VMs busy: Playwright's 30 s is not enough
      await page.goto(FORM);
      assert.equal(await page.title(), "Sign in");
      assert.equal(await page.evaluate(() => 6 * 7), 42);
      await page.fill("#user", "alice");
      await Promise.all([page.waitForURL(/\/me$/), page.click("#go")]);
      assert.match((await page.textContent("#who")) ?? "", /^session=alice-[0-9a-f]{16}$/);
      assertBlueViewport(await page.screenshot(), 1280, 720);
    } finally {
      await browser.close();
    }
    assert.equal((await vm.browser.status()).running, true, "disconnecting leaves the VM's browser running");
  });

  it("puppeteer-core's connect drives it too", async () => {
    const browser = await puppeteer.connect({ browserURL: cdpUrl, defaultViewport: null });
    try {
      const page = (await browser.pages())[0] ?? (await browser.newPage());
      page.setDefaultTimeout(120_000);
      await page.goto(FORM);
      assert.equal(await page.title(), "Sign in");
      assert.equal(await page.evaluate('document.querySelectorAll("input").length'), 1);
      await page.type("#user", "bob");
      await Promise.all([page.waitForNavigation(), page.click("#go")]);
      const who = await page.$eval("#who", (e) => e.textContent);
      assert.match(who ?? "", /session=bob-[0-9a-f]{16}/);
      assertBlueViewport(Buffer.from(await page.screenshot()), 1280, 720);
    } finally {
      await browser.disconnect();
    }
  });

  it("vm.browser alone: open, type, click, text, and a full-page screenshot", async () => {
    assert.deepEqual(await vm.browser.open(FORM), { url: FORM, title: "Sign in" });
    await vm.browser.type("#user", "carol");
    await vm.browser.click("#go");
    let t = await vm.browser.text();
    for (let i = 0; i < 100 && !/session=carol/.test(t.text); i++) {
      await new Promise((r) => setTimeout(r, 200));
      t = await vm.browser.text();
    }
    assert.equal(t.title, "Me");
    assert.match(t.text, /session=carol-[0-9a-f]{16}/, "the click submitted what was typed");
    await assert.rejects(vm.browser.click("#nothing-here"), /no element matches "#nothing-here"/);
    const tall = "data:text/html,<body style='margin:0;background:%233366cc'><div style='height:3000px'>tall</div>";
    await vm.browser.open(tall);
    const full = decodePng(await vm.browser.screenshot({ fullPage: true }));
    // the whole document: the viewport's width less the vertical scrollbar a 3000 px page has
    assert.ok(full.width > 1250 && full.width <= 1280, `full page width ${full.width}`);
    assert.ok(full.height >= 3000, `full page height ${full.height}`);
    assertBlueViewport(await vm.browser.screenshot(), 1280, 720);
  });

  it("a pack with memory restores the running browser with its page", async () => {
    await vm.browser.open(FORM);
    const file = join(mkdtempSync(join(tmpdir(), "smolvm-browser-pack-")), "browser.smolmachine");
    let back: SmolVM | undefined;
    try {
      await vm.pack(file, { withMemory: true });
      back = await SmolVM.fromPack(file, { trust: true });
      const info = await back.browser.start();
      assert.equal(info.headless, true);
      assert.equal(info.fromTemplate, true, "the same browser, not a new one");
      assert.deepEqual(await back.browser.text().then((t) => t.title), "Sign in");
      assertBlueViewport(await back.browser.screenshot(), 1280, 720);
    } finally {
      await back?.delete();
      rmSync(join(file, ".."), { recursive: true, force: true });
    }
  });
});
