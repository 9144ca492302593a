/** Starting a helper daemon (passt, dnsmasq) that runs on after this process, and knowing when it is up. */
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { SmolVMError } from "../errors.js";
import { waitFor } from "./proc.js";
import { withPrivateUmask } from "./run.js";

/** The last lines of a daemon's error file (syslog complaints left out), or "". */
export function errorTail(errPath: string): string {
  try {
    return readFileSync(errPath, "utf8")
      .split("\n")
      .filter((l) => l.trim() && !/syslog/.test(l))
      .slice(-3)
      .join("; ");
  } catch {
    return "";
  }
}

/**
 * Start `bin args` detached, its stderr going to `errPath` (a pipe closed after start-up would kill it with SIGPIPE
 * the next time it complains), and wait until `readyFile` exists. Returns its pid; throws with what it said if it
 * exits or is not ready in time (it is killed then).
 */
export async function startDaemon(
  what: string,
  bin: string,
  args: string[],
  opts: { errPath: string; readyFile: string; timeoutMs?: number },
): Promise<number> {
  const errFd = openSync(opts.errPath, "w", 0o600);
  let child: ReturnType<typeof spawn>;
  try {
    child = withPrivateUmask(() => spawn(bin, args, { stdio: ["ignore", "ignore", errFd], detached: true }));
  } finally {
    closeSync(errFd);
  }
  let exited = false;
  child.on("exit", () => {
    exited = true;
  });
  const timeoutMs = opts.timeoutMs ?? 5000;
  const ok = await waitFor(() => exited || existsSync(opts.readyFile), timeoutMs);
  child.unref();
  if (!ok || exited || !child.pid) {
    if (child.pid && !exited) process.kill(child.pid, "SIGKILL");
    throw new SmolVMError(
      `${what} failed to start: ${errorTail(opts.errPath) || `not ready after ${timeoutMs / 1000} s`}`,
    );
  }
  return child.pid;
}
