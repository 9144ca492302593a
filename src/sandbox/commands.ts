/** Running one command through the agent and collecting its result with bounded memory. */
import type { AgentClient, ExecRequest } from "../agent/client.js";
import { CommandTimeoutError, ConfigError } from "../errors.js";

export interface RunOptions {
  /** Kill the command (its whole process group) after this many ms and throw `CommandTimeoutError`. */
  timeoutMs?: number;
  /** Extra environment for this command (added to the VM's env). */
  env?: Record<string, string>;
  /** Working directory in the guest. */
  cwd?: string;
  /** Called with each chunk of stdout as it arrives. */
  onStdout?: (chunk: Buffer) => void;
  /** Called with each chunk of stderr as it arrives. */
  onStderr?: (chunk: Buffer) => void;
  /** Data written to the command's stdin, which is then closed. */
  stdin?: string | Buffer;
  /** Output kept in memory per stream (default 16 MiB); beyond it output is dropped and `truncated` set. */
  maxOutputBytes?: number;
}

export interface CommandResult {
  /** Exit code; 128 + signal number when the command was killed by a signal (as shells report it). */
  exitCode: number;
  /** The signal that killed the command, if any. */
  signal: number | null;
  stdout: string;
  stderr: string;
  /** stdout with surrounding whitespace trimmed. */
  output: string;
  /** exitCode === 0 */
  ok: boolean;
  durationMs: number;
  /** Some output was dropped because it exceeded `maxOutputBytes`. */
  truncated: boolean;
}

export const DEFAULT_MAX_OUTPUT = 16 << 20;

/** Collects output chunks up to a cap. */
class Collector {
  private chunks: Buffer[] = [];
  private size = 0;
  truncated = false;
  constructor(private readonly cap: number) {}
  push(b: Buffer): void {
    const room = this.cap - this.size;
    if (room <= 0) {
      this.truncated = this.truncated || b.length > 0;
      return;
    }
    const take = b.length <= room ? b : b.subarray(0, room);
    if (take.length < b.length) this.truncated = true;
    this.chunks.push(take);
    this.size += take.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }
}

function toRequest(cmd: string | string[], env: Record<string, string>, cwd?: string, stdin?: boolean): ExecRequest {
  if (typeof cmd === "string") {
    if (cmd.includes("\0")) throw new ConfigError("cmd", "must not contain NUL bytes");
    return { shell: cmd, env, cwd, stdin };
  }
  if (!Array.isArray(cmd) || cmd.length === 0 || cmd.some((a) => typeof a !== "string" || a.includes("\0"))) {
    throw new ConfigError("cmd", "must be a shell string or a non-empty array of strings without NUL bytes");
  }
  return { argv: cmd, env, cwd, stdin };
}

export function describe(cmd: string | string[]): string {
  return typeof cmd === "string" ? cmd : JSON.stringify(cmd);
}

export async function runCommand(
  client: AgentClient,
  cmd: string | string[],
  baseEnv: Record<string, string>,
  opts: RunOptions = {},
): Promise<CommandResult> {
  const { timeoutMs, cwd } = opts;
  if (timeoutMs !== undefined && (!Number.isFinite(timeoutMs) || timeoutMs <= 0)) {
    throw new ConfigError("timeoutMs", `must be a positive number of milliseconds, got ${timeoutMs}`);
  }
  const cap = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
  if (!Number.isInteger(cap) || cap < 0) throw new ConfigError("maxOutputBytes", "must be a non-negative integer");
  const env = { ...baseEnv, ...(opts.env ?? {}) };
  const out = new Collector(cap);
  const err = new Collector(cap);
  const t0 = performance.now();
  const h = client.exec(toRequest(cmd, env, cwd, opts.stdin !== undefined), {
    onStdout: (b) => {
      out.push(b);
      opts.onStdout?.(b);
    },
    onStderr: (b) => {
      err.push(b);
      opts.onStderr?.(b);
    },
  });
  if (opts.stdin !== undefined) {
    await h.started;
    await h.writeStdin(opts.stdin);
    await h.closeStdin();
  }
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  if (timeoutMs !== undefined) {
    timer = setTimeout(() => {
      timedOut = true;
      h.kill(9).catch(() => {});
    }, timeoutMs);
  }
  try {
    const exit = await h.exited;
    if (timedOut) throw new CommandTimeoutError(describe(cmd), timeoutMs as number, out.text(), err.text());
    const stdout = out.text();
    const exitCode = exit.exitCode ?? 128 + (exit.signal ?? 0);
    return {
      exitCode,
      signal: exit.signal,
      stdout,
      stderr: err.text(),
      output: stdout.trim(),
      ok: exitCode === 0,
      durationMs: performance.now() - t0,
      truncated: out.truncated || err.truncated,
    };
  } finally {
    clearTimeout(timer);
  }
}
