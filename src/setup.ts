/** `smolvm setup`: install host packages (as root, with apt), fetch the kernel, build the agent and default image. */
import { existsSync, readdirSync } from "node:fs";
import { accelNoticeGiven, kvmVerdict } from "./backends/qemu/accel.js";
import { qemuBinary } from "./backends/qemu/binary.js";
import { SmolVMError } from "./errors.js";
import { missingTools, networkTools, testTools } from "./host-tools.js";
import { findKernel } from "./images/kernel.js";
import { ensureDefaultImage, type ImagePaths } from "./images/store.js";
import { mustRun, type Progress, runHost, which } from "./util/run.js";

export interface SetupResult {
  installed: string[];
  image: ImagePaths;
  kvm: { usable: boolean; reason: string };
}

const isRoot = () => process.getuid?.() === 0;
const aptEnv = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };

function aptListsEmpty(): boolean {
  try {
    return !readdirSync("/var/lib/apt/lists").some((f) => f.endsWith("Packages") || f.endsWith("Packages.lz4"));
  } catch {
    return true;
  }
}

async function aptUpdate(progress: Progress): Promise<void> {
  progress("apt-get update");
  await mustRun("apt-get", ["update", "-q"], { env: aptEnv, timeoutMs: 600_000 });
}

export async function setup(progress: Progress, opts: { testTools?: boolean } = {}): Promise<SetupResult> {
  const installed: string[] = [];
  const wanted = () => [
    ...missingTools(),
    // networking is optional (network "none" needs none of it), so only root installs it here; doctor says what is missing
    ...(isRoot() || opts.testTools ? networkTools().filter((t) => !t.found) : []),
    ...(opts.testTools ? testTools().filter((t) => !t.found) : []),
  ];
  const missing = wanted();
  if (missing.length) {
    const pkgs = [...new Set(missing.map((m) => m.pkg))];
    const cmd = `apt-get install -y --no-install-recommends ${pkgs.join(" ")}`;
    if (!isRoot() || !which("apt-get")) {
      throw new SmolVMError(
        `missing: ${missing.map((m) => m.what).join(", ")}. Install them as root:\n  sudo ${cmd}\nthen run 'smolvm setup' again`,
      );
    }
    await aptUpdate(progress);
    progress(`installing ${pkgs.join(" ")}`);
    await mustRun("apt-get", cmd.split(" ").slice(1), { env: aptEnv, timeoutMs: 900_000 });
    installed.push(...pkgs);
    const still = wanted();
    if (still.length) throw new SmolVMError(`still missing after apt-get: ${still.map((m) => m.what).join(", ")}`);
  }
  if (!findKernel() && isRoot() && aptListsEmpty()) await aptUpdate(progress);
  if (!findKernel() && isRoot()) {
    // apt-get download needs a package list that knows the cloud kernel
    const policy = await runHost("apt-cache", [
      "policy",
      `linux-image-cloud-${process.arch === "arm64" ? "arm64" : "amd64"}`,
    ]);
    if (!/Candidate: (?!\(none\))/.test(policy.stdout)) await aptUpdate(progress);
  }
  const image = await ensureDefaultImage(progress);
  const qemu = qemuBinary() as string;
  progress("checking whether KVM can run a guest");
  const v = await kvmVerdict(qemu, image);
  progress(
    v.usable
      ? `KVM: usable (${v.reason})`
      : `KVM: ${v.present ? "present but unusable" : "absent"} (${v.reason}); VMs will use TCG`,
  );
  accelNoticeGiven();
  if (!existsSync(image.rootfsPath)) throw new SmolVMError("image build did not produce a rootfs");
  // the first create() should already be a warm start: boot the default template now
  const { SmolVM } = await import("./sandbox/smolvm.js");
  const vm = await SmolVM.create({}, { onProgress: progress });
  await vm.delete();
  return { installed, image, kvm: { usable: v.usable, reason: v.reason } };
}
