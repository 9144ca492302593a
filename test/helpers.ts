/** Test helpers: an isolated state dir per test file, the built agent binary, cleanup of every VM a file made. */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

/** Point SmolVM's state (database, VM disks) at a fresh temp dir; images stay shared. Call before any VM use. */
export function isolatedState(): string {
  const dir = mkdtempSync(join(tmpdir(), "smolvm-test-"));
  process.env.SMOLVM_STATE_DIR = dir;
  after(async () => {
    const { SmolVM } = await import("../src/index.js");
    for (const v of await SmolVM.list()) await (await SmolVM.fromId(v.vmId)).delete();
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

export const repoRoot = new URL("../../", import.meta.url).pathname;
export const cliPath = join(repoRoot, "bin", "smolvm.js");

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the smolvm CLI in a child process (same environment, plus `env`; in `cwd`, else ours). */
export function cli(
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string>; cwd?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...opts.env },
      cwd: opts.cwd,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
    });
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`smolvm ${args.join(" ")} did not finish in ${opts.timeoutMs ?? 120_000} ms`));
    }, opts.timeoutMs ?? 120_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A ustar entry written by hand, so tests can build archives as hostile as they like. */
export function tarEntry(name: string, type: string, body = "", link = ""): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0);
  h.write("0000644\0", 100);
  h.write(`${body.length.toString(8).padStart(11, "0")}\0`, 124);
  h.write("00000000000\0", 136);
  h.write("        ", 148);
  h.write(type, 156);
  h.write(link, 157);
  h.write("ustar\0", 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  const data = Buffer.from(body);
  return Buffer.concat([h, data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
}
