/** `vm.pty`: interactive terminals in the guest. */
import type { AgentClient, ExecExit, ExecHandle, PtySize } from "../agent/client.js";
import { ConfigError } from "../errors.js";
import { checkEnv } from "./env.js";

export interface PtyOptions {
  cols?: number;
  rows?: number;
  /** Program to run; default `/bin/sh -l`. */
  cmd?: string[];
  cwd?: string;
  env?: Record<string, string>;
  user?: string;
  /** Terminal output (stdout and stderr together), as it arrives; a returned promise holds the guest back. */
  onData?: (chunk: Buffer) => unknown;
}

function checkSize(s: PtySize): PtySize {
  for (const k of ["cols", "rows"] as const) {
    if (!Number.isInteger(s[k]) || s[k] < 1 || s[k] > 65535)
      throw new ConfigError(k, "must be an integer from 1 to 65535");
  }
  return s;
}

export class PtyHandle {
  constructor(
    private readonly h: ExecHandle,
    /** Guest pid of the program on the terminal. */
    readonly pid: number,
  ) {}

  /** Type into the terminal. */
  write(data: string | Buffer): Promise<void> {
    return this.h.writeStdin(data);
  }

  resize(size: PtySize): Promise<void> {
    return this.h.resize(checkSize(size));
  }

  kill(signal = 9): Promise<void> {
    return this.h.kill(signal);
  }

  /** Resolves when the program exits. */
  wait(): Promise<ExecExit> {
    return this.h.exited;
  }
}

export class Pty {
  constructor(
    private readonly agent: () => Promise<AgentClient>,
    private readonly baseEnv: () => Record<string, string>,
    /** The image's working directory and user, where `opts` gives none. */
    private readonly defaults: (o: PtyOptions) => PtyOptions = (o) => o,
  ) {}

  async create(options: PtyOptions = {}): Promise<PtyHandle> {
    const opts = this.defaults(options);
    const size = checkSize({ cols: opts.cols ?? 80, rows: opts.rows ?? 24 });
    const env = { ...this.baseEnv(), ...(opts.env ?? {}) };
    checkEnv(env);
    const h = (await this.agent()).exec(
      { argv: opts.cmd ?? ["/bin/sh", "-l"], env, cwd: opts.cwd, user: opts.user, stdin: true, pty: size },
      { onStdout: opts.onData },
    );
    return new PtyHandle(h, await h.started);
  }
}
