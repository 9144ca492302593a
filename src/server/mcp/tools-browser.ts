/**
 * MCP tools over the Chromium of a sandbox of the `browser` image: open a URL (starting the browser if needed), a
 * screenshot as an image content block, the page's text, click, type. Errors name the argument at fault.
 */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import { z } from "zod";
import { ConfigError, SmolVMError } from "../../errors.js";
import { BrowserNotRunningError, ElementNotFoundError } from "../../sandbox/browser.js";
import { ensureBrowser } from "../../sandbox/browser-ready.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import { withProgress } from "./progress.js";
import { describeError, type FieldNames, fail, ok } from "./results.js";
import { SandboxId } from "./schemas.js";
import type { McpSession } from "./session.js";

/** Page text returned by default, and at most. */
const DEFAULT_TEXT_CHARS = 20_000;
export const MAX_TEXT_CHARS = 500_000;
/** The largest PNG a screenshot result carries (a full page of a long page can be far larger). */
export const MAX_SCREENSHOT_BYTES = 8 << 20;

const FIELDS: FieldNames = {
  maxChars: "max_chars",
  timeoutMs: "timeout_seconds",
  url: "url",
  selector: "selector",
  text: "text",
  memSizeMib: "memory_mib (of create_sandbox)",
};

const Selector = z
  .string()
  .min(1)
  .max(4096)
  .describe('A CSS selector, e.g. "#email", "button[type=submit]"; the first element matching it is used');

/** Run a browser tool body: errors become isError results that name the argument (a missing element: `selector`). */
async function browserCall(body: () => Promise<CallToolResult>): Promise<CallToolResult> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof ElementNotFoundError) {
      return fail(`selector: ${e.message} on the current page (browser_text shows what it has)`);
    }
    if (e instanceof BrowserNotRunningError) {
      const why = `the browser is not running${e.reason ? ` (${e.reason})` : ""}`;
      return fail(`${why}: open a page with browser_open first (it starts the browser)`);
    }
    return fail(describeError(e, FIELDS));
  }
}

/** A browser running, its port exposed (src/sandbox/browser-ready.ts); true when it was started. */
async function ensureStarted(vm: SmolVM): Promise<boolean> {
  try {
    return await ensureBrowser(vm.browser);
  } catch (e) {
    const image = vm.info().image;
    if (image === "browser" || !(e instanceof SmolVMError) || e instanceof ConfigError) throw e;
    throw new SmolVMError(`${e.message} (sandbox_id: its image is ${image}; create_sandbox with image "browser")`);
  }
}

export function registerBrowserTools(server: McpServer, session: McpSession): void {
  server.registerTool(
    "browser_open",
    {
      title: "Open a web page",
      description:
        'Open a URL in the Chromium of a sandbox created with image "browser" (create_sandbox), starting the ' +
        "browser first if it is not running, and wait for the page to load. Returns the final URL and the page's " +
        "title; then read it with browser_text, look at it with browser_screenshot, act on it with browser_click " +
        "and browser_type. The page reaches only what the sandbox's network allows (none by default: use network " +
        '"user" for the internet). Slow on hosts without KVM: allow a minute.',
      inputSchema: {
        sandbox_id: SandboxId,
        url: z.string().min(1).max(65_536).describe("http(s), file, data or about URL, e.g. https://example.com"),
        timeout_seconds: z
          .number()
          .int()
          .min(1)
          .max(600)
          .optional()
          .describe("How long the page may take to load (default 120)"),
      },
      outputSchema: {
        url: z.string().describe("The page's URL after redirects"),
        title: z.string(),
        browser_started: z.boolean().describe("The browser was not running and was started for this call"),
      },
      annotations: { openWorldHint: true },
    },
    (args, extra) =>
      browserCall(async () => {
        const vm = await session.get(args.sandbox_id);
        const timeoutMs = args.timeout_seconds === undefined ? undefined : args.timeout_seconds * 1000;
        const { page, started } = await withProgress(extra, "browser_open", async (report) => {
          const started = await ensureStarted(vm);
          if (started) report("browser_open: the browser started");
          return { page: await vm.browser.open(args.url, { timeoutMs }), started };
        });
        return ok(
          { url: page.url, title: page.title, browser_started: started },
          `Opened ${page.url}${page.title ? `: "${page.title}"` : " (no title)"}`,
        );
      }),
  );

  server.registerTool(
    "browser_screenshot",
    {
      title: "Screenshot the page",
      description:
        "A PNG screenshot of the current page in a sandbox's browser, returned as an image: the viewport " +
        `(1280x720 by default), or the whole page with full_page (refused above ${MAX_SCREENSHOT_BYTES >> 20} MiB).`,
      inputSchema: {
        sandbox_id: SandboxId,
        full_page: z.boolean().optional().describe("The whole page, not only the visible part (default false)"),
      },
      outputSchema: {
        width: z.number().describe("Pixels"),
        height: z.number().describe("Pixels"),
        bytes: z.number().describe("Size of the PNG"),
        full_page: z.boolean(),
      },
      annotations: { readOnlyHint: true },
    },
    (args) =>
      browserCall(async () => {
        const vm = await session.get(args.sandbox_id);
        const fullPage = args.full_page === true;
        const png = await vm.browser.screenshot({ fullPage });
        if (png.length > MAX_SCREENSHOT_BYTES) {
          return fail(
            `full_page: the screenshot is ${(png.length / 2 ** 20).toFixed(1)} MiB, more than the ` +
              `${MAX_SCREENSHOT_BYTES >> 20} MiB a result may carry; take the viewport only (full_page: false)`,
          );
        }
        const width = png.length >= 24 ? png.readUInt32BE(16) : 0;
        const height = png.length >= 24 ? png.readUInt32BE(20) : 0;
        const s = { width, height, bytes: png.length, full_page: fullPage };
        return {
          content: [
            { type: "text", text: `Screenshot${fullPage ? " of the whole page" : ""}: ${width}x${height} PNG` },
            { type: "image", data: png.toString("base64"), mimeType: "image/png" },
          ],
          structuredContent: s,
        };
      }),
  );

  server.registerTool(
    "browser_text",
    {
      title: "Read the page",
      description:
        "The current page's URL, title and visible text (what a reader sees: innerText, without markup) in a " +
        `sandbox's browser; at most max_chars characters (default ${DEFAULT_TEXT_CHARS}; truncated: true when cut).`,
      inputSchema: {
        sandbox_id: SandboxId,
        max_chars: z
          .number()
          .int()
          .min(1)
          .max(MAX_TEXT_CHARS)
          .optional()
          .describe(`Characters of text at most (default ${DEFAULT_TEXT_CHARS})`),
      },
      outputSchema: { url: z.string(), title: z.string(), text: z.string(), truncated: z.boolean() },
      annotations: { readOnlyHint: true },
    },
    (args) =>
      browserCall(async () => {
        const vm = await session.get(args.sandbox_id);
        const t = await vm.browser.text({ maxChars: args.max_chars ?? DEFAULT_TEXT_CHARS });
        const cut = t.truncated ? `\n[... cut at ${t.text.length} characters (max_chars)]` : "";
        return ok({ ...t }, `${t.url}\n${t.title ? `Title: ${t.title}\n` : ""}\n${t.text}${cut}`);
      }),
  );

  server.registerTool(
    "browser_click",
    {
      title: "Click an element",
      description:
        "Click the first element matching a CSS selector on the current page of a sandbox's browser (a real mouse " +
        "click at its centre, scrolled into view). A click that navigates does not wait for the new page: check " +
        "with browser_text.",
      inputSchema: { sandbox_id: SandboxId, selector: Selector },
      outputSchema: { clicked: z.boolean(), selector: z.string() },
      annotations: { openWorldHint: true },
    },
    (args) =>
      browserCall(async () => {
        const vm = await session.get(args.sandbox_id);
        await vm.browser.click(args.selector);
        return ok({ clicked: true, selector: args.selector }, `Clicked ${args.selector}`);
      }),
  );

  server.registerTool(
    "browser_type",
    {
      title: "Type into an element",
      description:
        "Focus the first element matching a CSS selector on the current page of a sandbox's browser and type text " +
        "into it (added to what it holds); submit presses Enter after (e.g. to send a search form).",
      inputSchema: {
        sandbox_id: SandboxId,
        selector: Selector,
        text: z.string().max(100_000).describe("The text to type"),
        submit: z.boolean().optional().describe("Press Enter after typing (default false)"),
      },
      outputSchema: { typed_chars: z.number(), selector: z.string(), submitted: z.boolean() },
      annotations: { openWorldHint: true },
    },
    (args) =>
      browserCall(async () => {
        const vm = await session.get(args.sandbox_id);
        const submit = args.submit === true;
        await vm.browser.type(args.selector, args.text, { submit });
        return ok(
          { typed_chars: args.text.length, selector: args.selector, submitted: submit },
          `Typed ${args.text.length} characters into ${args.selector}${submit ? " and pressed Enter" : ""}`,
        );
      }),
  );
}
