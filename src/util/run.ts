import { execFile, spawnSync } from "node:child_process";

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number | null;
}

/** Run a host program, capturing output; never throws for a non-zero exit. `timeoutMs` kills it. */
export function runHost(
  file: string,
  args: string[],
  opts: { timeoutMs?: number; cwd?: string; env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
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
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
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
export function which(cmd: string): string | null {
  const path = `${process.env.PATH ?? ""}:/usr/local/sbin:/usr/sbin:/sbin`;
  const r = spawnSync("sh", ["-c", 'command -v "$1"', "sh", cmd], { encoding: "utf8", env: { PATH: path } });
  const out = r.stdout.trim();
  return r.status === 0 && out.startsWith("/") ? out : null;
}

export type Progress = (message: string) => void;
export const silent: Progress = () => {};
