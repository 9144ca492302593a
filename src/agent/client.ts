/** Multiplexed client of the guest agent: many commands at once over one byte stream. */
import { connect } from "node:net";
import type { Duplex } from "node:stream";
import { AgentError, VMDiedError } from "../errors.js";
import {
  decodeFields,
  encodeFields,
  encodeFrame,
  FE,
  FF,
  type Field,
  type Frame,
  FrameDecoder,
  fieldString,
  fieldU32,
  MAX_PAYLOAD,
  OUTPUT_WINDOW,
  P,
  ST,
  STDIN_WINDOW,
  T,
  u32,
} from "./codec.js";
import {
  type ConnectOptions,
  type ExecExit,
  ExecHandle,
  type ExecHandlers,
  type ExecRequest,
  execFields,
  type NetConfig,
  netConfigFields,
  OpHandle,
  type Pending,
} from "./handles.js";
import { openTcpStream } from "./tcp-stream.js";

export type {
  ConnectOptions,
  ExecExit,
  ExecHandlers,
  ExecRequest,
  NetConfig,
  PtySize,
} from "./handles.js";
export { ExecHandle, OpHandle } from "./handles.js";

const isThenable = (v: unknown): v is PromiseLike<unknown> =>
  typeof v === "object" && v !== null && typeof (v as { then?: unknown }).then === "function";

/** Output handed to handlers that have not consumed it yet, across streams, above which reading stops. */
const MAX_UNCONSUMED = 32 << 20;

export class AgentClient {
  private unconsumed = 0;
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private readonly pings = new Map<number, () => void>();
  private base = 0x01000000;
  private next = 1;
  private closedError: Error | null = null;
  private welcome: Promise<void>;
  private onClose: Array<(e: Error) => void> = [];
  private shutdownAck: (() => void) | null = null;

  /** Wrap a connected byte stream (a socket, or a child's stdio). `viaProxy`: the peer is the per-VM proxy, which greets with WELCOME. */
  constructor(
    private readonly sock: Duplex,
    viaProxy: boolean,
  ) {
    let resolveWelcome: () => void = () => {};
    let rejectWelcome: (e: Error) => void = () => {};
    this.welcome = viaProxy
      ? new Promise((res, rej) => {
          resolveWelcome = res;
          rejectWelcome = rej;
        })
      : Promise.resolve();
    this.welcome.catch(() => {});
    sock.on("data", (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (e) {
        this.fail(e as Error);
        sock.destroy();
        return;
      }
      for (const f of frames) {
        if (f.type === T.WELCOME) {
          const base = fieldU32(this.safeFields(f.payload), 1);
          if (base === undefined || base === 0 || (base & 0xffffff) !== 0) {
            this.fail(new AgentError("malformed WELCOME from the proxy"));
            sock.destroy();
            return;
          }
          this.base = base;
          resolveWelcome();
          continue;
        }
        this.dispatch(f);
      }
      this.holdLoop();
    });
    const closed = (err?: Error) => {
      const e = new VMDiedError(`the agent channel closed${err ? `: ${err.message}` : ""}`);
      rejectWelcome(e);
      this.fail(e);
    };
    sock.on("error", closed);
    sock.on("close", () => closed());
    this.holdLoop();
  }

  /** Connect to a VM's agent socket (the proxy). */
  static connect(path: string, opts: ConnectOptions = {}): Promise<AgentClient> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    return new Promise((resolve, reject) => {
      const sock = connect(path);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new VMDiedError(`timed out connecting to the agent at ${path}`));
      }, timeoutMs);
      sock.once("error", (e) => {
        clearTimeout(timer);
        reject(new VMDiedError(`cannot connect to the agent at ${path}: ${e.message}`));
      });
      sock.once("connect", () => {
        const client = new AgentClient(sock, true);
        client.welcome.then(
          () => {
            clearTimeout(timer);
            resolve(client);
          },
          (e) => {
            clearTimeout(timer);
            reject(e);
          },
        );
      });
    });
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Call `fn` once when the channel closes. */
  onClosed(fn: (e: Error) => void): void {
    if (this.closedError) fn(this.closedError);
    else this.onClose.push(fn);
  }

  private safeFields(p: Buffer): Field[] {
    try {
      return decodeFields(p);
    } catch {
      return [];
    }
  }

  /**
   * The connection keeps this process running only while a request waits for the guest: a script that created a
   * kept VM and ran its commands ends, as it would without the open channel.
   */
  private holdLoop(): void {
    const s = this.sock as Duplex & { ref?: () => void; unref?: () => void };
    if (this.pending.size > 0) s.ref?.();
    else s.unref?.();
  }

  private fail(e: Error): void {
    if (this.closedError) return;
    this.closedError = e;
    for (const p of this.pending.values()) {
      p.rejectStarted(e);
      p.rejectEnd(e);
      this.wake(p);
    }
    this.pending.clear();
    for (const fn of this.onClose.splice(0)) fn(e);
  }

  private dispatch(f: Frame): void {
    if (f.type === T.PONG) {
      if (f.payload.length === 4) {
        const done = this.pings.get(f.payload.readUInt32BE(0));
        done?.();
      }
      return;
    }
    if (f.type === T.HELLO) return;
    if (f.type === T.SHUTDOWN) {
      this.shutdownAck?.();
      return;
    }
    const p = this.pending.get(f.stream);
    if (!p) return; // late output of a released stream
    switch (f.type) {
      case T.STARTED: {
        p.started = true;
        const fields = this.safeFields(f.payload);
        p.outWin = fieldU32(fields, ST.OUTWIN) ?? 0;
        p.resolveStarted(fields);
        return;
      }
      case T.WINDOW:
        if (f.payload.length === 4) {
          p.inflight = Math.max(0, p.inflight - f.payload.readUInt32BE(0));
          this.wake(p);
        }
        return;
      case T.STDOUT:
      case T.STDERR: {
        let r: unknown;
        try {
          r = (f.type === T.STDOUT ? p.onStdout : p.onStderr)?.(f.payload);
        } catch (e) {
          // a handler refused what the guest sent (malformed, too much): that stream fails, nothing else
          this.abandon(f.stream, e instanceof Error ? e : new AgentError(String(e)));
          return;
        }
        const n = f.payload.length;
        if (isThenable(r)) {
          // a guest that ignores its output window cannot grow our memory either: past the mark, stop reading
          this.unconsumed += n;
          if (this.unconsumed > MAX_UNCONSUMED && !this.sock.isPaused()) this.sock.pause();
          const settle = () => {
            this.unconsumed -= n;
            if (this.unconsumed <= MAX_UNCONSUMED / 2 && this.sock.isPaused()) this.sock.resume();
          };
          r.then(
            () => {
              settle();
              this.consumed(f.stream, p, n);
            },
            (e: unknown) => {
              settle();
              this.abandon(f.stream, e instanceof Error ? e : new AgentError(String(e)));
            },
          );
        } else this.consumed(f.stream, p, n);
        return;
      }
      case T.EXIT: {
        this.pending.delete(f.stream);
        this.wake(p);
        if (f.payload.length !== 8) {
          p.rejectEnd(new AgentError("malformed EXIT frame"));
          return;
        }
        const code = f.payload.readInt32BE(0);
        const sig = f.payload.readInt32BE(4);
        p.resolveEnd({ exitCode: code < 0 ? null : code, signal: sig > 0 ? sig : null });
        return;
      }
      case T.DONE:
        this.pending.delete(f.stream);
        this.wake(p);
        p.resolveStarted([]);
        p.resolveEnd(this.safeFields(f.payload));
        return;
      case T.ERROR: {
        this.pending.delete(f.stream);
        this.wake(p);
        const fields = this.safeFields(f.payload);
        const msg = (fieldString(fields, FE.MSG) ?? "unknown error").slice(0, 512);
        const err = new AgentError(msg, fieldU32(fields, FE.CODE));
        p.rejectStarted(err);
        p.rejectEnd(err);
        return;
      }
    }
  }

  /** Acknowledge consumed output (in batches of a quarter window), so the agent sends more. */
  private consumed(stream: number, p: Pending, n: number): void {
    if (!p.outWin || this.pending.get(stream) !== p) return;
    p.credit += n;
    if (p.credit >= p.outWin / 4) {
      this.send(T.WINDOW, stream, u32(p.credit)).catch(() => {});
      p.credit = 0;
    }
  }

  /**
   * Wait until `n` more stdin bytes fit in the stream's window, and count them. False when the stream is gone
   * (its command ended): the caller drops the data, as the agent would.
   */
  async reserveStdin(stream: number, n: number): Promise<boolean> {
    for (;;) {
      const p = this.pending.get(stream);
      if (!p) return false;
      if (p.inflight + n <= STDIN_WINDOW || p.inflight === 0) {
        p.inflight += n;
        return true;
      }
      await new Promise<void>((resolve) => p.waiters.push(resolve));
    }
  }

  private wake(p: Pending): void {
    for (const w of p.waiters.splice(0)) w();
  }

  /** Stop listening to a stream: its promises reject with `reason`; anything the guest still sends is ignored. */
  abandon(stream: number, reason: Error): void {
    const p = this.pending.get(stream);
    if (!p) return;
    this.pending.delete(stream);
    this.holdLoop();
    this.wake(p);
    p.rejectStarted(reason);
    p.rejectEnd(reason);
  }

  /** Write one frame, waiting for the socket to drain when its buffer is full. */
  async send(type: number, stream: number, payload?: Buffer): Promise<void> {
    if (this.closedError) throw this.closedError;
    if (!this.sock.write(encodeFrame(type, stream, payload))) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.sock.off("drain", done);
          this.sock.off("close", done);
          resolve();
        };
        this.sock.once("drain", done);
        this.sock.once("close", done);
      });
    }
  }

  private allocStream(): number {
    for (let i = 0; i < 0xffffff; i++) {
      const id = (this.base | this.next) >>> 0;
      this.next = this.next >= 0xffffff ? 1 : this.next + 1;
      if (!this.pending.has(id)) return id;
    }
    throw new AgentError("no free stream ids");
  }

  /** Ping the agent; resolves with the round-trip time in ms. */
  async ping(timeoutMs = 5000): Promise<number> {
    const nonce = (Math.random() * 0xffffffff) >>> 0;
    const t0 = performance.now();
    const b = Buffer.alloc(4);
    b.writeUInt32BE(nonce);
    const got = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(nonce);
        reject(new AgentError(`agent did not answer a ping within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(nonce, () => {
        clearTimeout(timer);
        this.pings.delete(nonce);
        resolve();
      });
      this.onClosed((e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    got.catch(() => {});
    await this.send(T.PING, this.base, b);
    await got;
    return performance.now() - t0;
  }

  /**
   * Wait until the guest agent answers. Pings are repeated every `intervalMs` because bytes written before the
   * guest opens its port may wait in QEMU; extra answers are ignored.
   */
  async waitReady(timeoutMs: number, intervalMs = 25): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const nonce = (Math.random() * 0xffffffff) >>> 0;
    const b = Buffer.alloc(4);
    b.writeUInt32BE(nonce);
    let answered = false;
    const got = new Promise<void>((resolve) => this.pings.set(nonce, resolve)).then(() => {
      answered = true;
    });
    try {
      while (!answered) {
        if (this.closedError) throw this.closedError;
        if (Date.now() > deadline) throw new AgentError(`the guest agent did not answer within ${timeoutMs} ms`);
        await this.send(T.PING, this.base, b);
        await Promise.race([got, new Promise((r) => setTimeout(r, intervalMs))]);
      }
    } finally {
      this.pings.delete(nonce);
    }
  }

  /** Start a command. Output arrives through the handlers; `exited` settles after the last byte. */
  exec(req: ExecRequest, handlers: ExecHandlers = {}): ExecHandle {
    if (this.closedError) throw this.closedError;
    const payload = encodeFields(execFields(req));
    if (payload.length > MAX_PAYLOAD) throw new AgentError("command, env and cwd together exceed 64 KiB");
    const { stream, started, ended } = this.register(handlers);
    this.send(T.EXEC, stream, payload).catch(() => {});
    const pid = started.then((fields) => fieldU32(fields, 1) ?? 0);
    pid.catch(() => {});
    return new ExecHandle(this, stream, pid, ended as Promise<ExecExit>);
  }

  /** Attach to a command the agent is running (or finished while detached): its kept output, then live. */
  attach(pid: number, handlers: ExecHandlers = {}): ExecHandle {
    if (this.closedError) throw this.closedError;
    const { stream, started, ended } = this.register(handlers);
    this.send(
      T.CONNECT,
      stream,
      encodeFields([
        [P.PID, u32(pid)],
        [P.OUTWIN, u32(OUTPUT_WINDOW)],
      ]),
    ).catch(() => {});
    const gotPid = started.then((fields) => fieldU32(fields, 1) ?? 0);
    gotPid.catch(() => {});
    return new ExecHandle(this, stream, gotPid, ended as Promise<ExecExit>);
  }

  /**
   * Start a non-exec operation (files, env). Data frames go to `onData` (which may return a promise, as output
   * handlers do). A file read gets the output window.
   */
  op(type: number, fields: Field[], onData?: (chunk: Buffer) => unknown): OpHandle {
    if (this.closedError) throw this.closedError;
    const payload = encodeFields(type === T.FREAD ? [...fields, [FF.OUTWIN, u32(OUTPUT_WINDOW)]] : fields);
    if (payload.length > MAX_PAYLOAD) throw new AgentError("request exceeds 64 KiB");
    const { stream, started, ended } = this.register({ onStdout: onData });
    this.send(type, stream, payload).catch(() => {});
    return new OpHandle(this, stream, started, ended as Promise<Field[]>);
  }

  /**
   * Configure the guest's network interface (sent after every boot and restore). Throws the agent's error (an
   * `AgentError` whose message names the step that failed, with its errno as `code`). Outside a guest (an agent
   * running on the host for tests) the request is checked and nothing is changed.
   */
  async netConfig(cfg: NetConfig): Promise<void> {
    await this.op(T.NETCFG, netConfigFields(cfg)).done;
  }

  /**
   * Open a TCP connection to `port` in the guest (default host 127.0.0.1, an IPv4 literal). Resolves once the
   * guest accepted it (rejects with the agent's error, e.g. ECONNREFUSED); the duplex carries the bytes both ways
   * with flow control. Ending the writable side half-closes the connection; destroying it closes the guest's
   * socket. A reset in the guest destroys the duplex with an error (src/agent/tcp-stream.ts).
   */
  async tcpConnect(port: number, host?: string): Promise<Duplex> {
    if (this.closedError) throw this.closedError;
    return openTcpStream(this, port, host);
  }

  /** @internal A new stream with its handlers, waiting for its STARTED and its end. */
  register(handlers: ExecHandlers): {
    stream: number;
    started: Promise<Field[]>;
    ended: Promise<ExecExit | Field[]>;
  } {
    const stream = this.allocStream();
    const d = {} as Pending;
    const started = new Promise<Field[]>((resolve, reject) => {
      d.resolveStarted = resolve;
      d.rejectStarted = reject;
    });
    const ended = new Promise<ExecExit | Field[]>((resolve, reject) => {
      d.resolveEnd = resolve;
      d.rejectEnd = reject;
    });
    // callers may await only one of the two; neither may become an unhandled rejection
    started.catch(() => {});
    ended.catch(() => {});
    this.pending.set(
      stream,
      Object.assign(d, handlers, { started: false, inflight: 0, waiters: [], outWin: 0, credit: 0 }),
    );
    this.holdLoop();
    return { stream, started, ended };
  }

  /**
   * Ask the guest to kill its processes, sync and remount its root read-only, then power off. Resolves once the
   * agent confirms the disk is consistent (or the channel closed); the VMM may then be killed without data loss.
   */
  async shutdown(timeoutMs = 5000): Promise<boolean> {
    const acked = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.shutdownAck = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.onClosed(() => {
        clearTimeout(timer);
        resolve(false);
      });
    });
    await this.send(T.SHUTDOWN, this.base);
    return acked;
  }

  close(): void {
    this.sock.end();
    this.sock.destroy();
  }
}
