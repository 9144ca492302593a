/**
 * QMP commands that hand a file descriptor to QEMU (SCM_RIGHTS), sent by the agent binary's `qmp` mode on the VM's
 * second monitor (`ctl.sock`): a VMM that dropped its privileges cannot open files by path, so SmolVM opens them
 * (a migration target or source, a new disk layer) and passes the descriptor. Node cannot send descriptors itself.
 */
import { SmolVMError } from "../../errors.js";
import { runWithFds } from "../../util/run.js";

export interface FdCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  /** A descriptor (open in this process) to attach to this command. */
  fd?: number;
}

/** Run the commands in order on one connection; resolves with each command's `return` value. */
export async function qmpWithFds(agentBinary: string, socket: string, commands: FdCommand[]): Promise<unknown[]> {
  const fds: number[] = [];
  const args = commands.map(({ fd, ...cmd }) => {
    const json = JSON.stringify(cmd);
    if (fd === undefined) return json;
    fds.push(fd);
    return `fd=${2 + fds.length}:${json}`;
  });
  const r = await runWithFds(agentBinary, ["qmp", "--socket", socket, ...args], fds, { timeoutMs: 60_000 });
  const replies = r.stdout
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { return?: unknown; error?: { desc?: string } });
  const err = replies.find((x) => x.error)?.error;
  if (r.code !== 0 || err || replies.length !== commands.length) {
    throw new SmolVMError(`QMP: ${err?.desc ?? (r.stderr.trim() || `exit ${r.code}`)}`);
  }
  return replies.map((x) => x.return);
}
