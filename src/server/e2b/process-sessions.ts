/**
 * Processes started (or reattached) through the E2B process service. The guest agent lets one client follow a
 * process at a time, so each process has one session here that follows it (with backpressure) and fans its events
 * out to the streams subscribed to it (the Start stream, later Connect streams). A session with nobody subscribed
 * drains output to nowhere, so the process never blocks on a full pipe. Stdin, when asked for, is a bounded pipe
 * fed by SendInput / StreamInput and closed by CloseStdin. A PTY session runs its program on a guest terminal
 * (`vm.pty`): its output is `pty` data, its input goes to the terminal, it can be resized.
 */
import { PassThrough } from "node:stream";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ExecExit } from "../../agent/client.js";
import type { PtyHandle } from "../../sandbox/pty.js";
import type { SmolVM } from "../../sandbox/smolvm.js";
import type { ProcessEventSchema } from "./gen/process/process_pb.js";

export type EventInit = MessageInitShape<typeof ProcessEventSchema>;

export interface SessionConfig {
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string;
}

/** Output queued per subscriber before the process is held back. */
const HIGH_WATER = 256 << 10;
/** Sessions one sandbox may have at once (running processes started or followed through this API). */
export const MAX_SESSIONS = 256;

/** One stream's queue of events, with backpressure towards the session. */
export class Subscriber {
  private readonly queue: { ev: EventInit; bytes: number }[] = [];
  private size = 0;
  private closed = false;
  private wake: (() => void) | null = null;
  private drained: (() => void)[] = [];

  push(ev: EventInit, bytes: number): Promise<void> | undefined {
    if (this.closed) return;
    this.queue.push({ ev, bytes });
    this.size += bytes;
    this.wake?.();
    if (this.size <= HIGH_WATER) return;
    return new Promise((r) => this.drained.push(r));
  }

  /** The next event; null after `idleMs` without one (time for a keepalive). Rejects when `signal` aborts. */
  async next(idleMs: number, signal: AbortSignal): Promise<EventInit | null> {
    for (;;) {
      signal.throwIfAborted();
      const item = this.queue.shift();
      if (item) {
        this.size -= item.bytes;
        if (this.size <= HIGH_WATER / 2) for (const r of this.drained.splice(0)) r();
        return item.ev;
      }
      const woke = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => done(false), idleMs);
        const onAbort = () => done(true);
        const done = (v: boolean) => {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          this.wake = null;
          resolve(v);
        };
        this.wake = () => done(true);
        signal.addEventListener("abort", onAbort, { once: true });
      });
      if (!woke && this.queue.length === 0) return null;
    }
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
    this.size = 0;
    for (const r of this.drained.splice(0)) r();
  }
}

export class ProcessSession {
  private readonly subscribers = new Set<Subscriber>();
  /** The end event, once the process has ended. */
  ended: EventInit | null = null;
  /** The terminal of a PTY session. */
  pty: PtyHandle | null = null;

  constructor(
    public pid: number,
    readonly config: SessionConfig,
    readonly tag: string | undefined,
    readonly stdin: PassThrough | null,
  ) {}

  subscribe(): Subscriber {
    const s = new Subscriber();
    if (this.ended) s.push(this.ended, 0);
    else this.subscribers.add(s);
    return s;
  }

  unsubscribe(s: Subscriber): void {
    s.close();
    this.subscribers.delete(s);
  }

  /** Hand an event to every subscriber; the promise settles when all of them have room again. */
  broadcast(ev: EventInit, bytes: number): Promise<unknown> | undefined {
    const waits: Promise<void>[] = [];
    for (const s of this.subscribers) {
      const w = s.push(ev, bytes);
      if (w) waits.push(w);
    }
    return waits.length ? Promise.all(waits) : undefined;
  }

  finish(ev: EventInit): void {
    this.ended = ev;
    this.broadcast(ev, 0);
    this.stdin?.destroy();
  }
}

const endEvent = (r: ExecExit): EventInit => ({
  event: {
    case: "end",
    value: {
      exitCode: r.signal ? -1 : (r.exitCode ?? -1),
      exited: r.signal === null,
      status: r.signal ? `signal: ${r.signal}` : `exit status ${r.exitCode}`,
    },
  },
});

const failedEvent = (e: unknown): EventInit => ({
  event: {
    case: "end",
    value: { exitCode: -1, exited: false, status: "error", error: (e as Error).message ?? String(e) },
  },
});

const data = (stream: "stdout" | "stderr" | "pty", value: Buffer): EventInit => ({
  event: { case: "data", value: { output: { case: stream, value } } },
});

/** The sessions of every sandbox, by VM id and pid. */
export class ProcessRegistry {
  private readonly byVm = new Map<string, Map<number, ProcessSession>>();

  private sessions(vm: SmolVM): Map<number, ProcessSession> {
    let m = this.byVm.get(vm.vmId);
    if (!m) {
      m = new Map();
      this.byVm.set(vm.vmId, m);
    }
    return m;
  }

  get(vm: SmolVM, pid: number): ProcessSession | undefined {
    return this.byVm.get(vm.vmId)?.get(pid);
  }

  byTag(vm: SmolVM, tag: string): ProcessSession | undefined {
    for (const s of this.byVm.get(vm.vmId)?.values() ?? []) if (s.tag === tag) return s;
    return undefined;
  }

  all(vm: SmolVM): ProcessSession[] {
    return [...(this.byVm.get(vm.vmId)?.values() ?? [])];
  }

  /** Start a command in the background and follow it; the returned subscriber sees every event from the start. */
  async start(
    vm: SmolVM,
    config: SessionConfig,
    opts: { user?: string; stdin: boolean; tag?: string },
  ): Promise<{ session: ProcessSession; subscriber: Subscriber }> {
    const sessions = this.sessions(vm);
    if (sessions.size >= MAX_SESSIONS) throw new RangeError(`at most ${MAX_SESSIONS} processes per sandbox`);
    const pid = await vm.processes.start([config.cmd, ...config.args], {
      env: config.envs,
      cwd: config.cwd,
      user: opts.user,
      stdin: opts.stdin,
    });
    const stdin = opts.stdin ? new PassThrough({ highWaterMark: 1 << 20 }) : null;
    stdin?.on("error", () => {});
    const session = new ProcessSession(pid, config, opts.tag, stdin);
    const subscriber = session.subscribe();
    this.follow(vm, session);
    return { session, subscriber };
  }

  /** Run a program on a new guest terminal; the returned subscriber sees every event from the start. */
  async startPty(
    vm: SmolVM,
    config: SessionConfig,
    opts: { user?: string; cols: number; rows: number; tag?: string },
  ): Promise<{ session: ProcessSession; subscriber: Subscriber }> {
    const sessions = this.sessions(vm);
    if (sessions.size >= MAX_SESSIONS) throw new RangeError(`at most ${MAX_SESSIONS} processes per sandbox`);
    const session = new ProcessSession(0, config, opts.tag, null);
    const subscriber = session.subscribe();
    const pty = await vm.pty.create({
      cmd: [config.cmd, ...config.args],
      env: config.envs,
      cwd: config.cwd,
      user: opts.user,
      cols: opts.cols,
      rows: opts.rows,
      onData: (b) => session.broadcast(data("pty", b), b.length),
    });
    session.pid = pty.pid;
    session.pty = pty;
    sessions.set(pty.pid, session);
    this.settle(vm, session, pty.wait());
    return { session, subscriber };
  }

  /** The session of a running process: this server's, or a new one following a process started elsewhere. */
  async attach(vm: SmolVM, pid: number): Promise<ProcessSession | null> {
    const known = this.get(vm, pid);
    if (known) return known;
    if (this.sessions(vm).size >= MAX_SESSIONS) throw new RangeError(`at most ${MAX_SESSIONS} processes per sandbox`);
    const info = (await vm.processes.list()).find((p) => p.pid === pid);
    if (!info || (!info.running && info.exitCode === undefined)) return null;
    const session = new ProcessSession(pid, { cmd: info.command, args: [], envs: {} }, undefined, null);
    this.follow(vm, session);
    return session;
  }

  private follow(vm: SmolVM, session: ProcessSession): void {
    this.sessions(vm).set(session.pid, session);
    const done = vm.processes.follow(session.pid, {
      maxOutputBytes: 0,
      onStdout: (b) => session.broadcast(data("stdout", b), b.length),
      onStderr: (b) => session.broadcast(data("stderr", b), b.length),
      ...(session.stdin ? { stdin: session.stdin } : {}),
    });
    this.settle(vm, session, done);
  }

  /** When the process ends: its end event to every subscriber, and the session forgotten. */
  private settle(vm: SmolVM, session: ProcessSession, done: Promise<Parameters<typeof endEvent>[0]>): void {
    const sessions = this.sessions(vm);
    done
      .then(
        (r) => session.finish(endEvent(r)),
        (e: unknown) => session.finish(failedEvent(e)),
      )
      .finally(() => {
        if (sessions.get(session.pid) === session) sessions.delete(session.pid);
        if (sessions.size === 0) this.byVm.delete(vm.vmId);
      });
  }
}
