/**
 * `/v1/sandboxes/:id/browser`: the Chromium of a sandbox of the `browser` image. Start (or status, stop), a PNG of
 * the page, open a URL, the page's text, click, type. `cdpUrl`, `wsEndpoint` and the VNC addresses it returns are on
 * the server host's loopback (docs/SERVER.md).
 */
import type { FastifyPluginAsyncZod } from "fastify-type-provider-zod";
import { z } from "zod";
import { BrowserNotRunningError, ElementNotFoundError } from "../../sandbox/browser.js";
import { ensureBrowser } from "../../sandbox/browser-ready.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ServerContext } from "../app.js";
import { httpError } from "../errors.js";
import { ErrorResponse, SandboxParams } from "./schemas.js";

const tags = ["browser"];
const errors = {
  400: ErrorResponse,
  401: ErrorResponse,
  404: ErrorResponse,
  409: ErrorResponse,
  422: ErrorResponse,
};

const Viewport = z
  .object({
    width: z.number().int().describe("CSS pixels, 200-7680"),
    height: z.number().int().describe("CSS pixels, 200-7680"),
  })
  .strict();

/** A wait in ms, at most 10 minutes. */
const timeoutMs = (what: string) => z.number().int().positive().max(600_000).optional().describe(what);

const StartBody = z
  .object({
    headless: z.boolean().optional().describe("Default true; false renders on a virtual display shown over VNC"),
    viewport: Viewport.optional().describe("The page's size (default 1280x720)"),
    args: z.array(z.string()).max(64).optional().describe('More Chromium flags, e.g. ["--lang=de"]'),
    timeoutMs: timeoutMs("How long Chromium may take to start (default 180000, at most 600000)"),
  })
  .strict();

const BrowserInfo = z.object({
  running: z.boolean(),
  headless: z.boolean().optional(),
  viewport: z.object({ width: z.number(), height: z.number() }).optional(),
  args: z.array(z.string()).optional(),
  pid: z.number().optional().describe("The launcher's pid in the guest"),
  cdpUrl: z.string().optional().describe("DevTools over HTTP, on the server host's loopback"),
  wsEndpoint: z.string().optional().describe("The browser's DevTools websocket, on the server host's loopback"),
  vncUrl: z.string().optional().describe("Headful: noVNC, on the server host's loopback"),
  vncAddress: z.string().optional().describe("Headful: the VNC server, on the server host's loopback"),
  fromTemplate: z.boolean().optional(),
  startedAt: z.string().optional(),
  error: z.string().optional().describe("Not running: why it ended"),
});

const Page = z.object({ url: z.string(), title: z.string() });
const Selector = z.string().min(1).max(4096).describe("A CSS selector; the first element matching it is used");

/** The SDK's "not running" as a 409 that says how to start it here. */
function notRunning(e: unknown, id: string): unknown {
  if (e instanceof BrowserNotRunningError) {
    const why = `the browser is not running${e.reason ? ` (${e.reason})` : ""}`;
    return httpError(409, "browser_not_running", `${why}: start it with POST /v1/sandboxes/${id}/browser`);
  }
  return e;
}

/** A missing element names the request's `selector`. */
function noElement(e: unknown): unknown {
  if (e instanceof ElementNotFoundError) {
    return httpError(422, "element_not_found", `selector: ${e.message}`, { field: "selector" });
  }
  return e;
}

export const browserRoutes: FastifyPluginAsyncZod<{ ctx: ServerContext }> = async (app, { ctx }) => {
  const { hub } = ctx;

  /** The sandbox's browser call, its errors mapped. */
  const onPage = async <T>(id: string, fn: (vm: SmolVM) => Promise<T>): Promise<T> => {
    const vm = await hub.get(id);
    try {
      return await fn(vm);
    } catch (e) {
      throw noElement(notRunning(e, vm.vmId));
    }
  };

  app.post(
    "/sandboxes/:id/browser",
    {
      schema: {
        tags,
        summary: "Start the browser, or return the one running with the same options (other options restart it)",
        params: SandboxParams,
        body: StartBody.optional(),
        response: { 200: BrowserInfo, ...errors },
      },
    },
    async (req) => onPage(req.params.id, (vm) => vm.browser.start(req.body ?? {})),
  );

  app.get(
    "/sandboxes/:id/browser",
    {
      schema: {
        tags,
        summary: "Whether the browser runs, its options and URLs, or why it ended",
        params: SandboxParams,
        response: { 200: BrowserInfo, ...errors },
      },
    },
    async (req) => onPage(req.params.id, (vm) => vm.browser.status()),
  );

  app.delete(
    "/sandboxes/:id/browser",
    {
      schema: {
        tags,
        summary: "Stop the browser (and its display and VNC); its ports on the host are closed",
        params: SandboxParams,
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      await onPage(req.params.id, (vm) => vm.browser.stop());
      return reply.status(204).send(null);
    },
  );

  app.get(
    "/sandboxes/:id/browser/screenshot",
    {
      schema: {
        tags,
        summary: "A PNG of the current page (image/png): the viewport, or the whole page with fullPage=true",
        params: SandboxParams,
        querystring: z.object({ fullPage: z.enum(["true", "false"]).optional() }),
        response: { 200: z.any().describe("The PNG (image/png)"), ...errors },
      },
    },
    async (req, reply) => {
      const fullPage = req.query.fullPage === "true";
      const png = await onPage(req.params.id, (vm) => vm.browser.screenshot({ fullPage }));
      return reply.header("content-type", "image/png").send(png);
    },
  );

  app.post(
    "/sandboxes/:id/browser/open",
    {
      schema: {
        tags,
        summary: "Go to a URL in the current page and wait for its load event (starts the browser if none runs)",
        params: SandboxParams,
        body: z
          .object({
            url: z.string().min(1).max(65_536).describe("http(s), file, data or about URL"),
            timeoutMs: timeoutMs("How long it may take to load (default 120000, at most 600000)"),
          })
          .strict(),
        response: { 200: Page, ...errors },
      },
    },
    async (req) =>
      onPage(req.params.id, async (vm) => {
        await ensureBrowser(vm.browser);
        return vm.browser.open(req.body.url, { timeoutMs: req.body.timeoutMs });
      }),
  );

  app.get(
    "/sandboxes/:id/browser/text",
    {
      schema: {
        tags,
        summary: "The current page's URL, title and visible text (at most maxChars characters, default 100000)",
        params: SandboxParams,
        querystring: z.object({ maxChars: z.coerce.number().int().min(1).max(10_000_000).optional() }),
        response: { 200: Page.extend({ text: z.string(), truncated: z.boolean() }), ...errors },
      },
    },
    async (req) => onPage(req.params.id, (vm) => vm.browser.text({ maxChars: req.query.maxChars })),
  );

  app.post(
    "/sandboxes/:id/browser/click",
    {
      schema: {
        tags,
        summary: "Click the first element matching a CSS selector (a mouse click at its centre); 422 if none",
        params: SandboxParams,
        body: z.object({ selector: Selector }).strict(),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      await onPage(req.params.id, (vm) => vm.browser.click(req.body.selector));
      return reply.status(204).send(null);
    },
  );

  app.post(
    "/sandboxes/:id/browser/type",
    {
      schema: {
        tags,
        summary: "Focus the first element matching a CSS selector and type text into it; submit presses Enter after",
        params: SandboxParams,
        body: z.object({ selector: Selector, text: z.string().max(100_000), submit: z.boolean().optional() }).strict(),
        response: { 204: z.null(), ...errors },
      },
    },
    async (req, reply) => {
      const { selector, text, submit } = req.body;
      await onPage(req.params.id, (vm) => vm.browser.type(selector, text, { submit }));
      return reply.status(204).send(null);
    },
  );
};
