/** MCP tools inside a sandbox: run a command, write, read and list files. Everything returned to the model is bounded. */

import type { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import { CommandTimeoutError, ConfigError } from "../../errors.js";
import { SERVER_LIST_BYTES } from "../hub.js";
import { withProgress } from "./progress.js";
import { asText, guarded, HeadTail, ok, withoutCutEnd } from "./results.js";
import { GuestPath, SandboxId } from "./schemas.js";
import type { McpSession } from "./session.js";

/** Output of each stream returned to the model: its first quarter and last three quarters of this. */
export const MAX_STREAM_BYTES = 64 << 10;
const DEFAULT_READ_BYTES = 64 << 10;
const MAX_READ_BYTES = 1 << 20;
/** Largest file content write_file accepts (characters of text, or of base64). */
export const MAX_WRITE_CHARS = 512 << 10;
const MAX_LIST_ENTRIES = 1000;

const RUN_FIELDS = { cmd: "command", timeoutMs: "timeout_seconds", cwd: "cwd", env: "env", user: "user" };

export function registerGuestTools(server: McpServer, session: McpSession): void {
  registerRun(server, session);
  registerFileTools(server, session);
}

function registerRun(server: McpServer, session: McpSession): void {
  server.registerTool(
    "run_command",
    {
      title: "Run a command",
      description:
        "Run a shell command in a sandbox (through /bin/sh -c, as root) and wait for it to finish. Returns the exit " +
        `code, stdout and stderr. Each stream returned is limited to ${MAX_STREAM_BYTES >> 10} KiB: beyond that the ` +
        "middle of the output is replaced by a line saying how many bytes were dropped (stdout_dropped_bytes > 0). " +
        "The command is killed after timeout_seconds (timed_out: true). For a server or anything long-running, " +
        "start it in the background (`nohup cmd > /tmp/log 2>&1 &`) and check on it later.",
      inputSchema: {
        sandbox_id: SandboxId,
        command: z.string().min(1).max(65_536).describe("Shell command line, e.g. `cd /root && python3 main.py`"),
        timeout_seconds: z
          .number()
          .int()
          .min(1)
          .max(3600)
          .optional()
          .describe("Kill the command after this long (default 60)"),
        cwd: z
          .string()
          .min(1)
          .max(4095)
          .optional()
          .describe("Working directory (default: the image's, usually /root or /)"),
        env: z.record(z.string(), z.string()).optional().describe("Extra environment variables for this command"),
        stdin: z.string().max(MAX_WRITE_CHARS).optional().describe("Text written to the command's standard input"),
      },
      outputSchema: {
        exit_code: z.number().nullable().describe("null when the command was killed for running past its timeout"),
        timed_out: z.boolean(),
        stdout: z.string(),
        stderr: z.string(),
        stdout_bytes: z.number().describe("Bytes the command wrote to stdout in all"),
        stderr_bytes: z.number(),
        stdout_dropped_bytes: z.number().describe("Bytes of stdout left out of `stdout` (0: it is complete)"),
        stderr_dropped_bytes: z.number(),
        duration_ms: z.number(),
      },
      annotations: { openWorldHint: true },
    },
    (args, extra) =>
      guarded(RUN_FIELDS, async () => {
        const vm = await session.get(args.sandbox_id);
        const timeoutMs = (args.timeout_seconds ?? 60) * 1000;
        const out = new HeadTail(MAX_STREAM_BYTES / 4, (MAX_STREAM_BYTES * 3) / 4);
        const err = new HeadTail(MAX_STREAM_BYTES / 4, (MAX_STREAM_BYTES * 3) / 4);
        const t0 = performance.now();
        let exitCode: number | null = null;
        let timedOut = false;
        try {
          const r = await withProgress(extra, "run_command", () =>
            vm.run(args.command, {
              timeoutMs,
              cwd: args.cwd,
              env: args.env,
              stdin: args.stdin,
              signal: extra.signal, // the client cancelled the call (or gave up on it): the command is killed
              maxOutputBytes: 0, // kept here, head and tail, not by `run`
              onStdout: (b) => out.push(b),
              onStderr: (b) => err.push(b),
            }),
          );
          exitCode = r.exitCode;
        } catch (e) {
          if (!(e instanceof CommandTimeoutError)) throw e;
          timedOut = true;
        }
        const o = out.render();
        const e = err.render();
        const result = {
          exit_code: exitCode,
          timed_out: timedOut,
          stdout: o.text,
          stderr: e.text,
          stdout_bytes: out.total,
          stderr_bytes: err.total,
          stdout_dropped_bytes: o.droppedBytes,
          stderr_dropped_bytes: e.droppedBytes,
          duration_ms: Math.round(performance.now() - t0),
        };
        const parts = [
          timedOut ? `Timed out after ${timeoutMs / 1000} s; the command was killed.` : `Exit code ${exitCode}.`,
        ];
        if (o.text) parts.push(`stdout${o.droppedBytes ? ` (${o.droppedBytes} bytes dropped)` : ""}:\n${o.text}`);
        if (e.text) parts.push(`stderr${e.droppedBytes ? ` (${e.droppedBytes} bytes dropped)` : ""}:\n${e.text}`);
        return ok(result, parts.join("\n"));
      }),
  );
}

function decodeBase64(content: string): Buffer {
  const b64 = content.replace(/\s+/g, "");
  if (b64.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) {
    throw new ConfigError("content", 'is not valid base64 (encoding is "base64")');
  }
  return Buffer.from(b64, "base64");
}

function registerFileTools(server: McpServer, session: McpSession): void {
  server.registerTool(
    "write_file",
    {
      title: "Write a file",
      description:
        "Create or replace a file in a sandbox (parent directories are created). The file appears complete or not " +
        `at all. Content up to ${MAX_WRITE_CHARS >> 10} KiB; for binary data give base64 and encoding "base64".`,
      inputSchema: {
        sandbox_id: SandboxId,
        path: GuestPath,
        content: z.string().max(MAX_WRITE_CHARS).describe("The file's content"),
        encoding: z.enum(["utf8", "base64"]).optional().describe('"utf8" (default) or "base64"'),
        executable: z.boolean().optional().describe("Make it executable (mode 755 instead of 644)"),
      },
      outputSchema: { path: z.string(), bytes_written: z.number() },
    },
    (args) =>
      guarded({}, async () => {
        const vm = await session.get(args.sandbox_id);
        const data = args.encoding === "base64" ? decodeBase64(args.content) : Buffer.from(args.content, "utf8");
        const w = await vm.files.write(args.path, data, { mode: args.executable ? 0o755 : 0o644 });
        return ok({ path: w.path, bytes_written: w.bytesWritten }, `Wrote ${w.bytesWritten} bytes to ${w.path}`);
      }),
  );

  server.registerTool(
    "read_file",
    {
      title: "Read a file",
      description:
        `Read a file from a sandbox as text (its first max_bytes bytes, default ${DEFAULT_READ_BYTES >> 10} KiB; ` +
        "truncated: true when the file is longer). A file that is not UTF-8 text is reported as binary " +
        '(binary: true, no content) unless encoding "base64" is asked for.',
      inputSchema: {
        sandbox_id: SandboxId,
        path: GuestPath,
        max_bytes: z.number().int().min(1).max(MAX_READ_BYTES).optional().describe("Bytes to read at most"),
        encoding: z.enum(["utf8", "base64"]).optional().describe('"utf8" (default) or "base64"'),
      },
      outputSchema: {
        path: z.string(),
        content: z.string().describe('The text (or base64); "" for a binary file read as utf8'),
        encoding: z.enum(["utf8", "base64"]),
        bytes_read: z.number(),
        size_bytes: z.number().nullable().describe("The file's size (null: unknown)"),
        truncated: z.boolean(),
        binary: z.boolean(),
      },
      annotations: { readOnlyHint: true },
    },
    (args) =>
      guarded({ maxBytes: "max_bytes" }, async () => {
        const vm = await session.get(args.sandbox_id);
        const { data, truncated } = await vm.files.readHead(args.path, args.max_bytes ?? DEFAULT_READ_BYTES);
        // the size only matters when not all was read (a symlink's own size is not its target's: then unknown)
        const st = truncated ? await vm.files.stat(args.path).catch(() => null) : null;
        const size = !truncated ? data.length : st?.type === "file" ? Math.max(st.size, data.length) : null;
        const base = { path: args.path, bytes_read: data.length, size_bytes: size, truncated };
        const more = truncated ? ` (truncated: first ${data.length} of ${size ?? "more"} bytes)` : "";
        if (args.encoding === "base64") {
          const content = data.toString("base64");
          const binary = asText(data) === null;
          return ok({ ...base, content, encoding: "base64", binary }, `${args.path}${more}, base64:\n${content}`);
        }
        const text = asText(truncated ? withoutCutEnd(data) : data);
        if (text === null) {
          const msg = `${args.path} is binary (${size ?? `over ${data.length}`} bytes), not shown; read it with encoding "base64"`;
          return ok({ ...base, content: "", encoding: "utf8", binary: true }, msg);
        }
        return ok({ ...base, content: text, encoding: "utf8", binary: false }, `${args.path}${more}:\n${text}`);
      }),
  );

  server.registerTool(
    "list_files",
    {
      title: "List files",
      description: `List a directory in a sandbox: names, types, sizes, permissions (at most ${MAX_LIST_ENTRIES} entries).`,
      inputSchema: {
        sandbox_id: SandboxId,
        path: GuestPath,
        depth: z
          .number()
          .int()
          .min(1)
          .max(5)
          .optional()
          .describe("Levels to descend (default 1: the directory itself)"),
      },
      outputSchema: {
        path: z.string(),
        entries: z.array(
          z.object({
            name: z.string(),
            type: z.string(),
            size: z.number(),
            mode: z.string(),
            symlink_target: z.string().optional(),
          }),
        ),
        truncated: z.boolean(),
        total_entries: z.number(),
      },
      annotations: { readOnlyHint: true },
    },
    (args) =>
      guarded({}, async () => {
        const vm = await session.get(args.sandbox_id);
        const all = await vm.files.list(args.path, { depth: args.depth ?? 1, maxBytes: SERVER_LIST_BYTES });
        const entries = all.slice(0, MAX_LIST_ENTRIES).map((e) => ({
          name: e.name,
          type: e.type,
          size: e.size,
          mode: e.mode.toString(8).padStart(4, "0"),
          ...(e.symlinkTarget !== undefined ? { symlink_target: e.symlinkTarget } : {}),
        }));
        const truncated = all.length > entries.length;
        const lines = entries.map((e) => {
          const kind = e.type === "dir" ? "d" : e.type === "symlink" ? "l" : e.type === "file" ? "-" : "?";
          const link = e.symlink_target ? ` -> ${e.symlink_target}` : "";
          return `${kind} ${e.mode} ${String(e.size).padStart(10)} ${e.name}${link}`;
        });
        if (truncated) lines.push(`[... ${all.length - entries.length} more entries not shown]`);
        const text = `${args.path}: ${all.length} entries\n${lines.join("\n")}`;
        return ok({ path: args.path, entries, truncated, total_entries: all.length }, text);
      }),
  );
}
