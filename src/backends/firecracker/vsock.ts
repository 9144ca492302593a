/**
 * Host-initiated vsock through Firecracker: connect to the device's Unix socket (`uds_path`), ask for a guest port
 * with `CONNECT <port>\n`, read Firecracker's one-line answer `OK <host_port>\n`; from then on the stream is the
 * guest's port. The answer is read with a bound and a deadline, and bytes the guest sent right after it stay in the
 * socket for the caller.
 */
import { connect, type Socket } from "node:net";
import { SmolVMError } from "../../errors.js";
import { printable } from "./api.js";

/** Longest answer line accepted, newline excluded (`OK 4294967295` is 13 bytes). */
export const MAX_REPLY_LINE = 64;
export const DEFAULT_VSOCK_TIMEOUT_MS = 5_000;

/**
 * The handshake failed. `reason`: `closed` (Firecracker hung up without answering: typically nothing listens on the
 * guest port yet), `refused` (an answer other than `OK <port>`), `too-long` (no newline within the bound),
 * `timeout`, `socket` (the Unix socket itself failed: missing, refused, ...).
 */
export class VsockConnectError extends SmolVMError {
  constructor(
    readonly reason: "closed" | "refused" | "too-long" | "timeout" | "socket",
    readonly udsPath: string,
    readonly port: number,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`vsock CONNECT ${port} through ${udsPath}: ${detail}`, options);
  }
}

/** Raw bytes from the other end, shown safely: printable ASCII only, at most 64 characters, quoted. */
function shown(bytes: Buffer): string {
  return JSON.stringify(printable(bytes.subarray(0, 65).toString("latin1"), 64));
}

/**
 * Open a stream to `port` in the guest. Resolves with the connected socket, in its initial (not flowing) mode, any
 * bytes past the answer line unshifted back into it; the caller owns it from then on.
 */
export function connectVsock(
  udsPath: string,
  port: number,
  opts: { timeoutMs?: number } = {},
): Promise<{ socket: Socket; hostPort: number }> {
  if (!Number.isSafeInteger(port) || port < 0 || port > 0xffff_ffff) {
    return Promise.reject(new SmolVMError(`vsock port must be an integer from 0 to 4294967295, got ${port}`));
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_VSOCK_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const sock = connect(udsPath);
    let buf = Buffer.alloc(0);
    let settled = false;
    const cleanup = () => {
      clearTimeout(timer);
      sock.off("readable", onReadable);
      sock.off("error", onError);
      sock.off("end", onEnd);
      sock.off("connect", onConnect);
    };
    const fail = (reason: VsockConnectError["reason"], detail: string, cause?: unknown) => {
      if (settled) return;
      settled = true;
      cleanup();
      sock.destroy();
      reject(new VsockConnectError(reason, udsPath, port, detail, cause === undefined ? undefined : { cause }));
    };
    const onConnect = () => sock.write(`CONNECT ${port}\n`);
    const onError = (e: Error) => fail("socket", (e as NodeJS.ErrnoException).code ?? e.message, e);
    const onEnd = () =>
      fail("closed", buf.length ? `closed after an incomplete answer ${shown(buf)}` : "closed without an answer");
    const onReadable = () => {
      let chunk: Buffer | null;
      // biome-ignore lint/suspicious/noAssignInExpressions: the usual read loop
      while (!settled && (chunk = sock.read() as Buffer | null) !== null) {
        buf = Buffer.concat([buf, chunk]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > MAX_REPLY_LINE)
            fail("too-long", `no end of line in the first ${buf.length} bytes: ${shown(buf)}`);
          continue;
        }
        if (nl > MAX_REPLY_LINE) {
          fail("too-long", `answer line of ${nl} bytes (at most ${MAX_REPLY_LINE}): ${shown(buf)}`);
          return;
        }
        const line = buf.subarray(0, nl).toString("latin1");
        const m = /^OK ([0-9]{1,10})$/.exec(line);
        const hostPort = m ? Number(m[1]) : Number.NaN;
        if (!m || hostPort > 0xffff_ffff) {
          fail("refused", `answered ${shown(buf.subarray(0, nl))}`);
          return;
        }
        settled = true;
        cleanup();
        const rest = buf.subarray(nl + 1);
        if (rest.length) sock.unshift(rest);
        resolve({ socket: sock, hostPort });
        return;
      }
    };
    const timer = setTimeout(() => fail("timeout", `no answer within ${timeoutMs} ms`), timeoutMs);
    sock.on("connect", onConnect);
    sock.on("error", onError);
    sock.on("end", onEnd);
    sock.on("readable", onReadable);
  });
}
