/** A minimal QMP client: connect, negotiate capabilities, execute commands one at a time. */
import { connect, type Socket } from "node:net";
import { SmolVMError } from "../../errors.js";

export class QmpClient {
  private buf = "";
  private waiters: Array<{ resolve: (v: unknown) => void; reject: (e: Error) => void }> = [];
  /** The connection is gone (QEMU exited): every later command fails at once instead of waiting forever. */
  private closed = false;
  private greeting: Promise<void>;

  constructor(private readonly sock: Socket) {
    let greeted: () => void = () => {};
    this.greeting = new Promise((r) => {
      greeted = r;
    });
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => {
      this.buf += d;
      if (this.buf.length > 1 << 20) {
        sock.destroy(new Error("QMP reply too large"));
        return;
      }
      let nl = this.buf.indexOf("\n");
      while (nl >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        nl = this.buf.indexOf("\n");
        if (!line) continue;
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        if ("QMP" in msg) greeted();
        else if ("return" in msg) this.waiters.shift()?.resolve(msg.return);
        else if ("error" in msg) {
          const e = msg.error as { desc?: string };
          this.waiters.shift()?.reject(new SmolVMError(`QMP: ${e.desc ?? "error"}`));
        }
      }
    });
    const fail = (e?: Error) => {
      this.closed = true;
      const why = e ? `QMP at ${sock.remoteAddress ?? "its socket"}: ${e.message}` : "QMP connection closed";
      for (const w of this.waiters.splice(0)) w.reject(new SmolVMError(why));
    };
    sock.on("close", () => fail());
    sock.on("error", fail);
  }

  static async connect(path: string, timeoutMs = 15_000): Promise<QmpClient> {
    const client = await QmpClient.greeted(path, timeoutMs);
    try {
      await client.execute("qmp_capabilities");
    } catch (e) {
      client.close();
      throw e;
    }
    return client;
  }

  /** Connected and greeted, capabilities not yet negotiated. */
  private static async greeted(path: string, timeoutMs: number): Promise<QmpClient> {
    const sock = connect(path);
    const client = new QmpClient(sock);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        new Promise<void>((resolve, reject) => {
          sock.once("error", reject);
          client.greeting.then(resolve);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new SmolVMError(`QMP at ${path} did not greet`)), timeoutMs);
        }),
      ]);
      return client;
    } catch (e) {
      sock.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      // a socket closed between two commands (QEMU exited while we polled it) emits nothing more: without this, the
      // command would wait for an answer that never comes
      if (this.closed || this.sock.destroyed) {
        reject(new SmolVMError("QMP connection closed"));
        return;
      }
      this.waiters.push({ resolve, reject });
      this.sock.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  close(): void {
    this.sock.destroy();
  }

  /** Whether the connection is still open. */
  get open(): boolean {
    return !this.closed && !this.sock.destroyed;
  }

  /** Let the process exit while this connection is open (one held for later use). */
  unref(): void {
    this.sock.unref();
  }
}

/**
 * Connect, run one command, disconnect. Nothing waits for the greeting: `qmp_capabilities` and the command are written
 * at once (QEMU reads them after greeting), which saves two round trips through QEMU's main loop.
 */
export async function qmpOnce(
  path: string,
  command: string,
  args?: Record<string, unknown>,
  timeoutMs = 15_000,
): Promise<unknown> {
  const q = new QmpClient(connect(path));
  let timer: NodeJS.Timeout | undefined;
  try {
    const caps = q.execute("qmp_capabilities");
    const result = q.execute(command, args);
    result.catch(() => {}); // a failed connection or negotiation is the error to report
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new SmolVMError(`QMP at ${path} did not answer ${command}`)), timeoutMs);
    });
    await Promise.race([caps, timeout]);
    return await Promise.race([result, timeout]);
  } finally {
    clearTimeout(timer);
    q.close();
  }
}

/**
 * QMP connections of this process, negotiated and held open from a pause to the resume that follows it (`pause`'s
 * `resumeSoon`): a pool VM's hand-out then sends `cont` alone, without a connect, greeting and negotiation. QEMU
 * serves one QMP client at a time, so each is closed at that resume (or the VM's kill).
 */
const held = new Map<string, QmpClient>();

/** `stop`, keeping the connection for the `cont` that follows (`contReleasing`). */
export async function stopAndHold(path: string): Promise<void> {
  const q = await QmpClient.connect(path);
  try {
    await q.execute("stop");
  } catch (e) {
    q.close();
    throw e;
  }
  q.unref(); // the process may end meanwhile
  releaseHeld(path);
  held.set(path, q);
}

/** `cont`, on the held connection if there is one (closed after), else on a new one. */
export async function contReleasing(path: string): Promise<void> {
  const q = held.get(path);
  held.delete(path);
  if (q?.open) {
    try {
      await q.execute("cont");
      return;
    } finally {
      q.close();
    }
  }
  q?.close();
  await qmpOnce(path, "cont");
}

export function releaseHeld(path: string): void {
  held.get(path)?.close();
  held.delete(path);
}
