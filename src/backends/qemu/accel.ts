/**
 * Accelerator choice. `/dev/kvm` existing is not enough: a nested or paravirtual KVM may accept the ioctls and then
 * hang a standard guest. So "auto" boots a probe guest under KVM (the agent, seeing `smolvm.probe=1`, prints a
 * marker and powers off at once) and uses KVM only if the marker arrives within a few seconds. The verdict is cached
 * per host kernel, QEMU version and guest kernel.
 */
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import type { AccelName } from "../../config.js";
import { ConfigError } from "../../errors.js";
import { dataDir } from "../../paths.js";
import { accelArgs, sandboxArg } from "./args.js";
import { qemuAccels } from "./binary.js";

export interface KvmVerdict {
  present: boolean;
  usable: boolean;
  reason: string;
  /** How long the probe took, when one ran. */
  probeMs?: number;
  cached?: boolean;
  checkedAt?: string;
}

export const PROBE_TIMEOUT_MS = 6000;
const PROBE_MARKER = "SMOLVM_PROBE_OK";

function cacheFile(): string {
  return join(dataDir(), "kvm-probe.json");
}

/**
 * Identity of what the verdict depends on: the host kernel (its KVM) and the QEMU build, from file metadata only
 * (no process spawned on the boot path). Not the guest kernel: any standard guest shows the same thing, and VMs from
 * snapshots or packs bring their own kernel files.
 */
function cacheKey(qemu: string): string {
  const q = statSync(qemu);
  return [release(), qemu, q.size, q.mtimeMs].join("|");
}

/** Boot the probe guest under KVM; resolves with whether it reached userspace in time. */
export function probeKvmBoot(
  qemu: string,
  kernelPath: string,
  initrdPath: string,
  timeoutMs = PROBE_TIMEOUT_MS,
): Promise<{ ok: boolean; reason: string; ms: number }> {
  const t0 = performance.now();
  const args = [
    "-M",
    "microvm,acpi=on",
    ...accelArgs("kvm"),
    "-m",
    "128",
    "-smp",
    "1",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-kernel",
    kernelPath,
    "-initrd",
    initrdPath,
    "-append",
    "console=ttyS0 quiet panic=-1 smolvm.probe=1",
    "-no-reboot",
    "-sandbox",
    sandboxArg({}),
  ];
  return new Promise((resolve) => {
    const child = spawn(qemu, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    let settled = false;
    const finish = (ok: boolean, reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill("SIGKILL");
      resolve({ ok, reason, ms: Math.round(performance.now() - t0) });
    };
    const timer = setTimeout(
      () => finish(false, `a KVM guest did not reach userspace within ${timeoutMs} ms (nested or paravirtual KVM?)`),
      timeoutMs,
    );
    child.stdout.on("data", (d: Buffer) => {
      out = (out + d.toString("latin1")).slice(-4096);
      if (out.includes(PROBE_MARKER)) finish(true, `a KVM guest booted in ${Math.round(performance.now() - t0)} ms`);
    });
    child.stderr.on("data", (d: Buffer) => {
      err = (err + d.toString()).slice(-2000);
    });
    child.on("error", (e) => finish(false, `cannot run ${qemu}: ${e.message}`));
    child.on("exit", (code) => {
      // give stdout a moment to deliver the marker
      setTimeout(() => finish(false, `QEMU exited (${code}) under KVM: ${err.trim().split("\n").pop() ?? ""}`), 50);
    });
  });
}

/**
 * What the last probe boot said about KVM, without probing (false when it never ran, or ran for another host kernel
 * or QEMU build): cheap enough for choosing a backend on every `new SmolVM()`.
 */
export function cachedKvmUsable(qemu: string | null): boolean {
  if (process.platform !== "linux" || !qemu) return false;
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    const c = JSON.parse(readFileSync(cacheFile(), "utf8")) as KvmVerdict & { key: string };
    return c.key === cacheKey(qemu) && c.usable === true;
  } catch {
    return false;
  }
}

/** Is KVM usable? Cheap checks first, then the (cached) probe boot. Never takes longer than the probe timeout. */
export async function kvmVerdict(
  qemu: string,
  image: { kernelPath: string; initrdPath: string } | null,
  opts: { useCache?: boolean } = {},
): Promise<KvmVerdict> {
  if (process.platform !== "linux") return { present: false, usable: false, reason: "KVM is Linux-only" };
  if (!existsSync("/dev/kvm")) return { present: false, usable: false, reason: "/dev/kvm does not exist" };
  try {
    accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return {
      present: true,
      usable: false,
      reason: "no read/write access to /dev/kvm (add this user to the kvm group)",
    };
  }
  if (!image) {
    return { present: true, usable: false, reason: "not proven: no guest kernel yet to probe with (run smolvm setup)" };
  }
  const key = cacheKey(qemu);
  if (opts.useCache !== false) {
    try {
      const c = JSON.parse(readFileSync(cacheFile(), "utf8")) as KvmVerdict & { key: string };
      if (c.key === key)
        return { present: true, usable: c.usable, reason: c.reason, cached: true, checkedAt: c.checkedAt };
    } catch {
      // no cache yet
    }
  }
  if (!qemuAccels(qemu).includes("kvm")) {
    return { present: true, usable: false, reason: "this QEMU build has no KVM support" };
  }
  const r = await probeKvmBoot(qemu, image.kernelPath, image.initrdPath);
  const verdict: KvmVerdict = {
    present: true,
    usable: r.ok,
    reason: r.reason,
    probeMs: r.ms,
    checkedAt: new Date().toISOString(),
  };
  mkdirSync(dataDir(), { recursive: true });
  writeFileSync(cacheFile(), JSON.stringify({ ...verdict, key }, null, 2));
  return verdict;
}

let noticeShown = false;

/** The caller already told the user about the accelerator (e.g. `smolvm setup`): no second notice. */
export function accelNoticeGiven(): void {
  noticeShown = true;
}

/** The accelerator to use: explicit config > SMOLVM_ACCEL > auto (HVF on macOS, KVM if proven, else TCG). */
export async function resolveAccel(
  requested: AccelName,
  qemu: string,
  image: { kernelPath: string; initrdPath: string },
  notice: (msg: string) => void = (m) => process.stderr.write(`${m}\n`),
): Promise<"kvm" | "hvf" | "tcg"> {
  let want = requested;
  if (want === "auto" && process.env.SMOLVM_ACCEL) {
    const env = process.env.SMOLVM_ACCEL;
    if (!["auto", "kvm", "hvf", "tcg"].includes(env)) {
      throw new ConfigError("SMOLVM_ACCEL", `must be one of auto | kvm | hvf | tcg, got ${JSON.stringify(env)}`);
    }
    want = env as AccelName;
  }
  if (want !== "auto") return want;
  if (process.platform === "darwin") return "hvf";
  const v = await kvmVerdict(qemu, image);
  if (v.usable) return "kvm";
  if (v.present && !noticeShown) {
    noticeShown = true;
    const line = tcgNotice(cacheKey(qemu));
    if (line) notice(line);
  }
  return "tcg";
}

/**
 * The one-line notice that KVM is present but unusable here, once per host (and QEMU build): null when it was
 * already shown. `smolvm doctor` gives the details every time.
 */
export function tcgNotice(key: string): string | null {
  const marker = join(dataDir(), "kvm-notice-shown");
  try {
    if (readFileSync(marker, "utf8") === key) return null;
  } catch {
    // not shown yet
  }
  try {
    mkdirSync(dataDir(), { recursive: true });
    writeFileSync(marker, key);
  } catch {
    // shown again next time, no harm
  }
  return "smolvm: KVM is unusable here, using TCG (slower); 'smolvm doctor' says why (shown once)";
}
