/** Host diagnostics. Every check is bounded in time (the KVM probe boot is the longest, at most a few seconds). */
import { spawnSync } from "node:child_process";
import { accessSync, constants, mkdirSync } from "node:fs";
import { cgroupVersion } from "./backends/cgroups.js";
import { type FirecrackerStatus, firecrackerStatus } from "./backends/firecracker/backend.js";
import { type KvmVerdict, kvmVerdict } from "./backends/qemu/accel.js";
import { qemuAccels, qemuBinary, qemuFeatures, qemuVersion } from "./backends/qemu/binary.js";
import { resolveBackendName } from "./backends/resolve.js";
import type { BackendName } from "./config.js";
import { hostTools } from "./host-tools.js";
import { ensureKernelConfig, findKernel } from "./images/kernel.js";
import { findDefaultImage } from "./images/store.js";
import { networkChecks } from "./network/doctor.js";
import { dataDir, ensurePrivateDir, runtimeDir, stateDir } from "./paths.js";
import { StateStore } from "./state/store.js";

export type CheckStatus = "ok" | "warn" | "fail" | "skip";

export interface DoctorCheck {
  name: string;
  status: CheckStatus;
  detail: string;
}

export interface DoctorReport {
  /** No check failed (warnings allowed). */
  ok: boolean;
  backend: string;
  /** Accelerator VMs will use: kvm, hvf or tcg. */
  accel: string;
  kvm: KvmVerdict;
  checks: DoctorCheck[];
  /** Firecracker on this host: binary, version, jailer, the guest kernel's check, and every blocker with its fix. */
  firecracker: FirecrackerStatus;
  durationMs: number;
}

/** How VMs will be confined on this host (docs/SECURITY.md). */
function confinementChecks(
  add: (name: string, status: CheckStatus, detail: string) => void,
  qemu: string | null,
): void {
  try {
    const dir = ensurePrivateDir(runtimeDir());
    add("runtime dir", "ok", `${dir} (every level private; sockets 0600)`);
  } catch (e) {
    add("runtime dir", "fail", (e as Error).message);
  }
  const root = process.getuid?.() === 0;
  add(
    "vmm identity",
    root ? "ok" : "warn",
    root
      ? "each VM's QEMU and proxy drop to a uid of their own (0x6d000000 + n), chrooted, in their own network namespace"
      : "not root: VMs run as this user (no per-VM uid, chroot or namespaces)",
  );
  if (qemu) {
    const sandbox = spawnSync(qemu, ["-sandbox", "on", "-M", "none", "-display", "none", "-S", "-version"], {
      encoding: "utf8",
      timeout: 5000,
    });
    add(
      "seccomp",
      sandbox.status === 0 ? "ok" : "fail",
      sandbox.status === 0 ? "QEMU -sandbox available" : `QEMU has no -sandbox: ${sandbox.stderr.trim().slice(0, 200)}`,
    );
    const f = qemuFeatures(qemu);
    add(
      "template ram",
      f.rom ? "ok" : "warn",
      f.rom
        ? "shared RAM files are opened read-only (QEMU rom=off)"
        : `QEMU ${f.version ?? "?"} opens shared RAM files read-write (8.2+ does not): changes are detected (sealed), see docs/SECURITY.md`,
    );
  }
  const cg = cgroupVersion();
  add(
    "cgroups",
    root && cg ? "ok" : "warn",
    root && cg
      ? `v${cg}: each VM gets memory, pids and cpu limits`
      : "VMs run without per-VM cgroup limits (needs root)",
  );
}

export async function doctor(opts: { backend?: BackendName; probe?: boolean } = {}): Promise<DoctorReport> {
  const t0 = performance.now();
  const checks: DoctorCheck[] = [];
  const add = (name: string, status: CheckStatus, detail: string) => checks.push({ name, status, detail });

  const platformOk =
    (process.platform === "linux" || process.platform === "darwin") && ["x64", "arm64"].includes(process.arch);
  add("platform", platformOk ? "ok" : "fail", `${process.platform}/${process.arch}, node ${process.version}`);

  let backend = "qemu";
  try {
    backend = resolveBackendName(opts.backend);
    add("backend", "ok", `${backend} (explicit > SMOLVM_BACKEND > platform default)`);
  } catch (e) {
    add("backend", "fail", (e as Error).message);
  }

  const qemu = qemuBinary();
  if (qemu) {
    const accels = qemuAccels(qemu);
    add("qemu", "ok", `${qemu} ${qemuVersion(qemu) ?? "?"}; accelerators: ${accels.join(", ") || "none"}`);
  } else add("qemu", "fail", "qemu-system-x86_64 not found: run 'smolvm setup'");

  for (const t of hostTools().slice(1)) {
    add(t.what, t.found ? "ok" : "fail", t.found ?? `missing: run 'smolvm setup' (package ${t.pkg})`);
  }

  const kernel = (() => {
    try {
      return findKernel();
    } catch (e) {
      add("kernel", "fail", (e as Error).message);
      return undefined;
    }
  })();
  if (kernel) add("kernel", "ok", `${kernel.version} (${kernel.source}), ${kernel.modules.length} modules`);
  else if (kernel === null) add("kernel", "fail", "no guest kernel: run 'smolvm setup'");

  const image = kernel ? findDefaultImage() : null;
  add(
    "image",
    image ? "ok" : "fail",
    image ? `initrd ${image.initrdPath}, rootfs ${image.rootfsPath}` : "default image not built: run 'smolvm setup'",
  );

  let kvm: KvmVerdict = { present: false, usable: false, reason: "not checked" };
  if (qemu) kvm = await kvmVerdict(qemu, image, { useCache: opts.probe !== true });
  const kvmDetail = `${kvm.present ? "present" : "absent"}, ${kvm.usable ? "usable" : "unusable"}: ${kvm.reason}${kvm.cached ? ` (cached ${kvm.checkedAt})` : ""}`;
  add("kvm", kvm.usable ? "ok" : process.platform === "darwin" ? "skip" : "warn", kvmDetail);

  const envAccel = process.env.SMOLVM_ACCEL;
  const accel =
    envAccel && envAccel !== "auto" ? envAccel : process.platform === "darwin" ? "hvf" : kvm.usable ? "kvm" : "tcg";
  add(
    "accelerator",
    accel === "tcg" ? "warn" : "ok",
    accel === "tcg" ? "tcg (software emulation: works, but slower)" : accel,
  );

  if (backend === "firecracker" && kernel) {
    // a kernel fetched before SmolVM kept its config: fetch the config once, so the kernel can be checked
    await ensureKernelConfig(kernel).catch((e: Error) => add("kernel config", "warn", e.message));
  }
  const fc = firecrackerStatus(kvm, kernel ?? null);
  const why = fc.blockers.map((b) => (b.fix ? `${b.reason} (fix: ${b.fix})` : b.reason)).join("; ");
  const jailer = fc.jailer
    ? `jailer ${fc.jailer}`
    : "no jailer (Firecracker would run with SmolVM's own privileges: install one beside it)";
  const what = `${fc.binary ?? "binary not found"}${fc.version ? ` v${fc.version}` : ""}${fc.binary ? `, ${jailer}` : ""}`;
  if (backend === "firecracker") {
    add("firecracker", fc.blockers.length ? "fail" : "ok", fc.blockers.length ? `unavailable: ${why}` : what);
    add(
      "firecracker kernel",
      fc.kernel.ok === true ? "ok" : fc.kernel.ok === false ? "fail" : "warn",
      fc.kernel.ok === true ? fc.kernel.summary : `${fc.kernel.reasons.join("; ")} (fix: ${fc.kernel.fix})`,
    );
  } else {
    add("firecracker", "skip", `${what}, not used: backend ${backend}${why ? ` (unavailable: ${why})` : ""}`);
  }

  confinementChecks(add, qemu);
  await networkChecks(add);

  try {
    for (const d of [dataDir(), stateDir()]) {
      mkdirSync(d, { recursive: true });
      accessSync(d, constants.W_OK);
    }
    const store = StateStore.open();
    add("state", "ok", `${stateDir()}/smolvm.db (schema v${store.schemaVersion}, ${store.list().length} VMs)`);
  } catch (e) {
    add("state", "fail", (e as Error).message);
  }

  return {
    ok: !checks.some((c) => c.status === "fail"),
    backend,
    accel,
    kvm,
    checks,
    firecracker: fc,
    durationMs: Math.round(performance.now() - t0),
  };
}
