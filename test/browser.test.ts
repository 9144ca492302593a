/**
 * Browser sandboxes on real VMs (the `browser` image): Playwright and Puppeteer drive the VM's Chromium over CDP,
 * pages come from a server inside the guest, screenshots are decoded and checked pixel by pixel, VNC is read as a
 * framebuffer, a crash is reported and restarted, forks are independent browsers, and the egress policy holds for
 * the browser (in a fake host namespace whose "internet" is a veth peer: no packet leaves the test's namespaces).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";
import { ConfigError, SmolVM } from "../src/index.js";
import { isolatedState, repoRoot } from "./helpers.js";
import { createFakeNet, FAKENET as F, type FakeNet } from "./support/fakenet.js";
import { decodePng, distinctColours, shareOf, vncFramebuffer } from "./support/pixels.js";

/** A site inside the guest: a sign-in form whose POST sets a random session cookie, and a page showing the cookie. */
const SITE = `
import http.server, secrets, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    def page(self, title, body):
        b = ("<!doctype html><title>%s</title><body style='margin:0;background:#3366cc;color:#fff;font:24px sans-serif'>%s</body>" % (title, body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        if self.path.startswith("/me"):
            self.page("Me", "<p id=who>%s</p>" % self.headers.get("Cookie", ""))
        else:
            self.page("Sign in", "<h1>Sign in</h1><form method=post action=/login><input id=user name=user><button id=go type=submit>Go</button></form>")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        user = urllib.parse.parse_qs(self.rfile.read(n).decode()).get("user", [""])[0]
        self.send_response(303)
        self.send_header("Location", "/me")
        self.send_header("Set-Cookie", "session=%s-%s; Path=/" % (user, secrets.token_hex(8)))
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
`;
const FORM = "http://127.0.0.1:8000/form";
const BLUE = [0x33, 0x66, 0xcc] as const;

async function startSite(vm: SmolVM): Promise<void> {
  await vm.files.write("/srv/site.py", SITE);
  await vm.processes.start(["python3", "/srv/site.py"]);
  const r = await vm.run(
    "for i in $(seq 300); do grep -q ':1F40 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.1; done; exit 1",
  );
  assert.equal(r.exitCode, 0, "the guest's site listens");
}

/** Page target ids as DevTools lists them. */
async function targetIds(cdpUrl: string): Promise<string[]> {
  const list = (await (await fetch(`${cdpUrl}/json/list`)).json()) as { id: string; type: string }[];
  return list.filter((t) => t.type === "page").map((t) => t.id);
}

function assertBlueViewport(png: Buffer, width: number, height: number): void {
  const img = decodePng(png);
  assert.deepEqual([img.width, img.height], [width, height], "a PNG of the viewport's size");
  assert.ok(distinctColours(img) > 2, "not blank: text and background");
  assert.ok(shareOf(img, ...BLUE) > 0.5, "the page's background fills most of it");
}

const state = isolatedState();

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

  it("a browser snapshot forked twice gives two independent browsers", async () => {
    await vm.browser.open(FORM);
    const clones = await vm.fork(2);
    try {
      const cookies: string[] = [];
      for (const [i, c] of clones.entries()) {
        const info = await c.browser.start(); // the running (headful) browser, as forked
        assert.equal(info.headless, false);
        const browser = await chromium.connectOverCDP(info.cdpUrl as string);
        try {
          const page = browser.contexts()[0]?.pages()[0];
          assert.ok(page);
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

  it("a pack with memory restores the running browser with its page", async () => {
    await vm.browser.open(FORM);
    const file = join(mkdtempSync(join(tmpdir(), "smolvm-browser-pack-")), "browser.smolmachine");
    let back: SmolVM | undefined;
    try {
      await vm.pack(file, { withMemory: true });
      back = await SmolVM.fromPack(file, { trust: true });
      const info = await back.browser.start();
      assert.equal(info.headless, false, "the same (headful) browser, not a new one");
      assert.deepEqual(await back.browser.text().then((t) => t.title), "Sign in");
      assertBlueViewport(await back.browser.screenshot(), 1024, 640);
    } finally {
      await back?.delete();
      rmSync(join(file, ".."), { recursive: true, force: true });
    }
  });

  it("stop() ends every browser process and closes its ports", async () => {
    await vm.browser.stop();
    assert.deepEqual(await vm.browser.status(), { running: false });
    assert.deepEqual(vm.ports(), []);
    const ps = await vm.run("ps -e -o comm= 2>/dev/null || ls /proc");
    assert.doesNotMatch(ps.stdout, /chromium|Xvfb|x11vnc|websockify/);
  });
});

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
const vm = await SmolVM.create({ image: "browser", network: { mode: "tap", internet: { allowDomains: ["a.test"] } } });
const out = {};
try {
  await vm.browser.start();
  out.a = await vm.browser.open("http://a.test/");
  out.aText = (await vm.browser.text()).text;
  out.b = await vm.browser.open("http://b.test/").then((r) => ({ ok: r }), (e) => ({ error: e.message }));
  out.bIp = await vm.browser.open("http://${F.records["b.test"]}/", { timeoutMs: 30000 }).then((r) => ({ ok: r }), (e) => ({ error: e.message }));
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
