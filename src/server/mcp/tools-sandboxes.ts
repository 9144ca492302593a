/** MCP tools over sandboxes themselves: create, list, delete, expose a port, snapshot, fork. */
import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import { type InternetPolicy, LIMITS, type VMConfig } from "../../config.js";
import { ConfigError } from "../../errors.js";
import { withProgress } from "./progress.js";
import { guarded, ok } from "./results.js";
import { LifetimeSeconds, SandboxId, SandboxSummary, summary, summaryLine } from "./schemas.js";
import type { McpSession } from "./session.js";

const CREATE_FIELDS = {
  image: "image",
  memSizeMib: "memory_mib",
  vcpuCount: "vcpu_count",
  "network.mode": "network",
  "network.internet": "internet",
  network: "network",
  labels: "labels",
  timeoutMs: "lifetime_seconds",
  env: "env",
};

const Internet = z.union([
  z.enum(["open", "off"]),
  z
    .object({
      allow_domains: z
        .array(z.string().max(253))
        .max(64)
        .optional()
        .describe("Domains it may reach (and their subdomains)"),
      allow_cidrs: z
        .array(z.string().max(64))
        .max(64)
        .optional()
        .describe("Address ranges it may reach, e.g. 1.2.3.0/24"),
    })
    .strict(),
]);

/** A lifetime in seconds, checked against the hub's bounds (undefined: the hub's default). */
function lifetimeMs(session: McpSession, seconds: number | undefined, field = "lifetime_seconds"): number | undefined {
  if (seconds === undefined) return undefined;
  const max = session.hub.limits.maxTimeoutMs;
  if (seconds * 1000 > max) throw new ConfigError(field, `at most ${Math.floor(max / 1000)} seconds on this server`);
  return seconds * 1000;
}

function internetPolicy(v: z.infer<typeof Internet> | undefined): InternetPolicy | undefined {
  if (v === undefined || typeof v === "string") return v;
  return { allowDomains: v.allow_domains, allowCidrs: v.allow_cidrs };
}

export function registerSandboxTools(server: McpServer, session: McpSession): void {
  server.registerTool(
    "create_sandbox",
    {
      title: "Create a sandbox",
      description:
        "Start a new isolated Linux sandbox (a microVM with its own kernel) and return its sandbox_id. Commands run " +
        "as root. The default image is a small busybox system (sh, no bash, no package manager); use image " +
        '"python" for Debian with bash and python3, "browser" for Chromium (the browser_* tools; 2048 MiB by ' +
        'default), or any OCI image reference (e.g. "alpine:3.20"). No network ' +
        'unless network is "user". The sandbox is deleted when its lifetime ends or this MCP session ends.',
      inputSchema: {
        image: z
          .string()
          .min(1)
          .max(512)
          .optional()
          .describe('Image: "python", "node", "browser", or an OCI reference; default busybox'),
        memory_mib: z
          .number()
          .int()
          .min(LIMITS.memSizeMib[0])
          .max(LIMITS.memSizeMib[1])
          .optional()
          .describe('Guest memory in MiB (default 512; 2048 for image "browser")'),
        vcpu_count: z.number().int().min(1).max(8).optional().describe("Virtual CPUs (default 2)"),
        network: z
          .enum(["none", "user"])
          .optional()
          .describe('"none" (default): no network device at all; "user": a NAT network, with internet per `internet`'),
        internet: Internet.optional().describe(
          'With network "user": "open" (default; the internet but never the host or private networks), "off", or allow lists',
        ),
        env: z.record(z.string(), z.string()).optional().describe("Environment variables for every command"),
        lifetime_seconds: LifetimeSeconds.optional(),
        labels: z
          .record(z.string(), z.string())
          .optional()
          .describe("Your own key/value labels, shown by list_sandboxes"),
      },
      outputSchema: SandboxSummary.shape,
      annotations: { destructiveHint: false, openWorldHint: true },
    },
    (args, extra) =>
      guarded(CREATE_FIELDS, async () => {
        const internet = internetPolicy(args.internet);
        const mode = args.network ?? "none";
        if (mode === "none" && internet !== undefined && internet !== "off") {
          throw new ConfigError("internet", 'needs network "user" (network "none" has no network device)');
        }
        const config: VMConfig = {
          image: args.image,
          memSizeMib: args.memory_mib,
          vcpuCount: args.vcpu_count,
          network: mode === "none" ? "none" : { mode, internet },
          env: args.env,
          labels: args.labels,
          timeoutMs: lifetimeMs(session, args.lifetime_seconds),
        };
        const vm = await withProgress(extra, "create_sandbox", (report) => session.create(config, report));
        const s = summary(vm.info(), vm);
        return ok(s, `Created sandbox ${summaryLine(s)}`);
      }),
  );

  server.registerTool(
    "list_sandboxes",
    {
      title: "List my sandboxes",
      description: "List the sandboxes this MCP session created that still exist, with status and when they expire.",
      inputSchema: {},
      outputSchema: { sandboxes: z.array(SandboxSummary) },
      annotations: { readOnlyHint: true },
    },
    () =>
      guarded({}, async () => {
        const list = (await session.list()).map((i) => summary(i));
        const text = list.length ? list.map(summaryLine).join("\n") : "No sandboxes in this session.";
        return ok({ sandboxes: list }, text);
      }),
  );

  server.registerTool(
    "delete_sandbox",
    {
      title: "Delete a sandbox",
      description: "Delete a sandbox of this session now: its VM, disk and exposed ports are gone for good.",
      inputSchema: { sandbox_id: SandboxId },
      outputSchema: { sandbox_id: z.string(), deleted: z.boolean() },
      annotations: { destructiveHint: true },
    },
    (args) =>
      guarded({}, async () => {
        await session.delete(args.sandbox_id);
        return ok({ sandbox_id: args.sandbox_id, deleted: true }, `Deleted sandbox ${args.sandbox_id}`);
      }),
  );

  server.registerTool(
    "expose_port",
    {
      title: "Expose a port",
      description:
        "Make a TCP port a program listens on inside the sandbox reachable from the machine running SmolVM (works " +
        "with any network mode). Returns the host address, e.g. http://127.0.0.1:40123. Start the server in the " +
        "sandbox first (run_command with `&` or nohup), listening on 0.0.0.0 or 127.0.0.1.",
      inputSchema: {
        sandbox_id: SandboxId,
        port: z.number().int().min(1).max(65535).describe("TCP port inside the sandbox"),
      },
      outputSchema: {
        sandbox_id: z.string(),
        guest_port: z.number(),
        host: z.string(),
        host_port: z.number(),
        url: z.string(),
      },
      annotations: { openWorldHint: false },
    },
    (args) =>
      guarded({ guestPort: "port" }, async () => {
        const vm = await session.get(args.sandbox_id);
        const p = await vm.expose(args.port);
        const out = {
          sandbox_id: args.sandbox_id,
          guest_port: p.guestPort,
          host: p.host,
          host_port: p.port,
          url: p.url,
        };
        return ok(out, `Port ${p.guestPort} of ${args.sandbox_id} is reachable at ${p.url} (on the SmolVM host)`);
      }),
  );

  server.registerTool(
    "snapshot_sandbox",
    {
      title: "Snapshot a sandbox",
      description:
        "Save a sandbox's complete state (memory, running processes, disk) as a snapshot; the sandbox keeps running. " +
        "restore_snapshot starts new sandboxes from it later in this session. Snapshots outlive the session (the " +
        "SmolVM host's operator can restore or delete them: smolvm create --snapshot, smolvm snapshot rm).",
      inputSchema: {
        sandbox_id: SandboxId,
        name: z
          .string()
          .regex(/^[a-z0-9][a-z0-9-]{0,62}$/)
          .optional()
          .describe("Optional unique name: lowercase letters, digits and dashes"),
      },
      outputSchema: {
        snapshot_id: z.string(),
        name: z.string().nullable(),
        sandbox_id: z.string(),
        size_bytes: z.number(),
        created_at: z.string(),
      },
    },
    (args) =>
      guarded({}, async () => {
        const vm = await session.get(args.sandbox_id);
        const s = await session.snapshot(vm, args.name);
        const out = {
          snapshot_id: s.id,
          name: s.name,
          sandbox_id: s.vmId,
          size_bytes: s.sizeBytes,
          created_at: s.createdAt,
        };
        return ok(out, `Snapshot ${s.id}${s.name ? ` (${s.name})` : ""} of ${s.vmId}: ${s.sizeBytes} bytes`);
      }),
  );

  server.registerTool(
    "restore_snapshot",
    {
      title: "Restore a snapshot",
      description:
        "Start a new sandbox from a snapshot this session took (snapshot_sandbox): the files, memory and running " +
        "processes as they were then, with a new sandbox_id. The snapshot stays, so it can be restored again.",
      inputSchema: {
        snapshot_id: z.string().min(1).max(128).describe("The snapshot_id snapshot_sandbox returned"),
        lifetime_seconds: LifetimeSeconds.optional(),
      },
      outputSchema: SandboxSummary.shape,
    },
    (args) =>
      guarded({ timeoutMs: "lifetime_seconds" }, async () => {
        const vm = await session.restore(args.snapshot_id, lifetimeMs(session, args.lifetime_seconds));
        const s = summary(vm.info(), vm);
        return ok(s, `Restored snapshot ${args.snapshot_id} as sandbox ${summaryLine(s)}`);
      }),
  );

  server.registerTool(
    "fork_sandbox",
    {
      title: "Fork a sandbox",
      description:
        "Make copies of a running sandbox as it is now (files, memory, running processes); each copy is a new " +
        "independent sandbox of this session with its own id. Useful to try several approaches from one state.",
      inputSchema: {
        sandbox_id: SandboxId,
        count: z.number().int().min(1).max(4).optional().describe("How many copies (default 1)"),
        lifetime_seconds: LifetimeSeconds.optional(),
      },
      outputSchema: { sandboxes: z.array(SandboxSummary) },
    },
    (args) =>
      guarded({ timeoutMs: "lifetime_seconds", count: "count" }, async () => {
        const vm = await session.get(args.sandbox_id);
        const clones = await session.fork(vm, args.count ?? 1, lifetimeMs(session, args.lifetime_seconds));
        const list = clones.map((c) => summary(c.info(), c));
        return ok({ sandboxes: list }, `Forked ${args.sandbox_id}:\n${list.map(summaryLine).join("\n")}`);
      }),
  );
}
