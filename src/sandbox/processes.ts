/** `vm.processes`: what the agent runs, and reattaching to background processes. */
import type { AgentClient } from "../agent/client.js";
import { decodeFields, type Field, fieldString, fieldU32, P, T, u32 } from "../agent/codec.js";
import { AgentError, ConfigError, SmolVMError } from "../errors.js";
import {
  attachProcess,
  type CommandOptions,
  type CommandResult,
  followProcess,
  type Process,
  type RunOptions,
  startDetached,
} from "./commands.js";

const ESRCH = 3;
const ENOSYS = 38;

/** The agent's "no such process" as an error naming the pid; anything else unchanged. */
function noSuchProcess(pid: number): (e: unknown) => never {
  return (e) => {
    if (e instanceof AgentError && e.code === ESRCH) {
      throw new SmolVMError(`no such process ${pid} started by the agent (see smolvm ps ID, vm.processes.list())`);
    }
    throw e;
  };
}

export interface ProcessInfo {
  pid: number;
  /** The command line (truncated to 255 bytes). */
  command: string;
  running: boolean;
  /** Whether a client is attached to its output now. */
  attached: boolean;
  /** Started with `background` (survives its client). */
  background: boolean;
  /** For a finished background process nobody has reattached to yet. */
  exitCode?: number | null;
  signal?: number | null;
}

export class Processes {
  constructor(
    private readonly agent: () => Promise<AgentClient>,
    /** The VM's environment and the image's defaults (cwd, user), as `run` applies them. */
    private readonly env: () => Record<string, string> = () => ({}),
    private readonly defaults: <T extends { cwd?: string; user?: string }>(o: T) => T = (o) => o,
  ) {}

  /**
   * Start a command in the background and return its pid at once, following nothing: its output (the latest
   * 64 KiB) and exit wait for `connect(pid)`, even if it ends first. `stdin: true` keeps its input open for whoever
   * attaches. (`smolvm exec --detach`.)
   */
  async start(cmd: string | string[], opts: CommandOptions & { stdin?: boolean } = {}): Promise<number> {
    return startDetached(await this.agent(), cmd, this.env(), this.defaults(opts));
  }

  /** Commands started through the agent: running ones, and finished background ones not yet collected. */
  async list(): Promise<ProcessInfo[]> {
    const fields: Field[] = [];
    let total = 0;
    await (await this.agent()).op(T.PS, [], (b) => {
      total += b.length;
      if (total > 16 << 20) throw new AgentError("the guest sent more than 16 MiB of process list");
      fields.push(...decodeFields(b));
    }).done;
    const groups: Field[][] = [];
    for (const f of fields) {
      if (f[0] === P.PID) groups.push([f]);
      else groups.at(-1)?.push(f);
    }
    return groups.map((g) => {
      const flag = (tag: number) => g.find(([t]) => t === tag)?.[1][0] === 1;
      const pid = fieldU32(g, P.PID);
      if (!pid) throw new AgentError("invalid process entry from the guest");
      const info: ProcessInfo = {
        pid,
        command: (fieldString(g, P.CMD) ?? "").slice(0, 256),
        running: flag(P.RUNNING),
        attached: flag(P.ATTACHED),
        background: flag(P.KEEP),
      };
      const ex = g.find(([t]) => t === P.EXIT)?.[1];
      if (Buffer.isBuffer(ex) && ex.length === 8) {
        const code = ex.readInt32BE(0);
        const sig = ex.readInt32BE(4);
        info.exitCode = code < 0 ? null : code;
        info.signal = sig > 0 ? sig : null;
      }
      return info;
    });
  }

  /**
   * Reattach to a background process: its latest output replayed (up to 64 KiB per stream), then live output,
   * stdin, wait and kill. A process that finished meanwhile reports its exit at once.
   */
  async connect(pid: number, opts: { maxOutputBytes?: number } = {}): Promise<Process> {
    return attachProcess(await this.agent(), pid, opts).catch(noSuchProcess(pid));
  }

  /**
   * Reattach and follow a process to its end, as `vm.run()` follows a new one: the latest output replayed, then live
   * output to `onStdout` / `onStderr` (with backpressure), `stdin` streamed; resolves with its result. `timeoutMs`
   * and `signal` kill the process, as with `run`.
   */
  async follow(pid: number, opts: RunOptions = {}): Promise<CommandResult> {
    return followProcess(await this.agent(), pid, opts).catch(noSuchProcess(pid));
  }

  /**
   * Send a signal (a number, default SIGTERM) to a running process the agent started and to its process group,
   * whether or not a client is attached to it.
   */
  async kill(pid: number, signal = 15): Promise<void> {
    if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffffffff)
      throw new ConfigError("pid", "must be a positive integer");
    if (!Number.isInteger(signal) || signal < 1 || signal > 64) {
      throw new ConfigError("signal", `must be a signal number from 1 to 64, got ${signal}`);
    }
    const op = (await this.agent()).op(T.PKILL, [
      [P.PID, u32(pid)],
      [P.SIGNAL, u32(signal)],
    ]);
    await op.done.catch((e: unknown) => {
      if (e instanceof AgentError && e.code === ENOSYS) {
        throw new SmolVMError(
          "this VM's agent cannot signal a process by pid (it predates protocol 4: restart the VM)",
        );
      }
      return noSuchProcess(pid)(e);
    });
  }
}
