/**
 * One cgroup per VM, so a VMM (and whatever escapes into it) cannot take more memory, processes or CPU than its VM
 * was given. cgroup v2 (`/sys/fs/cgroup/smolvm/<name>`) or v1 (one directory per controller, created below the
 * calling process's own cgroup so that any limit already placed on the caller still applies). Only root can do this
 * without a delegated subtree; otherwise VMs run without a cgroup and `smolvm doctor` says so.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const ROOT = "/sys/fs/cgroup";
const V1_CONTROLLERS = ["memory", "pids", "cpu"] as const;
const CPU_PERIOD_US = 100_000;

export interface VmLimits {
  /** Hard memory limit of the VMM process (guest RAM plus the VMM's own needs). */
  memBytes: number;
  /** Processes and threads. */
  pids: number;
  /** CPU time as a number of cores (fractions allowed). */
  cpus: number;
}

/** What a VM of this size may use: guest RAM + 25% + 512 MiB for the VMM itself; vCPUs + half a core for I/O. */
export function limitsFor(memSizeMib: number, vcpuCount: number): VmLimits {
  return {
    memBytes: Math.ceil(memSizeMib * 1.25 + 512) * 1024 * 1024,
    pids: 512,
    cpus: vcpuCount + 0.5,
  };
}

export function cgroupVersion(): 1 | 2 | null {
  if (existsSync(join(ROOT, "cgroup.controllers"))) return 2;
  if (V1_CONTROLLERS.every((c) => existsSync(join(ROOT, c, "cgroup.procs")))) return 1;
  return null;
}

/** The caller's own cgroup path for a v1 controller (from /proc/self/cgroup). */
function ownV1Path(controller: string): string {
  for (const line of readFileSync("/proc/self/cgroup", "utf8").split("\n")) {
    const [, ctrls, path] = line.split(":");
    if (ctrls?.split(",").includes(controller) && path) return path;
  }
  return "/";
}

function enableV2Controllers(dir: string): void {
  const want = ["memory", "pids", "cpu"];
  const on = readFileSync(join(dir, "cgroup.subtree_control"), "utf8").split(/\s+/);
  const missing = want.filter((c) => !on.includes(c));
  if (missing.length) writeFileSync(join(dir, "cgroup.subtree_control"), missing.map((c) => `+${c}`).join(" "));
}

/**
 * Create the cgroup(s) of one VM with its limits; returns the directories the VMM must join (its `cgroup.procs`),
 * or `{ dirs: [], reason }` when this host or user cannot (the VM then runs without one).
 */
export function createVmCgroups(name: string, limits: VmLimits): { dirs: string[]; reason?: string } {
  if (process.getuid?.() !== 0) return { dirs: [], reason: "cgroups need root" };
  const version = cgroupVersion();
  const made: string[] = [];
  try {
    if (version === 2) {
      const parent = join(ROOT, "smolvm");
      enableV2Controllers(ROOT);
      mkdirSync(parent, { recursive: true, mode: 0o755 });
      enableV2Controllers(parent);
      const dir = join(parent, name);
      mkdirSync(dir, { mode: 0o755 });
      made.push(dir);
      writeFileSync(join(dir, "memory.max"), String(limits.memBytes));
      try {
        writeFileSync(join(dir, "memory.swap.max"), "0");
      } catch {
        // no swap accounting on this host
      }
      writeFileSync(join(dir, "pids.max"), String(limits.pids));
      writeFileSync(join(dir, "cpu.max"), `${Math.round(limits.cpus * CPU_PERIOD_US)} ${CPU_PERIOD_US}`);
      return { dirs: made };
    }
    if (version === 1) {
      for (const c of V1_CONTROLLERS) {
        const dir = join(ROOT, c, ownV1Path(c), `smolvm-${name}`);
        mkdirSync(dir, { mode: 0o755 });
        made.push(dir);
        if (c === "memory") writeFileSync(join(dir, "memory.limit_in_bytes"), String(limits.memBytes));
        if (c === "pids") writeFileSync(join(dir, "pids.max"), String(limits.pids));
        if (c === "cpu") {
          writeFileSync(join(dir, "cpu.cfs_period_us"), String(CPU_PERIOD_US));
          writeFileSync(join(dir, "cpu.cfs_quota_us"), String(Math.round(limits.cpus * CPU_PERIOD_US)));
        }
      }
      return { dirs: made };
    }
    return { dirs: [], reason: "no cgroup file system with the memory, pids and cpu controllers" };
  } catch (e) {
    removeCgroups(made);
    return { dirs: [], reason: (e as Error).message };
  }
}

/** The cgroup directories that exist for a VM's cgroup name (to clean up after a VM whose record lost them). */
export function existingVmCgroups(name: string): string[] {
  const version = cgroupVersion();
  const dirs =
    version === 2
      ? [join(ROOT, "smolvm", name)]
      : version === 1
        ? V1_CONTROLLERS.map((c) => join(ROOT, c, ownV1Path(c), `smolvm-${name}`))
        : [];
  return dirs.filter((d) => existsSync(d));
}

/** Remove a VM's cgroups (once its processes are gone; a cgroup still in use is left and retried later). */
export function removeCgroups(dirs: readonly string[] | undefined): void {
  for (const d of dirs ?? []) {
    try {
      rmdirSync(d);
    } catch {
      // gone already, or a process is still inside: reconcile retries
    }
  }
}
