/** Making and opening `.smolmachine` files for the SmolVM facade. */
import { createHash } from "node:crypto";
import { lstatSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { firecrackerBinary, firecrackerVersion } from "../backends/firecracker/binary.js";
import { stateFileOf } from "../backends/firecracker/vmm.js";
import { qemuBinary, qemuVersion } from "../backends/qemu/binary.js";
import type { Backend } from "../backends/types.js";
import { type AccelName, type ImageDefaults, labelsOf } from "../config.js";
import { SmolVMError } from "../errors.js";
import {
  checkPackDisk,
  extractPack,
  PackError,
  type PackManifest,
  readPackManifest,
  SECTION_FILES,
  verifyPack,
  writePack,
} from "../images/pack.js";
import { hostSignature } from "../images/pack-key.js";
import type { PackImage } from "../images/pack-manifest.js";
import { tempPath } from "../state/journal.js";
import { type SnapshotRecord, StateStore } from "../state/store.js";
import { mustRun, type Progress, which } from "../util/run.js";
import { diskFormatOf, type LaunchPlan } from "./snapshots.js";
import { fullStateFile, hasNic } from "./templates.js";

/** The VMM build whose memory state a pack can restore: same VMM and version. */
export function vmmVersion(backend: string): string {
  if (backend === "firecracker") {
    const fc = firecrackerBinary();
    return `firecracker ${(fc && firecrackerVersion(fc)) ?? "?"}`;
  }
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
  const workTemp = tempPath(StateStore.open(), work);
  try {
    progress("flattening the disk");
    const flat = join(work, "disk.qcow2");
    const format = diskFormatOf(snap.diskFile);
    await mustRun(qemuImg, ["convert", "-f", format, "-O", "qcow2", snap.diskFile, flat], { timeoutMs: 1_800_000 });
    const mem = withMemory ? await fullStateFile(backend, snap, work) : null;
    // Firecracker's state is two files: its memory, and its device state beside it
    const vmstate = mem && snap.backend === "firecracker" ? stateFileOf(mem) : null;
    progress("compressing");
    return await writePack(
      out,
      {
        kernel: snap.boot.kernelPath,
        initrd: snap.boot.initrdPath,
        disk: flat,
        ...(mem ? { mem } : {}),
        ...(vmstate ? { vmstate } : {}),
      },
      {
        config: {
          vcpuCount: snap.config.vcpuCount,
          ...(hasNic(snap.config) ? { nic: true } : {}),
          memSizeMib: snap.config.memSizeMib,
          bootArgs: snap.config.bootArgs,
          env: snap.config.env,
          ...(snap.config.imageInfo ? { image: packImage(snap.config.imageInfo) } : {}),
          ...(Object.keys(labelsOf(snap.config)).length ? { labels: labelsOf(snap.config) } : {}),
        },
        backend: snap.backend,
        vmm: vmmVersion(snap.backend),
        accel: snap.accel,
        hostname: snap.boot.hostname,
      },
      work,
      undefined,
      recordTemp,
    );
  } finally {
    workTemp.discard();
  }
}

/** Journal a temporary path of a pack being written or opened (see state/journal.ts). */
const recordTemp = (path: string) => tempPath(StateStore.open(), path).done;

/** Whether `dir` holds a complete extraction of `manifest` (real files of the declared sizes, no symlinks). */
function extracted(dir: string, manifest: PackManifest): boolean {
  try {
    if (!lstatSync(dir).isDirectory()) return false;
    return manifest.sections.every((s) => {
      const st = lstatSync(join(dir, SECTION_FILES[s.name]));
      return st.isFile() && st.size === s.size;
    });
  } catch {
    return false;
  }
}

/**
 * Check a pack (manifest, every checksum, a self-contained disk: before anything boots), extract it once into the
 * state dir (content-addressed), and plan its start. Its memory state (a QEMU migration stream: input to a large
 * parser) is restored only when this VMM wrote it AND this host signed the pack or the caller trusts it; otherwise
 * the disk is cold-booted with a one-line notice saying why.
 */
export async function packPlan(
  file: string,
  store: StateStore,
  backend: Backend,
  agentBinary: string,
  notice: (m: string) => void,
  opts: { trust: boolean } = { trust: false },
): Promise<{ plan: LaunchPlan; manifest: PackManifest }> {
  const { manifest } = readPackManifest(file);
  const key = createHash("sha256")
    .update(manifest.sections.map((s) => `${s.name}:${s.size}:${s.sha256}`).join(","))
    .digest("hex")
    .slice(0, 16);
  const dir = join(store.dir, "packs", key);
  let checked: PackManifest | null = null;
  if (!extracted(dir, manifest)) {
    try {
      checked = (await extractPack(file, dir, manifest, recordTemp)).manifest; // checks everything, the disk too
    } catch (e) {
      if (!extracted(dir, manifest)) throw e; // else another process extracted it meanwhile
    }
  }
  if (!checked) {
    checked = await verifyPack(file);
    await checkPackDisk(file, join(dir, SECTION_FILES.disk));
  }
  // What was verified (and extracted) is what decides: a file rewritten between the reads is refused.
  if (JSON.stringify(checked) !== JSON.stringify(manifest)) throw new PackError(file, "it changed while being read");
  // Firecracker's memory restores only with its device state beside it
  const hasMem =
    manifest.sections.some((s) => s.name === "mem") &&
    (manifest.backend !== "firecracker" || manifest.sections.some((s) => s.name === "vmstate"));
  const vmmOk = manifest.backend === backend.kind && manifest.vmm === vmmVersion(backend.kind);
  let memOk = false;
  if (hasMem && !vmmOk) {
    notice(
      `smolvm: ${file} holds memory state for ${manifest.backend} (${manifest.vmm}); this host runs ` +
        `${backend.kind} (${vmmVersion(backend.kind)}): cold-booting its disk instead`,
    );
  } else if (hasMem) {
    const sig = hostSignature(manifest);
    memOk = sig.signed || opts.trust === true;
    if (!memOk) {
      notice(
        `smolvm: ${file} holds memory state, but this host did not sign it (${sig.why}): cold-booting its disk ` +
          "instead; to restore its memory, use --trust (SmolVM.fromPack(file, { trust: true })) if you trust its source",
      );
    }
  }
  const plan: LaunchPlan = {
    kernelPath: join(dir, SECTION_FILES.kernel),
    initrdPath: join(dir, SECTION_FILES.initrd),
    hostname: manifest.hostname,
    bootArgs: manifest.config.bootArgs,
    diskBase: join(dir, SECTION_FILES.disk),
    diskBaseFormat: "qcow2",
    accel: (memOk ? manifest.accel : "auto") as AccelName,
    agentBinary,
    from: memOk ? "snapshot" : "boot",
    ...(memOk ? { incoming: join(dir, SECTION_FILES.mem), nicInState: manifest.config.nic === true } : {}),
  };
  return { plan, manifest };
}

/** What a pack keeps of the image: its name and run defaults (the store id means nothing on another host). */
function packImage(i: ImageDefaults): PackImage {
  const { id: _id, ...rest } = i;
  return { ...rest, ref: rest.ref.slice(0, 512) };
}
