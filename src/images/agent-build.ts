/** Builds the static guest agent from guest/agent/*.c, cached by a hash of its sources. */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from "node:fs";
import { join } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir, packageRoot } from "../paths.js";
import { type Progress, runHost, silent, which } from "../util/run.js";

export const agentSourceDir = () => join(packageRoot(), "guest", "agent");

function sources(): string[] {
  const dir = agentSourceDir();
  if (!existsSync(dir)) throw new ImageError(`agent sources not found at ${dir}`);
  return readdirSync(dir)
    .filter((f) => f.endsWith(".c") || f.endsWith(".h"))
    .sort()
    .map((f) => join(dir, f));
}

/** A short hash of the agent's sources: changes whenever the agent does. */
export function agentHash(): string {
  const h = createHash("sha256");
  for (const f of sources()) h.update(f.slice(f.lastIndexOf("/") + 1)).update(readFileSync(f));
  return h.digest("hex").slice(0, 16);
}

export const agentPath = (hash = agentHash()) => join(dataDir(), "agent", hash, "smolvm-agent");

/** Builds under way in this process, by hash: concurrent starts (a pool refilling beside a create) share one. */
const building = new Map<string, Promise<string>>();

export async function ensureAgent(progress: Progress = silent): Promise<string> {
  const hash = agentHash();
  const out = agentPath(hash);
  if (existsSync(out)) return out;
  let b = building.get(hash);
  if (!b) {
    b = buildAgent(hash, out, progress).finally(() => building.delete(hash));
    building.set(hash, b);
  }
  return b;
}

async function buildAgent(hash: string, out: string, progress: Progress): Promise<string> {
  const cc = process.env.CC || which("gcc") || which("cc");
  if (!cc) throw new ImageError("no C compiler found to build the guest agent; install gcc and libc6-dev");
  progress(`building the guest agent (${hash})`);
  mkdirSync(join(dataDir(), "agent", hash), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}-${Date.now()}`;
  const files = sources().filter((f) => f.endsWith(".c"));
  const r = await runHost(cc, ["-static", "-O2", "-Wall", "-o", tmp, ...files]);
  if (r.code !== 0) {
    throw new ImageError(`building the guest agent failed (is libc6-dev installed?):\n${r.stderr.slice(-3000)}`);
  }
  renameSync(tmp, out);
  return out;
}
