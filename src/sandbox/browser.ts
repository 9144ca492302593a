/**
 * `vm.browser`: a Chromium running inside the VM, driven over the DevTools protocol from the host. Its DevTools port
 * (and, headful, VNC and noVNC) are exposed on the host's loopback by the port exposure of src/network, so it works
 * with `network: "none"` and a page reaches only what the VM's egress policy allows. In the `browser` image the warm
 * template already runs a headless browser: `start()` then adopts it (new page targets, its own profile on the VM's
 * disk) instead of launching one. docs/BROWSER.md.
 */
import { ConfigError } from "../errors.js";
import type { ExposedPort } from "../network/ports.js";
import {
  type BrowserState,
  CDP_PORT,
  checkArgs,
  checkViewport,
  endReason,
  type GuestOps,
  inspect,
  launch,
  minMemoryMib,
  NOVNC_PORT,
  stopInGuest,
  type Viewport,
  VNC_PORT,
  writeState,
} from "./browser-guest.js";
import {
  attach,
  BrowserError,
  BrowserNotRunningError,
  browserVersion,
  Cdp,
  capture,
  ElementNotFoundError,
  evaluate,
  fitWindow,
  pages,
} from "./cdp.js";
import type { CommandResult } from "./commands.js";

export type { Viewport } from "./browser-guest.js";
export { BrowserError, BrowserNotRunningError, ElementNotFoundError } from "./cdp.js";

export interface BrowserStartOptions {
  /** Default true. Headful renders on a virtual display (Xvfb) that VNC and noVNC show. */
  headless?: boolean;
  /** The page's size in CSS pixels; default 1280x720. */
  viewport?: Viewport;
  /** More Chromium flags (`--lang=de`, `--user-agent=...`); the DevTools port, profile and mode are ours. */
  args?: string[];
  /** How long Chromium may take to open its DevTools port; default 180 s (it is slow under TCG). */
  timeoutMs?: number;
}

export interface BrowserInfo {
  running: boolean;
  headless?: boolean;
  viewport?: Viewport;
  args?: string[];
  /** The launcher's pid in the guest (its process group holds every browser process). */
  pid?: number;
  /** `http://127.0.0.1:PORT`: for Playwright's `connectOverCDP` and Puppeteer's `connect({ browserURL })`. */
  cdpUrl?: string;
  /** The browser's DevTools websocket (`ws://127.0.0.1:PORT/devtools/browser/ID`, Puppeteer's `browserWSEndpoint`). */
  wsEndpoint?: string;
  /** Headful: noVNC in a web browser, connecting on open. */
  vncUrl?: string;
  /** Headful: the RFB (VNC) server for a VNC client, `127.0.0.1:PORT`. */
  vncAddress?: string;
  /** This browser was running in the warm template the VM was restored from (no launch was needed). */
  fromTemplate?: boolean;
  startedAt?: string;
  /** Not running after a start: why it ended (exit status, signal, the guest's OOM killer, its last log line). */
  error?: string;
}

export interface PageInfo {
  url: string;
  title: string;
}

/** What the browser needs of its VM (the facade implements it). */
export interface BrowserHost {
  readonly vmId: string;
  memSizeMib(): number;
  run(cmd: string[], opts: { timeoutMs?: number; stdin?: string }): Promise<CommandResult>;
  startProcess(cmd: string[]): Promise<number>;
  expose(guestPort: number): Promise<ExposedPort>;
  unexpose(guestPort: number): Promise<unknown>;
  ports(): ExposedPort[];
}

const same = (s: BrowserState, headless: boolean, v: Viewport, args: string[]) =>
  s.headless === headless &&
  s.viewport.width === v.width &&
  s.viewport.height === v.height &&
  JSON.stringify(s.args) === JSON.stringify(args);

export class Browser {
  /** start and stop of this handle, one at a time (two concurrent starts would launch two browsers on one profile). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly vm: BrowserHost) {}

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private get guest(): GuestOps {
    return {
      exec: (cmd, opts) => this.vm.run(cmd, opts ?? {}),
      start: (cmd) => this.vm.startProcess(cmd),
    };
  }

  /**
   * Start the browser, or return the one running: with no options named, whatever its options; else when they are
   * the same (a restart when they differ, or when it ended).
   * In a VM of the `browser` image restored from its warm template, the default options adopt the browser that is
   * already running there. Throws ConfigError when the VM has too little memory for the viewport.
   */
  start(opts: BrowserStartOptions = {}): Promise<BrowserInfo> {
    return this.serial(() => this.startNow(opts));
  }

  private async startNow(opts: BrowserStartOptions): Promise<BrowserInfo> {
    const headless = opts.headless ?? true;
    if (typeof headless !== "boolean") throw new ConfigError("headless", "must be true or false");
    const viewport = checkViewport(opts.viewport);
    const args = checkArgs(opts.args);
    const need = minMemoryMib(viewport);
    const have = this.vm.memSizeMib();
    if (have < need) {
      throw new ConfigError(
        "memSizeMib",
        `the VM has ${have} MiB; Chromium with a ${viewport.width}x${viewport.height} viewport needs at least ${need} MiB ` +
          `(create the VM with memSizeMib: ${Math.max(2048, need)}; the browser image's default is 2048)`,
      );
    }
    const found = await inspect(this.guest);
    let state = found.state;
    const live = found.live;
    // with no options named, the running browser is taken as it is (a fork's, a template's, a headful one)
    const named = opts.headless !== undefined || opts.viewport !== undefined || opts.args !== undefined;
    if (state && live.alive && named && !same(state, headless, viewport, args)) {
      await this.stopAll(state);
      state = null;
    }
    if (!state || !live.alive) {
      if (state) await this.stopAll(state); // ended: clean up what remains of it before a new one
      state = await launch(
        this.guest,
        { headless, viewport, args, template: false, vmId: this.vm.vmId },
        have,
        checkTimeout(opts.timeoutMs, 180_000),
      );
    }
    const info = await this.exposeAll(state);
    const cdp = await Cdp.connect(info.wsEndpoint as string);
    try {
      if (state.adoptedBy === null) {
        // a template's browser: this VM's own page, with a target id none of the other clones has
        const old = await pages(cdp);
        const made = await cdp.send("Target.createTarget", { url: "about:blank" });
        for (const p of old) await cdp.send("Target.closeTarget", { targetId: p.targetId }).catch(() => {});
        state = { ...state, adoptedBy: this.vm.vmId };
        await writeState(this.guest, state);
        if (state.headless) await this.fit(cdp, String(made.targetId), state.viewport);
      } else if (state.headless) {
        const p = (await pages(cdp)).at(-1);
        if (p) await this.fit(cdp, p.targetId, state.viewport);
      }
    } finally {
      cdp.close();
    }
    return info;
  }

  private async fit(cdp: Cdp, targetId: string, v: Viewport): Promise<void> {
    const s = await attach(cdp, targetId);
    await fitWindow(cdp, s, targetId, v.width, v.height);
    await cdp.send("Target.detachFromTarget", { sessionId: s }).catch(() => {});
  }

  private portFor(guestPort: number): Promise<ExposedPort> {
    const had = this.vm.ports().find((p) => p.guestPort === guestPort);
    return had ? Promise.resolve(had) : this.vm.expose(guestPort);
  }

  /** Expose DevTools (and VNC, noVNC) on the host and wait until DevTools answers through it. */
  private async exposeAll(s: BrowserState): Promise<BrowserInfo> {
    const cdpPort = await this.portFor(CDP_PORT);
    let ws = "";
    let last: unknown;
    // it listens in the guest already: this waits for the forwarder and a browser busy right after a restore
    const deadline = Date.now() + 60_000;
    while (!ws && Date.now() < deadline) {
      try {
        ws = (await browserVersion(cdpPort.url, Math.max(1000, deadline - Date.now()))).ws;
      } catch (e) {
        last = e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    if (!ws) throw new BrowserError(`DevTools does not answer at ${cdpPort.url}: ${(last as Error)?.message}`);
    const info: BrowserInfo = {
      running: true,
      headless: s.headless,
      viewport: s.viewport,
      args: s.args,
      pid: s.pid,
      cdpUrl: cdpPort.url,
      wsEndpoint: ws,
      fromTemplate: s.template,
      startedAt: s.startedAt,
    };
    if (!s.headless) {
      const vnc = await this.portFor(VNC_PORT);
      const novnc = await this.portFor(NOVNC_PORT);
      info.vncAddress = `${vnc.host}:${vnc.port}`;
      info.vncUrl = `${novnc.url}/vnc.html?autoconnect=1&resize=scale`;
    }
    return info;
  }

  /** Whether a browser runs, its endpoints (when this VM has exposed them: `start()` does), or why it ended. */
  async status(): Promise<BrowserInfo> {
    const { state: s, live: l } = await inspect(this.guest);
    if (!s) return { running: false };
    const base: BrowserInfo = {
      running: l.alive,
      headless: s.headless,
      viewport: s.viewport,
      args: s.args,
      pid: s.pid,
      fromTemplate: s.template,
      startedAt: s.startedAt,
    };
    if (!l.alive) return { ...base, error: endReason(l, this.vm.memSizeMib()) };
    const ports = this.vm.ports();
    const at = (g: number) => ports.find((p) => p.guestPort === g);
    const cdp = at(CDP_PORT);
    if (cdp) {
      base.cdpUrl = cdp.url;
      base.wsEndpoint = await browserVersion(cdp.url).then(
        (v) => v.ws,
        () => undefined,
      );
    }
    const vnc = at(VNC_PORT);
    const novnc = at(NOVNC_PORT);
    if (!s.headless && vnc) base.vncAddress = `${vnc.host}:${vnc.port}`;
    if (!s.headless && novnc) base.vncUrl = `${novnc.url}/vnc.html?autoconnect=1&resize=scale`;
    return base;
  }

  private async stopAll(s: BrowserState | null): Promise<void> {
    await stopInGuest(this.guest, s);
    for (const p of [CDP_PORT, VNC_PORT, NOVNC_PORT]) {
      if (this.vm.ports().some((x) => x.guestPort === p)) await this.vm.unexpose(p);
    }
  }

  /** Stop the browser and everything it started (display, VNC), and close its ports on the host. */
  stop(): Promise<void> {
    return this.serial(async () => this.stopAll((await inspect(this.guest)).state));
  }

  /**
   * A DevTools session on the current page (the newest one; a blank one is opened if none is left). A browser this
   * VM has not taken over yet (a warm template's, a fork's with no port exposed here) is taken over first.
   */
  private async withPage<T>(fn: (cdp: Cdp, session: string, targetId: string) => Promise<T>): Promise<T> {
    const { state, live } = await inspect(this.guest);
    if (!state || !live.alive) {
      throw new BrowserNotRunningError(state ? endReason(live, this.vm.memSizeMib()) : null);
    }
    const exposed = this.vm.ports().find((p) => p.guestPort === CDP_PORT);
    const url = exposed && state.adoptedBy !== null ? exposed.url : ((await this.start()).cdpUrl as string);
    const cdp = await Cdp.connect((await browserVersion(url)).ws);
    try {
      let target = (await pages(cdp)).at(-1)?.targetId;
      if (!target) target = String((await cdp.send("Target.createTarget", { url: "about:blank" })).targetId);
      const session = await attach(cdp, target);
      return await fn(cdp, session, target);
    } finally {
      cdp.close();
    }
  }

  /** A PNG of the current page: the viewport, or the whole page with `fullPage`. */
  async screenshot(opts: { fullPage?: boolean } = {}): Promise<Buffer> {
    return this.withPage((cdp, session) => capture(cdp, session, opts.fullPage === true));
  }

  /** Navigate the current page to `url` and wait for its load event. Navigation errors (DNS, refused) throw. */
  async open(url: string, opts: { timeoutMs?: number } = {}): Promise<PageInfo> {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new ConfigError("url", `must be an absolute URL, got ${JSON.stringify(url)}`);
    }
    if (!["http:", "https:", "about:", "data:", "file:"].includes(parsed.protocol)) {
      throw new ConfigError("url", `must be http(s), file, data or about, got ${parsed.protocol}`);
    }
    const timeoutMs = checkTimeout(opts.timeoutMs, 120_000);
    return this.withPage(async (cdp, session) => {
      await cdp.send("Page.enable", {}, session);
      const loaded = cdp.waitFor("Page.loadEventFired", session, timeoutMs);
      try {
        const r = await cdp.send("Page.navigate", { url }, session, timeoutMs);
        if (typeof r.errorText === "string" && r.errorText) {
          throw new BrowserError(`cannot open ${url}: ${r.errorText.slice(0, 200)}`);
        }
        await loaded.promise;
      } finally {
        loaded.cancel();
      }
      const [href, title] = (await evaluate(cdp, session, "[location.href, document.title]")) as [string, string];
      return { url: String(href).slice(0, 8192), title: String(title).slice(0, 1024) };
    });
  }

  /** The current page's URL, title and visible text (`innerText`, at most `maxChars`, default 100,000). */
  async text(opts: { maxChars?: number } = {}): Promise<PageInfo & { text: string; truncated: boolean }> {
    const max = opts.maxChars ?? 100_000;
    if (!Number.isInteger(max) || max < 1 || max > 10_000_000) {
      throw new ConfigError("maxChars", "must be an integer from 1 to 10000000");
    }
    return this.withPage(async (cdp, session) => {
      const v = (await evaluate(
        cdp,
        session,
        // a page still loading may have its title and no body yet: wait for the parser (at most 5 s)
        `(async () => { for (let i = 0; i < 100 && document.readyState === "loading"; i++) await new Promise((r) => setTimeout(r, 50));
          const t = document.body ? document.body.innerText : ""; return [location.href, document.title, t.slice(0, ${max}), t.length]; })()`,
      )) as [string, string, string, number];
      return {
        url: String(v[0]).slice(0, 8192),
        title: String(v[1]).slice(0, 1024),
        text: String(v[2]).slice(0, max),
        truncated: Number(v[3]) > max,
      };
    });
  }

  /** Click the first element matching a CSS selector (a real mouse click at its centre, scrolled into view). */
  async click(selector: string): Promise<void> {
    const sel = checkSelector(selector);
    await this.withPage(async (cdp, session) => {
      const at = (await evaluate(
        cdp,
        session,
        `(() => { const e = document.querySelector(${JSON.stringify(sel)}); if (!e) return null;
          e.scrollIntoView({ block: "center", inline: "center" }); const r = e.getBoundingClientRect();
          return [r.left + r.width / 2, r.top + r.height / 2]; })()`,
      )) as [number, number] | null;
      if (!at) throw new ElementNotFoundError(sel);
      const [x, y] = at;
      for (const type of ["mousePressed", "mouseReleased"]) {
        await cdp.send("Input.dispatchMouseEvent", { type, x, y, button: "left", clickCount: 1 }, session);
      }
    });
  }

  /** Focus the first element matching a CSS selector and type `text` into it; `submit` presses Enter after. */
  async type(selector: string, text: string, opts: { submit?: boolean } = {}): Promise<void> {
    const sel = checkSelector(selector);
    if (typeof text !== "string" || text.length > 100_000) {
      throw new ConfigError("text", "must be a string of at most 100000 characters");
    }
    await this.withPage(async (cdp, session) => {
      const ok = await evaluate(
        cdp,
        session,
        `(() => { const e = document.querySelector(${JSON.stringify(sel)}); if (!e) return false; e.focus(); return true; })()`,
      );
      if (!ok) throw new ElementNotFoundError(sel);
      await cdp.send("Input.insertText", { text }, session);
      if (opts.submit) {
        for (const type of ["keyDown", "keyUp"]) {
          const key = { type, key: "Enter", code: "Enter", windowsVirtualKeyCode: 13 };
          await cdp.send("Input.dispatchKeyEvent", type === "keyDown" ? { ...key, text: "\r" } : key, session);
        }
      }
    });
  }
}

function checkTimeout(v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 3_600_000) {
    throw new ConfigError("timeoutMs", `must be an integer number of ms from 1 to 3600000, got ${JSON.stringify(v)}`);
  }
  return v;
}

function checkSelector(s: unknown): string {
  if (typeof s !== "string" || !s.trim() || s.length > 4096) {
    throw new ConfigError("selector", "must be a CSS selector of 1 to 4096 characters");
  }
  return s;
}
