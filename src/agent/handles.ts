/**
 * The types of the agent client's requests and replies, and the handles of streams in flight: what the SDK's modules
 * use of the guest protocol (src/agent/client.ts multiplexes them over one channel; docs/PROTOCOL.md).
 */
import { F, type Field, MAX_PAYLOAD, NC, OUTPUT_WINDOW, T, u32 } from "./codec.js";

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
export interface Pending extends ExecHandlers {
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

/** What a stream's writer needs of the client: the stdin window, and sending a frame. */
export interface StreamChannel {
  reserveStdin(stream: number, n: number): Promise<boolean>;
  send(type: number, stream: number, payload?: Buffer): Promise<void>;
}

/** A stream the host can write to (stdin of a command, content of a file being written). */
export class StreamWriter {
  constructor(
    protected readonly client: StreamChannel,
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
    client: StreamChannel,
    streamId: number,
    readonly started: Promise<Field[]>,
    readonly done: Promise<Field[]>,
  ) {
    super(client, streamId);
  }
}

export class ExecHandle extends StreamWriter {
  constructor(
    client: StreamChannel,
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

/** The fields of an EXEC request. */
export function execFields(req: ExecRequest): Field[] {
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
  return fields;
}

/** The fields of a NETCFG request (throws a RangeError on too many DNS servers or neighbours, or a bad MTU). */
export function netConfigFields(cfg: NetConfig): Field[] {
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
  return fields;
}
