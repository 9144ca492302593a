/** A TCP connection to a port in the guest, as a Node duplex over one agent stream (TCPCONNECT). */
import { Duplex } from "node:stream";
import { AgentError } from "../errors.js";
import { encodeFields, type Field, OUTPUT_WINDOW, T, TC, u32 } from "./codec.js";
import { type ExecExit, type ExecHandlers, type StreamChannel, StreamWriter } from "./handles.js";

/** What the TCP stream needs of the client. */
export interface TcpChannel extends StreamChannel {
  register(handlers: ExecHandlers): { stream: number; started: Promise<Field[]>; ended: Promise<ExecExit | Field[]> };
  abandon(stream: number, reason: Error): void;
}

/**
 * Open a TCP connection to `port` in the guest (default host 127.0.0.1, an IPv4 literal). Resolves once the
 * guest accepted it (rejects with the agent's error, e.g. ECONNREFUSED); the duplex carries the bytes both ways
 * with flow control. Ending the writable side half-closes the connection; destroying it closes the guest's
 * socket. A reset in the guest destroys the duplex with an error.
 */
export async function openTcpStream(ch: TcpChannel, port: number, host?: string): Promise<Duplex> {
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
  const { stream, started, ended } = ch.register({
    onStdout: (chunk) => {
      // data may follow STARTED in the same read: duplex is set before STARTED can be dispatched
      if (!duplex || duplex.destroyed || duplex.push(chunk)) return;
      return new Promise<void>((resolve) => waiting.push(resolve));
    },
  });
  const writer = new StreamWriter(ch, stream);
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
        ch.send(T.SIGNAL, stream, u32(9)).catch(() => {});
        ch.abandon(stream, new AgentError("TCP stream closed by the host"));
      }
      cb(err);
    },
  });
  duplex = d;
  ch.send(T.TCPCONNECT, stream, encodeFields(fields)).catch(() => {});
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
