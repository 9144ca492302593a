/** Making and opening `.smolmachine` files for the SmolVM facade. */
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { qemuBinary, qemuVersion } from "../backends/qemu/binary.js";
import type { Backend } from "../backends/types.js";
import type { AccelName } from "../config.js";
import { SmolVMError } from "../errors.js";
import { extractPack, type PackManifest, readPackManifest, verifyPack, writePack } from "../images/pack.js";
import type { SnapshotRecord, StateStore } from "../state/store.js";
import { mustRun, type Progress, which } from "../util/run.js";
import type { LaunchPlan } from "./snapshots.js";
import { fullStateFile } from "./templates.js";

/** The VMM build whose memory state a pack can restore: same VMM and version. */
export function vmmVersion(backend: string): string {
  const q = qemuBinary();
  return backend === "qemu" && q ? `qemu ${qemuVersion(q) ?? "?"}` : backend;
}

/** Write a pack of a snapshot: its disk chain flattened to one sparse qcow2, kernel, initrd, optionally memory. */
export async function packSnapshot(
  backend: Backend,
  snap: SnapshotRecord,
  out: string,
  withMemory: boolean,
  progress: Progress,
): Promise<PackManifest> {
  const qemuImg = which("qemu-img");
  if (!qemuImg) throw new SmolVMError("qemu-img not found; run 'npx smolvm setup'");
  const work = mkdtempSync(join(tmpdir(), "smolvm-pack-"));
  try {
    progress("flattening the disk");
    const flat = join(work, "disk.qcow2");
    await mustRun(qemuImg, ["convert", "-f", "qcow2", "-O", "qcow2", snap.diskFile, flat], { timeoutMs: 1_800_000 });
    const mem = withMemory ? await fullStateFile(backend, snap, work) : null;
    progress("compressing");
    return await writePack(
      out,
      {
        kernel: snap.boot.kernelPath,
        initrd: snap.boot.initrdPath,
        disk: flat,
        ...(mem ? { mem } : {}),
      },
      {
        config: {
          vcpuCount: snap.config.vcpuCount,
          memSizeMib: snap.config.memSizeMib,
          bootArgs: snap.config.bootArgs,
          env: snap.config.env,
        },
        backend: snap.backend,
        vmm: vmmVersion(snap.backend),
        accel: snap.accel,
        hostname: snap.boot.hostname,
      },
      work,
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Check a pack (every checksum, before anything boots), extract it once into the state dir (content-addressed),
 * and plan its start: restore its memory when this VMM can, else cold-boot its disk with a one-line notice.
 */
export async function packPlan(
  file: string,
  store: StateStore,
  backend: Backend,
  agentBinary: string,
  notice: (m: string) => void,
  _opts: { trust: boolean } = { trust: false },
): Promise<{ plan: LaunchPlan; manifest: PackManifest }> {
  const { manifest } = readPackManifest(file);
  const key = createHash("sha256")
    .update(manifest.sections.map((s) => s.sha256).join(","))
    .digest("hex")
    .slice(0, 16);
  const dir = join(store.dir, "packs", key);
  if (existsSync(join(dir, "disk.qcow2"))) await verifyPack(file);
  else await extractPack(file, dir);
  const hasMem = manifest.sections.some((s) => s.name === "mem");
  const memOk = hasMem && manifest.backend === backend.kind && manifest.vmm === vmmVersion(backend.kind);
  if (hasMem && !memOk) {
    notice(
      `smolvm: ${file} holds memory state for ${manifest.backend} (${manifest.vmm}); this host runs ` +
        `${backend.kind} (${vmmVersion(backend.kind)}): cold-booting its disk instead`,
    );
  }
  const plan: LaunchPlan = {
    kernelPath: join(dir, "kernel"),
    initrdPath: join(dir, "initrd"),
    hostname: manifest.hostname,
    bootArgs: manifest.config.bootArgs,
    diskBase: join(dir, "disk.qcow2"),
    diskBaseFormat: "qcow2",
    accel: (memOk ? manifest.accel : "auto") as AccelName,
    agentBinary,
    from: memOk ? "snapshot" : "boot",
    ...(memOk ? { incoming: join(dir, "mem") } : {}),
  };
  return { plan, manifest };
}
