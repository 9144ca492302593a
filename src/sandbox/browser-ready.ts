/**
 * What the CLI, the REST API and MCP do before opening a page: have a browser running whose DevTools port this VM
 * has exposed. One that runs is kept as it is (its options named again, so `start()` adopts a warm template's browser
 * and exposes its ports without restarting it); none running: one with the default options is started.
 */
import type { Browser } from "./browser.js";

/** Returns true when a browser was started (none was running). */
export async function ensureBrowser(browser: Browser): Promise<boolean> {
  const s = await browser.status();
  if (s.running && s.cdpUrl) return false;
  if (s.running) {
    await browser.start({ headless: s.headless, viewport: s.viewport, args: s.args });
    return false;
  }
  await browser.start();
  return true;
}
