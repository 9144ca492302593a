/**
 * A small Chrome DevTools Protocol client over the exposed DevTools port: what `vm.browser` itself needs (screenshots,
 * the viewport, opening a page, reading its text, clicking and typing) without Playwright or Puppeteer. The browser is
 * the guest's, so it is hostile: messages are size-bounded, every call has a deadline, and what comes back is checked
 * before use.
 */
import WebSocket from "ws";
import { SmolVMError } from "../errors.js";

/** A CDP call failed: the browser's error, or the page's (a navigation error, a missing element). */
export class BrowserError extends SmolVMError {}

/** A page action was asked of a VM whose browser is not running (never started, stopped, or ended: see `reason`). */
export class BrowserNotRunningError extends BrowserError {
  constructor(readonly reason: string | null) {
    super(`the browser is not running${reason ? ` (${reason})` : ""}: call vm.browser.start()`);
  }
}

/** No element of the page matches the selector given to click or type. */
export class ElementNotFoundError extends BrowserError {
  readonly field = "selector";
  constructor(readonly selector: string) {
    super(`no element matches ${JSON.stringify(selector)}`);
  }
}

/** The largest message taken from the browser: a full-page PNG of a long page fits. */
const MAX_MESSAGE = 64 << 20;
const CALL_TIMEOUT_MS = 120_000;

interface Pending {
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

type Listener = (params: Record<string, unknown>, sessionId?: string) => void;

/** `GET /json/version` of the DevTools endpoint (through the exposed port): the browser's websocket and version. */
export async function browserVersion(httpUrl: string, timeoutMs = 10_000): Promise<{ ws: string; product: string }> {
  let j: { webSocketDebuggerUrl?: unknown; Browser?: unknown };
  try {
    const res = await fetch(`${httpUrl}/json/version`, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    if (!res.ok || text.length > 65536) throw new Error(`it answered ${res.status} on /json/version`);
    j = JSON.parse(text);
  } catch (e) {
    throw new BrowserError(`DevTools at ${httpUrl} does not answer: ${(e as Error).message}`);
  }
  const ws = typeof j.webSocketDebuggerUrl === "string" ? j.webSocketDebuggerUrl : "";
  // the browser builds this URL from our Host header: only its path is taken, the address is ours
  const m = /^ws:\/\/[^/]+(\/devtools\/browser\/[A-Za-z0-9-]{1,64})$/.exec(ws);
  if (!m) throw new BrowserError("DevTools gave no browser websocket URL");
  const base = new URL(httpUrl);
  return { ws: `ws://${base.host}${m[1]}`, product: typeof j.Browser === "string" ? j.Browser.slice(0, 100) : "" };
}

export class Cdp {
  private next = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private closedWith: Error | null = null;

  private constructor(private readonly ws: WebSocket) {
    ws.on("message", (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on("close", () => this.fail(new BrowserError("the DevTools connection closed")));
    ws.on("error", (e) => this.fail(new BrowserError(`DevTools connection: ${e.message}`)));
  }

  static async connect(wsUrl: string, timeoutMs = 30_000): Promise<Cdp> {
    const ws = new WebSocket(wsUrl, { maxPayload: MAX_MESSAGE, handshakeTimeout: timeoutMs, perMessageDeflate: false });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", (e) => reject(new BrowserError(`cannot connect to DevTools at ${wsUrl}: ${e.message}`)));
    });
    return new Cdp(ws);
  }

  private fail(e: Error): void {
    if (this.closedWith) return;
    this.closedWith = e;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.pending.clear();
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    let m: { id?: unknown; method?: unknown; params?: unknown; result?: unknown; error?: unknown; sessionId?: unknown };
    try {
      if (isBinary) throw new Error("binary");
      m = JSON.parse(data.toString("utf8"));
    } catch {
      this.fail(new BrowserError("DevTools sent a message that is not JSON"));
      this.ws.terminate();
      return;
    }
    if (typeof m.id === "number") {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.error && typeof m.error === "object") {
        const msg = String((m.error as { message?: unknown }).message ?? "error").slice(0, 1000);
        p.reject(new BrowserError(msg));
      } else p.resolve(m.result && typeof m.result === "object" ? (m.result as Record<string, unknown>) : {});
      return;
    }
    if (typeof m.method === "string") {
      const sid = typeof m.sessionId === "string" ? m.sessionId : undefined;
      for (const l of this.listeners.get(m.method) ?? []) {
        l(m.params && typeof m.params === "object" ? (m.params as Record<string, unknown>) : {}, sid);
      }
    }
  }

  send(
    method: string,
    params: Record<string, unknown> = {},
    sessionId?: string,
    timeoutMs = CALL_TIMEOUT_MS,
  ): Promise<Record<string, unknown>> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BrowserError(`${method}: no answer from the browser within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  /** Resolve with the first `method` event (of `sessionId`) that `match` accepts, or reject after `timeoutMs`. */
  waitFor(
    method: string,
    sessionId: string | undefined,
    timeoutMs: number,
    match: (p: Record<string, unknown>) => boolean = () => true,
  ): { promise: Promise<Record<string, unknown>>; cancel: () => void } {
    let cancel = () => {};
    const promise = new Promise<Record<string, unknown>>((resolve, reject) => {
      const set = this.listeners.get(method) ?? new Set<Listener>();
      this.listeners.set(method, set);
      const l: Listener = (p, sid) => {
        if (sid !== sessionId || !match(p)) return;
        done();
        resolve(p);
      };
      const timer = setTimeout(() => {
        done();
        reject(new BrowserError(`${method}: did not happen within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        set.delete(l);
      };
      cancel = done;
      set.add(l);
    });
    return { promise, cancel };
  }

  close(): void {
    this.fail(new BrowserError("closed"));
    this.ws.close();
  }
}

export interface PageTarget {
  targetId: string;
  url: string;
  title: string;
}

/** The page targets, most recently created last (CDP's own order is not specified; ours is stable). */
export async function pages(cdp: Cdp): Promise<PageTarget[]> {
  const r = await cdp.send("Target.getTargets");
  const infos = Array.isArray(r.targetInfos) ? (r.targetInfos as Record<string, unknown>[]) : [];
  return infos
    .filter((t) => t.type === "page" && typeof t.targetId === "string")
    .slice(0, 1000)
    .map((t) => ({
      targetId: String(t.targetId).slice(0, 64),
      url: String(t.url ?? "").slice(0, 8192),
      title: String(t.title ?? "").slice(0, 1024),
    }));
}

/** A flat session on one page target. */
export async function attach(cdp: Cdp, targetId: string): Promise<string> {
  const r = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
  if (typeof r.sessionId !== "string") throw new BrowserError("the browser gave no session for the page");
  return r.sessionId;
}

/** Evaluate `expression` in the page and return its value (by value: JSON-able results only). */
export async function evaluate(cdp: Cdp, session: string, expression: string, timeoutMs = 60_000): Promise<unknown> {
  const r = await cdp.send(
    "Runtime.evaluate",
    { expression, returnByValue: true, awaitPromise: true, timeout: timeoutMs },
    session,
    timeoutMs + 5_000,
  );
  const ex = r.exceptionDetails as { exception?: { description?: unknown }; text?: unknown } | undefined;
  if (ex) {
    const why = String(ex.exception?.description ?? ex.text ?? "exception").split("\n")[0] ?? "exception";
    throw new BrowserError(why.slice(0, 1000));
  }
  return (r.result as { value?: unknown } | undefined)?.value;
}

/**
 * Make the page's viewport `width` x `height` CSS pixels by sizing its window (what every client then sees). Uses
 * layout metrics, not script: a page that has run no script yet need not start its JavaScript engine for this.
 */
export async function fitWindow(cdp: Cdp, session: string, targetId: string, w: number, h: number): Promise<void> {
  const m = await cdp.send("Page.getLayoutMetrics", {}, session);
  const vp = (m.cssLayoutViewport ?? m.layoutViewport) as { clientWidth?: unknown; clientHeight?: unknown } | undefined;
  const iw = Number(vp?.clientWidth);
  const ih = Number(vp?.clientHeight);
  if (!(iw > 0 && ih > 0 && iw < 100_000 && ih < 100_000) || (iw === w && ih === h)) return;
  const win = await cdp.send("Browser.getWindowForTarget", { targetId });
  const b = win.bounds as { width?: unknown; height?: unknown } | undefined;
  const ow = Number(b?.width);
  const oh = Number(b?.height);
  if (!(ow > 0 && oh > 0)) return;
  await cdp.send("Browser.setWindowBounds", {
    windowId: win.windowId,
    bounds: { width: Math.max(w, Math.round(ow - iw + w)), height: Math.max(h, Math.round(oh - ih + h)) },
  });
}

/** A PNG of the page: its viewport, or all of it. */
export async function capture(cdp: Cdp, session: string, fullPage: boolean): Promise<Buffer> {
  const params: Record<string, unknown> = { format: "png" };
  if (fullPage) {
    const m = await cdp.send("Page.getLayoutMetrics", {}, session);
    const size = (m.cssContentSize ?? m.contentSize) as { width?: number; height?: number } | undefined;
    const width = Math.min(16384, Math.ceil(Number(size?.width) || 0));
    const height = Math.min(16384, Math.ceil(Number(size?.height) || 0));
    if (width > 0 && height > 0) {
      params.clip = { x: 0, y: 0, width, height, scale: 1 };
      params.captureBeyondViewport = true;
    }
  }
  const r = await cdp.send("Page.captureScreenshot", params, session);
  if (typeof r.data !== "string") throw new BrowserError("the browser returned no screenshot");
  const png = Buffer.from(r.data, "base64");
  if (png.length < 8 || png.readUInt32BE(0) !== 0x89504e47) throw new BrowserError("the screenshot is not a PNG");
  return png;
}
