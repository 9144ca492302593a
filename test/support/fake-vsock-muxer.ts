/**
 * A stand-in for Firecracker's vsock device on the host side: the Unix socket (`uds_path`) where each connection asks
 * for a guest port with `CONNECT <port>\n`. Firecracker answers `OK <host port>\n` and then relays the guest's port,
 * or, when nothing in the guest listens on that port (the guest is still booting), closes the connection without a
 * word. This fake does the same: the first `closeFirst` connections are closed unanswered, and so is every one while
 * `guestListening` is false (set it with `setGuestListening`); the others get `answer`
 * (by default `OK 1073741824\n`), followed in the same write by `behind` (bytes "the guest" sent at once), and are then
 * piped to `target` (a real `smolvm-agent serve --listen` socket: the guest agent) when given.
 */
import { connect, createServer, type Server, type Socket } from "node:net";

export interface FakeVsockMuxerOptions {
  /** Connections closed without an answer before the first one is answered. */
  closeFirst?: number;
  /** Whether the guest listens on the port from the start (default true). */
  guestListening?: boolean;
  /** The answer line (newline included). */
  answer?: string;
  /** Bytes written right behind the answer, in the same write. */
  behind?: Buffer;
  /** The guest agent's socket: answered connections are piped to it. */
  target?: string;
}

export interface FakeVsockMuxer {
  path: string;
  /** The CONNECT lines received, newline excluded, one per connection that sent one. */
  lines: string[];
  /** Connections accepted so far. */
  connections(): number;
  /** Connections answered (and, with a target, piped) so far. */
  answered(): number;
  setGuestListening(on: boolean): void;
  /** Break every open connection, as Firecracker's vsock device does when it takes a snapshot. */
  resetConnections(): void;
  /** The first bytes (up to 4 KiB) the host sent on the first answered connection, after its CONNECT line. */
  fromHost(): Buffer;
  close(): Promise<void>;
}

const MAX_LINE = 64;

export async function startFakeVsockMuxer(path: string, opts: FakeVsockMuxerOptions = {}): Promise<FakeVsockMuxer> {
  const lines: string[] = [];
  const sockets = new Set<Socket>();
  let accepted = 0;
  let answered = 0;
  let guestListening = opts.guestListening ?? true;
  let fromHost = Buffer.alloc(0);
  const record = (d: Buffer) => {
    if (fromHost.length < 4096) fromHost = Buffer.concat([fromHost, d]).subarray(0, 4096);
  };
  const server: Server = createServer((c) => {
    accepted++;
    sockets.add(c);
    c.on("close", () => sockets.delete(c));
    c.on("error", () => {});
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        if (buf.length > MAX_LINE) c.destroy();
        return;
      }
      c.off("data", onData);
      c.pause();
      lines.push(buf.subarray(0, nl).toString("latin1"));
      const rest = buf.subarray(nl + 1); // what the host sent right behind its CONNECT line: for the guest
      if (!guestListening || lines.length <= (opts.closeFirst ?? 0)) {
        c.end(); // nothing listens on the guest port yet
        return;
      }
      if (++answered === 1) {
        record(rest);
        c.on("data", record);
      }
      const hello = Buffer.concat([
        Buffer.from(opts.answer ?? "OK 1073741824\n", "latin1"),
        opts.behind ?? Buffer.alloc(0),
      ]);
      const target = opts.target;
      if (!target) {
        c.write(hello);
        c.resume();
        return;
      }
      const g = connect(target);
      sockets.add(g);
      g.on("close", () => {
        sockets.delete(g);
        c.destroy();
      });
      g.on("error", () => c.destroy());
      c.on("close", () => g.destroy());
      g.on("connect", () => {
        c.write(hello);
        if (rest.length) g.write(rest);
        c.pipe(g);
        g.pipe(c);
        c.resume();
      });
    };
    c.on("data", onData);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  return {
    path,
    lines,
    connections: () => accepted,
    answered: () => answered,
    setGuestListening: (on: boolean) => {
      guestListening = on;
    },
    fromHost: () => fromHost,
    resetConnections: () => {
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
