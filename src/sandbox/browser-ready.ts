/**
 * What the CLI, the REST API and MCP do before opening a page: have a browser running whose DevTools port this VM
 * has exposed. `start()` with no options keeps one that runs as it is (adopting a warm template's or a fork's browser
 * and exposing its ports); with none running it starts one with the default options.
 */
import type { Browser } from "./browser.js";

/** Returns true when a browser was started (none was running). */
export async function ensureBrowser(browser: Browser): Promise<boolean> {
  const s = await browser.status();
  if (s.running && s.cdpUrl) return false;
  await browser.start();
  return !s.running;
}
