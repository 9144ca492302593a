/** Running commands through the agent: `run` (collect) and `spawn` (a live process handle), with bounded memory. */
import { Readable, Writable } from "node:stream";
import type { AgentClient, ExecHandle, ExecHandlers, ExecRequest } from "../agent/client.js";
import { CommandAbortedError, CommandTimeoutError, ConfigError } from "../errors.js";
import { checkEnv } from "./env.js";

export interface CommandOptions {
  /** Extra environment for this command (on top of the VM's and `vm.env`). */
  env?: Record<string, string>;
  /** Working directory in the guest. */
  cwd?: string;
  /** Guest user to run as (name or uid); default root. */
  user?: string;
  /** Output kept in memory per stream (default 16 MiB); beyond it output is dropped and `truncated` set. */
  maxOutputBytes?: number;
}

export interface RunOptions extends CommandOptions {
  /** Kill the command (its whole process group) after this many ms and throw `CommandTimeoutError`. */
  timeoutMs?: number;
  /**
   * Called with each chunk of stdout as it arrives. Returning a promise holds the command back until it resolves
   * (backpressure: a slow consumer slows the command instead of queueing its output in memory).
   */
  onStdout?: (chunk: Buffer) => unknown;
  /** Called with each chunk of stderr as it arrives (a returned promise holds the command back, as onStdout). */
  onStderr?: (chunk: Buffer) => unknown;
  /** Written to the command's stdin, which is then closed. A Readable is streamed. */
  stdin?: string | Buffer | Readable;
  /** Aborting kills the command and rejects with `CommandAbortedError`. */
  signal?: AbortSignal;
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

export function describe(cmd: string | string[]): string {
  return typeof cmd === "string" ? cmd : JSON.stringify(cmd);
}

function toRequest(
  cmd: string | string[],
  env: Record<string, string>,
  o: CommandOptions,
  stdin: boolean,
): ExecRequest {
  checkEnv(env);
  const req: ExecRequest = { env, cwd: o.cwd, user: o.user, stdin };
  if (typeof cmd === "string") {
    if (cmd.includes("\0")) throw new ConfigError("cmd", "must not contain NUL bytes");
    return { ...req, shell: cmd };
  }
  if (!Array.isArray(cmd) || cmd.length === 0 || cmd.some((a) => typeof a !== "string" || a.includes("\0"))) {
    throw new ConfigError("cmd", "must be a shell string or a non-empty array of strings without NUL bytes");
  }
  return { ...req, argv: cmd };
}

function capOf(o: CommandOptions): number {
  const cap = o.maxOutputBytes ?? DEFAULT_MAX_OUTPUT;
  if (!Number.isInteger(cap) || cap < 0) throw new ConfigError("maxOutputBytes", "must be a non-negative integer");
  return cap;
}

/** Feed stdin and close it; errors after the command ended (it stopped reading) are ignored. */
async function feedStdin(h: ExecHandle, stdin: string | Buffer | Readable): Promise<void> {
  try {
    await h.started;
    await h.writeAllAndClose(stdin);
  } catch {
    // the command exited or the channel closed; its result says what happened
  }
}

function result(exit: { exitCode: number | null; signal: number | null }, out: Collector, err: Collector, t0: number) {
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
}

export async function runCommand(
  client: AgentClient,
  cmd: string | string[],
  baseEnv: Record<string, string>,
  opts: RunOptions = {},
): Promise<CommandResult> {
  const req = toRequest(cmd, { ...baseEnv, ...(opts.env ?? {}) }, opts, opts.stdin !== undefined);
  return follow(client, (handlers) => client.exec(req, handlers), describe(cmd), opts);
}

/**
 * Reattach to a process the agent runs (see `SpawnOptions.background`) and follow it to its end as `run` does: its
 * kept output replayed, then live output through the handlers (with backpressure), stdin streamed, its result.
 */
export function followProcess(client: AgentClient, pid: number, opts: RunOptions = {}): Promise<CommandResult> {
  checkPid(pid);
  return follow(client, (handlers) => client.attach(pid, handlers), `pid ${pid}`, opts);
}

function checkPid(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffffffff)
    throw new ConfigError("pid", "must be a positive integer");
}

/** A command started (or reattached) by `start`, followed to its end: output collected, timeout, abort, stdin. */
async function follow(
  client: AgentClient,
  start: (handlers: ExecHandlers) => ExecHandle,
  what: string,
  opts: RunOptions,
): Promise<CommandResult> {
  const { timeoutMs, signal } = opts;
  if (timeoutMs !== undefined && (!Number.isFinite(timeoutMs) || timeoutMs <= 0)) {
    throw new ConfigError("timeoutMs", `must be a positive number of milliseconds, got ${timeoutMs}`);
  }
  const cap = capOf(opts);
  if (signal?.aborted) throw new CommandAbortedError(what, "", "");
  const out = new Collector(cap);
  const err = new Collector(cap);
  const t0 = performance.now();
  const h = start({
    onStdout: (b) => {
      out.push(b);
      return opts.onStdout?.(b);
    },
    onStderr: (b) => {
      err.push(b);
      return opts.onStderr?.(b);
    },
  });
  if (opts.stdin !== undefined) void feedStdin(h, opts.stdin);
  let timer: NodeJS.Timeout | undefined;
  let grace: NodeJS.Timeout | undefined;
  let stopped: "timeout" | "abort" | null = null;
  const failure = () =>
    stopped === "timeout"
      ? new CommandTimeoutError(what, timeoutMs as number, out.text(), err.text(), out.truncated || err.truncated)
      : new CommandAbortedError(what, out.text(), err.text());
  const stop = (why: "timeout" | "abort") => {
    stopped ??= why;
    h.kill(9).catch(() => {});
    // should the guest never report the exit, do not wait for ever: give up on the stream after a grace period
    grace ??= setTimeout(() => client.abandon(h.streamId, failure()), 5000);
  };
  if (timeoutMs !== undefined) timer = setTimeout(() => stop("timeout"), timeoutMs);
  const onAbort = () => stop("abort");
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const exit = await h.exited;
    if (stopped) throw failure();
    return result(exit, out, err, t0);
  } finally {
    clearTimeout(timer);
    clearTimeout(grace);
    signal?.removeEventListener("abort", onAbort);
  }
}

/** A Readable fed by the agent; beyond `cap` unread bytes it drops output (and says so) instead of growing. */
class OutputStream extends Readable {
  dropped = false;
  constructor(private readonly cap: number) {
    super();
  }
  override _read(): void {}
  offer(b: Buffer): void {
    if (this.readableLength + b.length > this.cap) this.dropped = true;
    else this.push(b);
  }
}

/** A command running in the guest: stream its output, write its stdin, wait for it or kill it. */
export class Process {
  /** stdout as it arrives (also async-iterable). Unread output beyond `maxOutputBytes` is dropped. */
  readonly stdout: OutputStream;
  readonly stderr: OutputStream;
  /** The command's stdin; `end()` closes it. */
  readonly stdin: Writable;
  private readonly done: Promise<CommandResult>;

  constructor(
    private readonly handle: ExecHandle,
    /** Guest pid. */
    readonly pid: number,
    out: Collector,
    err: Collector,
    stdout: OutputStream,
    stderr: OutputStream,
    t0: number,
  ) {
    this.stdout = stdout;
    this.stderr = stderr;
    this.stdin = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        handle.writeStdin(chunk).then(() => cb(), cb);
      },
      final: (cb) => {
        handle.closeStdin().then(() => cb(), cb);
      },
    });
    this.stdin.on("error", () => {}); // writes after the command exited are not the caller's problem
    this.done = handle.exited.then(
      (exit) => {
        stdout.push(null);
        stderr.push(null);
        const r = result(exit, out, err, t0);
        return { ...r, truncated: r.truncated || stdout.dropped || stderr.dropped };
      },
      (e) => {
        // end the streams rather than destroy them with an error nobody may be listening for; wait() rejects
        stdout.push(null);
        stderr.push(null);
        throw e;
      },
    );
    this.done.catch(() => {});
  }

  /** Resolves when the command exits (a non-zero code is a result, not an error). */
  wait(): Promise<CommandResult> {
    return this.done;
  }

  /** Signal the command's whole process group (default SIGKILL). */
  kill(signal = 9): Promise<void> {
    return this.handle.kill(signal);
  }
}

export interface SpawnOptions extends CommandOptions {
  /**
   * Keep the process running when this client disconnects (default true): reattach later with
   * `vm.processes.connect(pid)`, which replays its latest output. With false it is killed with the connection.
   */
  background?: boolean;
}

/** Wire a handle (new or reattached) to streams and collectors, and wait until it has a pid. */
async function toProcess(
  start: (handlers: { onStdout: (b: Buffer) => void; onStderr: (b: Buffer) => void }) => ExecHandle,
  cap: number,
): Promise<Process> {
  const out = new Collector(cap);
  const err = new Collector(cap);
  const stdout = new OutputStream(cap);
  const stderr = new OutputStream(cap);
  const t0 = performance.now();
  const h = start({
    onStdout: (b) => {
      out.push(b);
      stdout.offer(b);
    },
    onStderr: (b) => {
      err.push(b);
      stderr.offer(b);
    },
  });
  const pid = await h.started;
  return new Process(h, pid, out, err, stdout, stderr, t0);
}

export function spawnCommand(
  client: AgentClient,
  cmd: string | string[],
  baseEnv: Record<string, string>,
  opts: SpawnOptions = {},
): Promise<Process> {
  const req = toRequest(cmd, { ...baseEnv, ...(opts.env ?? {}) }, opts, true);
  req.keep = opts.background !== false;
  return toProcess((handlers) => client.exec(req, handlers), capOf(opts));
}

/**
 * Start a command in the background and leave it at once: returns its pid. Its output (the latest 64 KiB) and its
 * exit wait for `vm.processes.connect(pid)`, even when it ends before this returns. `stdin` keeps its standard
 * input open for whoever attaches (else it reads nothing).
 */
export async function startDetached(
  client: AgentClient,
  cmd: string | string[],
  baseEnv: Record<string, string>,
  opts: CommandOptions & { stdin?: boolean } = {},
): Promise<number> {
  const req = toRequest(cmd, { ...baseEnv, ...(opts.env ?? {}) }, opts, opts.stdin === true);
  return client.exec({ ...req, keep: "detached" }).started;
}

/** Reattach to a process the agent runs (see `SpawnOptions.background`). */
export function attachProcess(
  client: AgentClient,
  pid: number,
  opts: { maxOutputBytes?: number } = {},
): Promise<Process> {
  checkPid(pid);
  return toProcess((handlers) => client.attach(pid, handlers), capOf(opts));
}
