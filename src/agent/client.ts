/** Multiplexed client of the guest agent: many commands at once over one byte stream. */
import { connect } from "node:net";
import { Duplex } from "node:stream";
import { AgentError, VMDiedError } from "../errors.js";
import {
  decodeFields,
  encodeFields,
  encodeFrame,
  F,
  FE,
  FF,
  type Field,
  type Frame,
  FrameDecoder,
  fieldString,
  fieldU32,
  MAX_PAYLOAD,
  NC,
  OUTPUT_WINDOW,
  P,
  ST,
  STDIN_WINDOW,
  T,
  TC,
  u32,
} from "./codec.js";

export interface PtySize {
  cols: number;
  rows: number;
}

export interface ExecRequest {
  /** Run as this guest user (name or uid); default root. */
  user?: string;
  /** Run on a new terminal of this size (stdout and stderr merge into it). */
  pty?: PtySize;
  /**
   * Keep running when this client goes away; output is kept (latest 64 KiB) until someone reattaches. `detached`:
   * and leave it at once, after its pid: its output and exit wait for a reattach (the handle gets no more).
   */
  keep?: boolean | "detached";
  /** argv to execute directly (PATH lookup in the guest). */
  argv?: string[];
  /** Shell command, run as `/bin/sh -c`. */
  shell?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** true: the caller will write stdin (and must close it); false: stdin is /dev/null. */
  stdin?: boolean;
}

export interface ExecExit {
  /** Exit code, or null when the process was killed by a signal. */
  exitCode: number | null;
  signal: number | null;
}

/**
 * Output handlers. A handler that cannot take more for now returns a promise: the bytes count as consumed (and the
 * agent may send more) only once it resolves, so a slow consumer slows the command down instead of queueing its
 * output in memory. A handler that throws fails its stream.
 */
export interface ExecHandlers {
  onStdout?: (chunk: Buffer) => unknown;
  onStderr?: (chunk: Buffer) => unknown;
}

/** One stream in flight: a command (ends with EXIT) or an operation (ends with DONE). Any ERROR ends it. */
interface Pending extends ExecHandlers {
  resolveStarted: (fields: Field[]) => void;
  rejectStarted: (e: Error) => void;
  resolveEnd: (end: ExecExit | Field[]) => void;
  rejectEnd: (e: Error) => void;
  started: boolean;
  /** stdin bytes sent and not yet acknowledged by WINDOW */
  inflight: number;
  /** writers waiting for the window to open (or the stream to end) */
  waiters: Array<() => void>;
  /** output window the agent applies to this stream (0: none, from an agent without output flow control) */
  outWin: number;
  /** output bytes consumed and not yet acknowledged */
  credit: number;
}

/** A stream the host can write to (stdin of a command, content of a file being written). */
class StreamWriter {
  constructor(
    protected readonly client: AgentClient,
    readonly streamId: number,
  ) {}

  /** Send stdin, never more than the stream's window ahead of what the guest consumed. */
  async writeStdin(data: Buffer | string): Promise<void> {
    const buf = typeof data === "string" ? Buffer.from(data) : data;
    for (let off = 0; off < buf.length; off += MAX_PAYLOAD) {
      const chunk = buf.subarray(off, off + MAX_PAYLOAD);
      if (!(await this.client.reserveStdin(this.streamId, chunk.length))) return; // the stream ended
      await this.client.send(T.STDIN, this.streamId, chunk);
    }
  }

  closeStdin(): Promise<void> {
    return this.client.send(T.STDIN, this.streamId, Buffer.alloc(0));
  }

  /** Write all of `data` (a Readable is streamed, at the pace the channel takes it), then close the stream. */
  async writeAllAndClose(data: string | Buffer | AsyncIterable<Buffer | string>): Promise<void> {
    if (typeof data === "string" || Buffer.isBuffer(data)) await this.writeStdin(data);
    else for await (const chunk of data) await this.writeStdin(chunk);
    await this.closeStdin();
  }
}

/** A non-exec operation: `started` (file read/write only) and `done` carry the agent's reply fields. */
export class OpHandle extends StreamWriter {
  constructor(
    client: AgentClient,
    streamId: number,
    readonly started: Promise<Field[]>,
    readonly done: Promise<Field[]>,
  ) {
    super(client, streamId);
  }
}

export class ExecHandle extends StreamWriter {
  constructor(
    client: AgentClient,
    streamId: number,
    /** Resolves with the guest pid once the process started. */
    readonly started: Promise<number>,
    /** Resolves when the process exited and all its output was delivered. */
    readonly exited: Promise<ExecExit>,
  ) {
    super(client, streamId);
  }

  /** Send a signal to the command's whole process group. */
  kill(signal = 9): Promise<void> {
    return this.client.send(T.SIGNAL, this.streamId, u32(signal));
  }

  /** Change the terminal size of a PTY command. */
  resize(size: PtySize): Promise<void> {
    const b = Buffer.alloc(4);
    b.writeUInt16BE(size.cols, 0);
    b.writeUInt16BE(size.rows, 2);
    return this.client.send(T.RESIZE, this.streamId, b);
  }
}

/**
 * Network configuration of the guest's first ethernet interface (NETCFG): an IPv4 address with its prefix
 * ("10.0.0.2/24"), the default gateway, the MAC ("aa:bb:cc:dd:ee:ff"), up to 3 DNS servers (written to
 * /etc/resolv.conf; none: a resolv.conf without servers), an optional MTU, up to 4 permanent neighbour entries.
 * `{ down: true }` takes the interface down and removes its addresses.
 */
export type NetConfig =
  | {
      addr: string;
      gateway: string;
      mac: string;
      dns: string[];
      mtu?: number;
      neighbors?: { ip: string; mac: string }[];
    }
  | { down: true };

export interface ConnectOptions {
  /** Give up connecting after this long (default 5000 ms). */
  timeoutMs?: number;
}

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
    const fields: Field[] = [];
    if (req.shell !== undefined) fields.push([F.SHELL, req.shell]);
    for (const a of req.argv ?? []) fields.push([F.ARG, a]);
    for (const [k, v] of Object.entries(req.env ?? {})) fields.push([F.ENV, `${k}=${v}`]);
    if (req.cwd !== undefined) fields.push([F.CWD, req.cwd]);
    if (req.stdin) fields.push([F.STDIN, Buffer.from([1])]);
    if (req.user !== undefined) fields.push([F.USER, req.user]);
    if (req.keep) fields.push([F.KEEP, Buffer.from([req.keep === "detached" ? 2 : 1])]);
    fields.push([F.OUTWIN, u32(OUTPUT_WINDOW)]);
    if (req.pty) {
      const b = Buffer.alloc(4);
      b.writeUInt16BE(req.pty.cols, 0);
      b.writeUInt16BE(req.pty.rows, 2);
      fields.push([F.PTY, b]);
    }
    const payload = encodeFields(fields);
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
    const fields: Field[] = [];
    if ("down" in cfg) {
      fields.push([NC.DOWN, Buffer.from([1])]);
    } else {
      fields.push([NC.ADDR, cfg.addr], [NC.GATEWAY, cfg.gateway], [NC.MAC, cfg.mac]);
      if (cfg.dns.length > 3) throw new RangeError("at most 3 DNS servers");
      for (const d of cfg.dns) fields.push([NC.DNS, d]);
      if (cfg.mtu !== undefined) {
        if (!Number.isInteger(cfg.mtu) || cfg.mtu < 68 || cfg.mtu > 65535) throw new RangeError(`bad MTU ${cfg.mtu}`);
        fields.push([NC.MTU, u32(cfg.mtu)]);
      }
      if ((cfg.neighbors?.length ?? 0) > 4) throw new RangeError("at most 4 neighbours");
      for (const n of cfg.neighbors ?? []) fields.push([NC.NEIGH, `${n.ip} ${n.mac}`]);
    }
    await this.op(T.NETCFG, fields).done;
  }

  /**
   * Open a TCP connection to `port` in the guest (default host 127.0.0.1, an IPv4 literal). Resolves once the
   * guest accepted it (rejects with the agent's error, e.g. ECONNREFUSED); the duplex carries the bytes both ways
   * with flow control. Ending the writable side half-closes the connection; destroying it closes the guest's
   * socket. A reset in the guest destroys the duplex with an error.
   */
  async tcpConnect(port: number, host?: string): Promise<Duplex> {
    if (this.closedError) throw this.closedError;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`bad port ${port}`);
    const fields: Field[] = [
      [TC.PORT, u32(port)],
      [TC.OUTWIN, u32(OUTPUT_WINDOW)],
    ];
    if (host !== undefined) fields.push([TC.HOST, host]);
    // output the consumer has not read yet counts as unconsumed: the agent's window stops the guest's sender
    let waiting: Array<() => void> = [];
    const release = () => {
      const w = waiting;
      waiting = [];
      for (const fn of w) fn();
    };
    let duplex: Duplex | null = null;
    const { stream, started, ended } = this.register({
      onStdout: (chunk) => {
        // data may follow STARTED in the same read: duplex is set before STARTED can be dispatched
        if (!duplex || duplex.destroyed || duplex.push(chunk)) return;
        return new Promise<void>((resolve) => waiting.push(resolve));
      },
    });
    const writer = new StreamWriter(this, stream);
    let finished = false;
    const d = new Duplex({
      read: release,
      write: (chunk: Buffer, _enc, cb) => {
        writer.writeStdin(chunk).then(() => cb(), cb);
      },
      final: (cb) => {
        writer.closeStdin().then(() => cb(), cb);
      },
      destroy: (err, cb) => {
        release();
        if (!finished) {
          finished = true;
          this.send(T.SIGNAL, stream, u32(9)).catch(() => {});
          this.abandon(stream, new AgentError("TCP stream closed by the host"));
        }
        cb(err);
      },
    });
    duplex = d;
    this.send(T.TCPCONNECT, stream, encodeFields(fields)).catch(() => {});
    try {
      await started;
    } catch (e) {
      finished = true;
      d.destroy();
      throw e;
    }
    ended.then(
      (end) => {
        finished = true;
        const code = (end as ExecExit).exitCode;
        if (code === 0) d.push(null);
        else d.destroy(new AgentError(`TCP connection to guest port ${port} was reset`));
      },
      (e: Error) => {
        finished = true;
        d.destroy(e);
      },
    );
    return d;
  }

  private register(handlers: ExecHandlers): {
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
