/**
 * Progress notifications for long tool calls (an image pull, a long command): when the client asked for them (a
 * `progressToken`), a message at each step and a heartbeat every 10 s, so a client that resets its request timeout
 * on progress does not give up on a call that is still working.
 */
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import type { ServerNotification, ServerRequest } from "@modelcontextprotocol/sdk/types.js";

export type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

const HEARTBEAT_MS = 10_000;

/** Run `body` with a progress reporter; without a progressToken, reporting does nothing. */
export async function withProgress<T>(
  extra: ToolExtra,
  what: string,
  body: (report: (message: string) => void) => Promise<T>,
): Promise<T> {
  const token = extra._meta?.progressToken;
  if (token === undefined) return body(() => {});
  let step = 0;
  const t0 = Date.now();
  const report = (message: string) => {
    step++;
    extra
      .sendNotification({ method: "notifications/progress", params: { progressToken: token, progress: step, message } })
      .catch(() => {}); // the client went away: the call's own result says the rest
  };
  const timer = setInterval(
    () => report(`${what}: still working (${Math.round((Date.now() - t0) / 1000)} s)`),
    HEARTBEAT_MS,
  );
  timer.unref();
  try {
    return await body(report);
  } finally {
    clearInterval(timer);
  }
}
