/** `vm.processes`: what the agent runs, and reattaching to background processes. */
import type { AgentClient } from "../agent/client.js";
import { decodeFields, type Field, fieldString, fieldU32, P, T } from "../agent/codec.js";
import { AgentError } from "../errors.js";
import { attachProcess, type Process } from "./commands.js";

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
  constructor(private readonly agent: () => Promise<AgentClient>) {}

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
    return attachProcess(await this.agent(), pid, opts);
  }
}
