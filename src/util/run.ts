import { type ChildProcess, execFile, spawn } from "node:child_process";
import { accessSync, constants, statSync } from "node:fs";
import { isMainThread } from "node:worker_threads";

/**
 * Start a child with umask 077, so every file it creates (disk layers, logs, sockets) is private whatever the
 * caller's umask. The umask is process-wide, but a spawn forks synchronously, so it is set only for that moment.
 */
export function withPrivateUmask<T>(start: () => T): T {
  if (!isMainThread) return start();
  const old = process.umask(0o077);
  try {
    return start();
  } finally {
    process.umask(old);
  }
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Run a host program, capturing output; never throws for a non-zero exit. `timeoutMs` kills it. */
export function runHost(
  file: string,
  args: string[],
  opts: {
    timeoutMs?: number;
    cwd?: string;
    env?: NodeJS.ProcessEnv;
    input?: string;
    /** Each line the program writes to stderr, as it comes (for progress output). */
    onStderrLine?: (line: string) => void;
  } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = withPrivateUmask(() =>
      execFile(
        file,
        args,
        {
          timeout: opts.timeoutMs ?? 120_000,
          killSignal: "SIGKILL",
          cwd: opts.cwd,
          env: opts.env,
          maxBuffer: 64 << 20,
          encoding: "utf8",
        },
        (err, stdout, stderr) => {
          const code = err ? (typeof err.code === "number" ? err.code : null) : 0;
          resolve({ stdout, stderr: stderr || (err && code === null ? err.message : ""), code });
        },
      ),
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    const onLine = opts.onStderrLine;
    if (onLine) {
      let partial = "";
      child.stderr?.on("data", (d: string) => {
        const lines = (partial + d).split("\n");
        partial = lines.pop() ?? "";
        for (const l of lines) if (l.trim()) onLine(l);
      });
    }
  });
}

/** Like runHost but throws an Error quoting the command and its stderr on failure. */
export async function mustRun(file: string, args: string[], opts: Parameters<typeof runHost>[2] = {}): Promise<string> {
  const r = await runHost(file, args, opts);
  if (r.code !== 0) {
    throw new Error(`${file} ${args.join(" ")} failed (exit ${r.code}): ${r.stderr.trim().slice(-2000)}`);
  }
  return r.stdout;
}

/** Absolute path of a program on PATH (plus the sbin folders, which non-root PATHs often lack), or null. */
const found = new Map<string, string | null>();

/**
 * The absolute path of a program on PATH (plus the sbin folders), or null. Looked up in-process (no shell: a
 * spawnSync blocked the event loop for ~10 ms a call, and hot paths ask for several programs) and remembered.
 */
export function which(cmd: string): string | null {
  if (cmd.includes("/")) return isExecutable(cmd) ? cmd : null;
  const path = `${process.env.PATH ?? ""}:/usr/local/sbin:/usr/sbin:/sbin`;
  const key = `${path}\0${cmd}`;
  if (found.has(key)) return found.get(key) as string | null;
  let hit: string | null = null;
  for (const dir of path.split(":")) {
    if (!dir.startsWith("/")) continue;
    const candidate = `${dir}/${cmd}`;
    if (isExecutable(candidate)) {
      hit = candidate;
      break;
    }
  }
  if (hit) found.set(key, hit); // a miss is not remembered: `setup` may install it meanwhile
  return hit;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * Run a program with extra file descriptors (`fds[i]` becomes the child's fd 3 + i), capturing its output (at most
 * 1 MiB of each). The caller's copies of the fds stay open (close them when this resolves).
 */
export function runWithFds(
  file: string,
  args: string[],
  fds: (number | "ignore")[],
  opts: { timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = withPrivateUmask(() => spawn(file, args, { stdio: ["ignore", "pipe", "pipe", ...fds] }));
    } catch (e) {
      resolve({ stdout: "", stderr: (e as Error).message, code: null });
      return;
    }
    let stdout = "";
    let stderr = "";
    const cap = (acc: string, d: Buffer) => (acc.length < 1 << 20 ? acc + d.toString("utf8") : acc);
    child.stdout?.on("data", (d: Buffer) => {
      stdout = cap(stdout, d);
    });
    child.stderr?.on("data", (d: Buffer) => {
      stderr = cap(stderr, d);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    child.on("error", (e) => {
      stderr += e.message;
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ stdout, stderr, code });
    });
  });
}

export type Progress = (message: string) => void;
export const silent: Progress = () => {};
