/** The MCP server of one session: SmolVM's tools over that session's sandboxes. */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { packageRoot } from "../../paths.js";
import type { McpSession } from "./session.js";
import { registerBrowserTools } from "./tools-browser.js";
import { registerGuestTools } from "./tools-guest.js";
import { registerSandboxTools } from "./tools-sandboxes.js";

let version: string | undefined;
function smolvmVersion(): string {
  version ??= (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
  return version;
}

const INSTRUCTIONS =
  'SmolVM runs isolated Linux sandboxes (microVMs). Typical use: create_sandbox (image "python" for python3 and ' +
  "bash), then run_command / write_file / read_file with its sandbox_id, and delete_sandbox when done. Sandboxes " +
  "belong to this session: they are deleted when it ends or when their lifetime runs out. For the web, create a " +
  'sandbox with image "browser" and use browser_open, browser_text, browser_screenshot, browser_click, browser_type.';

export function buildMcpServer(session: McpSession): McpServer {
  const server = new McpServer(
    { name: "smolvm", title: "SmolVM sandboxes", version: smolvmVersion() },
    { capabilities: { tools: {} }, instructions: INSTRUCTIONS },
  );
  registerSandboxTools(server, session);
  registerGuestTools(server, session);
  registerBrowserTools(server, session);
  return server;
}
