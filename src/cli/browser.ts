/** browser start|status|stop|screenshot|open|text|click|type|vnc: the Chromium of a VM of the `browser` image. */
import { writeFileSync } from "node:fs";
import type { Command } from "commander";
import { ConfigError, SmolVMError } from "../errors.js";
import { type BrowserInfo, BrowserNotRunningError, type BrowserStartOptions } from "../sandbox/browser.js";
import { ensureBrowser } from "../sandbox/browser-ready.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { int, parseDuration, printJson, progress } from "./output.js";

/** SDK fields (as ConfigError names them) as this command group's flags name them. */
const FLAG_OF: Record<string, string> = {
  headless: "--headful",
  viewport: "--viewport",
  "viewport.width": "--viewport",
  "viewport.height": "--viewport",
  args: "--arg",
  timeoutMs: "--timeout",
  maxChars: "--max-chars",
  url: "URL",
  selector: "SELECTOR",
  text: "TEXT",
};

/**
 * Errors as the CLI's user sees them: a ConfigError names the flag (not the SDK's field), and "the browser is not
 * running" says which command starts it.
 */
function cliError(e: unknown, id: string): unknown {
  if (e instanceof ConfigError) {
    const flag = FLAG_OF[e.field] ?? (/^args\[\d+\]$/.test(e.field) ? "--arg" : undefined);
    if (!flag) return e;
    const reason = e.message.startsWith(`${e.field}: `) ? e.message.slice(e.field.length + 2) : e.message;
    return new ConfigError(flag, e.field.startsWith("viewport.") ? `${e.field.slice(9)} ${reason}` : reason);
  }
  if (e instanceof BrowserNotRunningError) {
    const why = `the browser is not running${e.reason ? ` (${e.reason})` : ""}`;
    return new SmolVMError(`${why}: start it: smolvm browser start ${id}`);
  }
  return e;
}

/** Open the VM, run `fn` on it, close it; errors are given the CLI's flag names. */
async function withVm<T>(id: string, fn: (vm: SmolVM) => Promise<T>): Promise<T> {
  const vm = await SmolVM.fromId(id);
  try {
    return await fn(vm);
  } catch (e) {
    throw cliError(e, vm.vmId);
  } finally {
    vm.close();
  }
}

/** `1280x720` */
export function parseViewport(v: string): { width: number; height: number } {
  const m = /^([0-9]{1,5})x([0-9]{1,5})$/.exec(v);
  if (!m)
    throw new ConfigError("--viewport", `must be WIDTHxHEIGHT in CSS pixels, e.g. 1280x720, got ${JSON.stringify(v)}`);
  return { width: Number(m[1]), height: Number(m[2]) };
}

const collect = (v: string, prev: string[]) => [...prev, v];

interface StartFlags {
  headful?: boolean;
  headless?: boolean;
  viewport?: string;
  arg: string[];
  timeout?: string;
  json?: boolean;
}

/** The fields of a BrowserInfo worth a line each, in this order. */
const INFO_LINES: (keyof BrowserInfo)[] = [
  "running",
  "headless",
  "viewport",
  "cdpUrl",
  "wsEndpoint",
  "vncUrl",
  "vncAddress",
  "pid",
  "fromTemplate",
  "startedAt",
  "args",
  "error",
];

function printInfo(i: BrowserInfo): void {
  const show = (k: keyof BrowserInfo, v: unknown): string | null => {
    if (v === undefined || (Array.isArray(v) && v.length === 0)) return null;
    if (k === "viewport") return `${(v as { width: number }).width}x${(v as { height: number }).height}`;
    if (typeof v === "boolean") return v ? "yes" : "no";
    return Array.isArray(v) ? v.join(" ") : String(v);
  };
  const lines = INFO_LINES.map((k) => [k, show(k, i[k])] as const).filter(([, v]) => v !== null);
  process.stdout.write(lines.map(([k, v]) => `${k.padEnd(12)} ${v}\n`).join(""));
}

/** Width and height from a PNG's IHDR chunk. */
export function pngSize(png: Buffer): { width: number; height: number } {
  return png.length >= 24 ? { width: png.readUInt32BE(16), height: png.readUInt32BE(20) } : { width: 0, height: 0 };
}

export function registerBrowser(program: Command): void {
  const b = program
    .command("browser")
    .description("the Chromium inside a VM of the browser image (smolvm create --image browser)");

  b.command("start <id>")
    .description(
      "start the browser (or keep the one running with the same options; other options restart it) and print " +
        "its DevTools URL (Playwright connectOverCDP, Puppeteer browserURL) and, headful, its VNC addresses",
    )
    .option("--headful", "render on a virtual display that VNC and noVNC show")
    .option("--headless", "no display (the default)")
    .option("--viewport <WxH>", "the page's size in CSS pixels (default 1280x720)")
    .option("--arg <flag>", "another Chromium flag, e.g. --arg=--lang=de (repeatable)", collect, [] as string[])
    .option("--timeout <duration>", "how long Chromium may take to start (default 3m)")
    .option(
      "--json",
      "print JSON: {running, headless, viewport, args, pid, cdpUrl, wsEndpoint, vncUrl, vncAddress, ...}",
    )
    .action(async (id: string, o: StartFlags) => {
      if (o.headful && o.headless) throw new ConfigError("--headful", "cannot be combined with --headless");
      // only what was given is passed on: the SDK then decides what a browser already running may keep
      const opts: BrowserStartOptions = { timeoutMs: parseDuration("--timeout", o.timeout) };
      if (o.headful || o.headless) opts.headless = o.headless === true;
      if (o.viewport !== undefined) opts.viewport = parseViewport(o.viewport);
      if (o.arg.length) opts.args = o.arg;
      const info = await withVm(id, (vm) => vm.browser.start(opts));
      if (o.json) printJson(info);
      else printInfo(info);
    });

  b.command("status <id>")
    .description("whether the browser runs, its options and URLs, or why it ended")
    .option("--json", "print JSON (running: false with error when it ended)")
    .action(async (id: string, o: { json?: boolean }) => {
      const info = await withVm(id, (vm) => vm.browser.status());
      if (o.json) printJson(info);
      else printInfo(info);
    });

  b.command("stop <id>")
    .description("stop the browser (and its display and VNC) and close its ports on the host")
    .action(async (id: string) => {
      await withVm(id, (vm) => vm.browser.stop());
    });

  b.command("screenshot <id>")
    .description("a PNG of the current page")
    .option("-o, --output <file>", "where to write it; - for stdout (default screenshot-ID.png)")
    .option("--full-page", "the whole page, not only the viewport")
    .option("--json", "print JSON: {file, bytes, width, height}")
    .action(async (id: string, o: { output?: string; fullPage?: boolean; json?: boolean }) => {
      if (o.output === "-" && process.stdout.isTTY) {
        throw new ConfigError("--output", "refusing to write a PNG to a terminal: redirect stdout or give a file");
      }
      if (o.output === "-" && o.json) throw new ConfigError("--json", "cannot be combined with -o -");
      let vmId = id;
      const png = await withVm(id, (vm) => {
        vmId = vm.vmId;
        return vm.browser.screenshot({ fullPage: o.fullPage === true });
      });
      if (o.output === "-") {
        process.stdout.write(png);
        return;
      }
      const file = o.output ?? `screenshot-${vmId}.png`;
      writeFileSync(file, png);
      if (o.json) printJson({ file, bytes: png.length, ...pngSize(png) });
      else process.stdout.write(`${file}\n`);
    });

  b.command("open <id> <url>")
    .description(
      "go to URL in the current page and wait for it to load; prints its title (starts the browser if needed)",
    )
    .option("--timeout <duration>", "how long the page may take to load (default 2m)")
    .option("--json", "print JSON: {url, title}")
    .action(async (id: string, url: string, o: { timeout?: string; json?: boolean }) => {
      const timeoutMs = parseDuration("--timeout", o.timeout);
      const page = await withVm(id, async (vm) => {
        await ensureBrowser(vm.browser);
        return vm.browser.open(url, { timeoutMs });
      });
      if (o.json) printJson(page);
      else process.stdout.write(`${page.title}\n`);
    });

  b.command("text <id>")
    .description("the current page's visible text")
    .option("--max-chars <n>", "at most this many characters (default 100000)")
    .option("--json", "print JSON: {url, title, text, truncated}")
    .action(async (id: string, o: { maxChars?: string; json?: boolean }) => {
      const maxChars = int("--max-chars", o.maxChars, { min: 1, max: 10_000_000 });
      const t = await withVm(id, (vm) => vm.browser.text({ maxChars }));
      if (o.json) printJson(t);
      else {
        process.stdout.write(t.text.endsWith("\n") || !t.text ? t.text : `${t.text}\n`);
        if (t.truncated) progress(`the text was cut at ${t.text.length} characters (--max-chars)`);
      }
    });

  b.command("click <id> <selector>")
    .description("click the first element matching a CSS selector (a real mouse click at its centre)")
    .action(async (id: string, selector: string) => {
      await withVm(id, (vm) => vm.browser.click(selector));
    });

  b.command("type <id> <selector> <text>")
    .description("focus the first element matching a CSS selector and type TEXT into it")
    .option("--submit", "press Enter after")
    .action(async (id: string, selector: string, text: string, o: { submit?: boolean }) => {
      await withVm(id, (vm) => vm.browser.type(selector, text, { submit: o.submit === true }));
    });

  b.command("vnc <id>")
    .description("where to watch a headful browser: noVNC in a web browser, or the address for a VNC client")
    .option("--json", "print JSON: {vncUrl, vncAddress}")
    .action(async (id: string, o: { json?: boolean }) => {
      const info = await withVm(id, async (vm) => {
        const s = await vm.browser.status();
        if (!s.running) {
          throw new SmolVMError(
            `the browser is not running${s.error ? ` (${s.error})` : ""}: start it: smolvm browser start ${vm.vmId} --headful`,
          );
        }
        if (s.headless) {
          throw new SmolVMError(
            `the browser runs headless: it has no display to show. Restart it headful: smolvm browser start ${vm.vmId} --headful`,
          );
        }
        if (s.vncUrl && s.vncAddress) return s;
        // its ports are not exposed (it was started in a way that did not): start() with its options exposes them
        return vm.browser.start({ headless: false, viewport: s.viewport, args: s.args });
      });
      const vnc = { vncUrl: info.vncUrl, vncAddress: info.vncAddress };
      if (o.json) printJson(vnc);
      else printInfo(vnc as BrowserInfo);
    });
}
