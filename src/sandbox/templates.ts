/**
 * Fast starts by restoring instead of booting. A "fast image" is guest RAM in a plain file plus the device state
 * saved without RAM (QEMU's x-ignore-shared). A VM restored from one maps the RAM file privately, so clones share its
 * pages copy-on-write instead of each reading a copy.
 *   - warm templates: per image and config, booted once and captured (`<data>/warm/<key>/`);
 *   - snapshots: their full state file split by the backend when taken (`<snapshot>/fast/`): guest RAM into the RAM
 *     file, the rest of the state beside it, loaded without x-ignore-shared.
 * Both are immutable once renamed into place; concurrent builders race harmlessly (the loser's copy is dropped).
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AgentClient } from "../agent/client.js";
import type { Backend, BootSpec, NicSpec, SplitInfo } from "../backends/types.js";
import { type AccelName, networkOf, type ResolvedVMConfig } from "../config.js";
import { SmolVMError } from "../errors.js";
import { setTemplateVersion } from "../images/usage.js";
import { GUEST_NET, guestNetKey } from "../network/guest.js";
import { templateGuestNet } from "../network/index.js";
import { dataDir, runtimeDir } from "../paths.js";
import { tempPath } from "../state/journal.js";
import { type SnapshotRecord, StateStore } from "../state/store.js";
import { buildOnce } from "../util/build-lock.js";
import type { Progress } from "../util/run.js";
import { diskFormatOf, type LaunchPlan } from "./snapshots.js";

/** Bump when the template layout or capture procedure changes. */
// 2: NICs captured up; 3: with /etc/resolv.conf; 4: NIC offloads off; 5: captured with the guest's final network;
// 6: booted with reboot=t (a panic ends the VM at once); 7: idle tuning (TCG CPU with ARAT, tsc=reliable, nowatchdog,
// no proactive compaction, the firmware's PIT stopped: docs/DENSITY.md)
// 8: the exec path warmed before the capture (warmExecPath)
const TEMPLATE_VERSION = 8;
setTemplateVersion(TEMPLATE_VERSION);
const TEMPLATE_HOSTNAME = "smolvm-template";
const MIB = 1024 * 1024;

interface FastMeta {
  ramBytes: number;
  stateBytes: number;
  /**
   * The RAM file as written (inode, change time): every VM restored from it maps it, so a change afterwards (a VMM
   * that escaped its sandbox writing through its descriptor) must never reach the next VM. Absent in old images.
   */
  ramSeal?: string;
  /**
   * device-state: the state file holds device state alone, saved with the RAM file shared (x-ignore-shared);
   * split: the state file is the full state minus the RAM the RAM file holds (`Backend.splitState`).
   * Absent in fast images from before the split existed: device-state.
   */
  format?: "device-state" | "split";
  split?: SplitInfo;
}

export interface FastImage {
  ram: string;
  state: string;
  /** Restore with the VMM told that shared RAM is not in the state file (device-state images). */
  ignoreShared: boolean;
  meta: FastMeta;
}

const fastFiles = (dir: string) => ({
  ram: join(dir, "ram.raw"),
  state: join(dir, "state.bin"),
  meta: join(dir, "meta.json"),
});

/** What changes whenever a file's content is written: its inode and change time (which no user can set back). */
function seal(file: string): string {
  const st = statSync(file, { bigint: true });
  return `${st.dev}:${st.ino}:${st.ctimeNs}:${st.size}`;
}

/** The fast image in `dir` if it is complete and unaltered (sizes as written), else null. */
export function readFast(dir: string): FastImage | null {
  const f = fastFiles(dir);
  let meta: FastMeta;
  try {
    meta = JSON.parse(readFileSync(f.meta, "utf8")) as FastMeta;
  } catch {
    return null;
  }
  for (const [file, bytes] of [
    [f.ram, meta.ramBytes],
    [f.state, meta.stateBytes],
  ] as const) {
    const size = existsSync(file) ? statSync(file).size : -1;
    if (size !== bytes) {
      throw new SmolVMError(
        `${file} is damaged: it has ${size < 0 ? "gone" : `${size} bytes`}, ${bytes} were written (truncated or replaced)`,
      );
    }
  }
  if (meta.ramSeal !== undefined && seal(f.ram) !== meta.ramSeal) {
    throw new TamperedImageError(f.ram);
  }
  return { ram: f.ram, state: f.state, ignoreShared: meta.format !== "split", meta };
}

/** A fast image's RAM file changed after it was written: it is not used (a warm template is rebuilt). */
export class TamperedImageError extends SmolVMError {
  constructor(readonly file: string) {
    super(`${file} was modified after it was written (by a VM that escaped its sandbox?): refusing to restore from it`);
  }
}

/** Write the meta file last: the seal covers the RAM file as it is now, read-only from here on. */
function writeMeta(metaPath: string, ram: string, meta: FastMeta): void {
  chmodSync(ram, 0o400);
  writeFileSync(metaPath, JSON.stringify({ ...meta, ramSeal: seal(ram) }), { mode: 0o600 });
}

/**
 * Split the full state file `stateFile` into a fast image in `dir`: guest RAM in a sparse file, the rest of the state
 * beside it. No VMM runs. False when the backend does not understand the file (nothing is written then).
 */
export async function splitToFast(
  backend: Backend,
  stateFile: string,
  dir: string,
  memSizeMib: number,
): Promise<boolean> {
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  const temp = tempPath(StateStore.open(), tmp);
  mkdirSync(tmp, { recursive: true, mode: 0o700 });
  const f = fastFiles(tmp);
  try {
    const info = await backend.splitState(stateFile, { ramPath: f.ram, ramBytes: memSizeMib * MIB, restPath: f.state });
    if (!info) {
      temp.discard();
      return false;
    }
    writeMeta(f.meta, f.ram, {
      ramBytes: statSync(f.ram).size,
      stateBytes: statSync(f.state).size,
      format: "split",
      split: info,
    });
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another process finished first: use theirs
    }
    temp.done();
    return true;
  } catch (e) {
    temp.discard();
    throw e;
  }
}

/**
 * The snapshot's memory as one full state file (what a VMM loading RAM from the stream needs, e.g. for a pack):
 * its own file, or one rebuilt into `workDir` from its fast image.
 */
export async function fullStateFile(backend: Backend, snap: SnapshotRecord, workDir: string): Promise<string> {
  const fast = readFast(join(snap.dir, "fast"));
  if (!fast || fast.state !== snap.memFile) return snap.memFile;
  if (fast.meta.format !== "split" || !fast.meta.split) {
    throw new SmolVMError(`snapshot ${snap.id} has no full memory state to export`);
  }
  const out = join(workDir, "mem.bin");
  await backend.joinState(
    { ramPath: fast.ram, ramBytes: fast.meta.ramBytes, restPath: fast.state, info: fast.meta.split },
    out,
  );
  return out;
}

/**
 * Start `spec` with its RAM written through to `<tmp>/ram.raw`, let `ready` run, save device state, stop the VMM,
 * then move the result to `dir`.
 */
async function capture(
  backend: Backend,
  spec: Omit<BootSpec, "ram" | "runDir" | "logPath" | "diskPath" | "diskFormat">,
  disk: { base: string; baseFormat: "raw" | "qcow2" },
  dir: string,
  ready: (agentSocket: string) => Promise<void>,
  files: Record<string, string> = {},
): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}-${Date.now()}`;
  const runDir = join(runtimeDir(), `capture-${createHash("sha256").update(tmp).digest("hex").slice(0, 12)}`);
  const temp = tempPath(StateStore.open(), tmp, { vmId: spec.vmId, runDir });
  mkdirSync(tmp, { recursive: true, mode: 0o700 });
  const f = fastFiles(tmp);
  let h: Awaited<ReturnType<Backend["boot"]>> | null = null;
  try {
    // the disk layer the capture runs on is created inside tmp, so RAM, state and disk are renamed in together
    const layer = await backend.prepareDisk({
      base: disk.base,
      baseFormat: disk.baseFormat,
      mode: "isolated",
      vmDir: tmp,
    });
    h = await backend.boot({
      ...spec,
      diskPath: layer.path,
      diskFormat: layer.format,
      ram: { path: f.ram, share: true },
      runDir,
      logPath: join(tmp, "console.log"),
    });
    await ready(h.agentSocket);
    await backend.saveState(h, f.state, true);
    await backend.kill(h);
    h = null;
    writeMeta(f.meta, f.ram, {
      ramBytes: statSync(f.ram).size,
      stateBytes: statSync(f.state).size,
      format: "device-state",
    });
    for (const [name, text] of Object.entries(files)) writeFileSync(join(tmp, name), text, { mode: 0o600 });
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another process finished first: use theirs
    }
    temp.done();
  } catch (e) {
    if (h) await backend.kill(h);
    temp.discard();
    throw e;
  }
}

export interface WarmInputs {
  config: ResolvedVMConfig;
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
  agentBinary: string;
  accel: AccelName;
  /** What the image runs in its template besides the agent (the browser image: a live Chromium), and its version. */
  warmup?: { key: string; run: (c: AgentClient) => Promise<void> };
}

/** Everything a warm template depends on: a change to any of them means another template. */
export function warmKey(w: WarmInputs, vmmIdentity: string): string {
  const c = w.config;
  // the file system's identity too, not only its path: an image removed and pulled again is another file system
  // (mkfs gives it a new UUID) at the same path, and a template of the old one must not be restored onto it
  const fsId = (() => {
    try {
      const st = statSync(w.rootfsPath);
      return `${st.ino}:${st.mtimeMs}`;
    } catch {
      return "";
    }
  })();
  const parts = [TEMPLATE_VERSION, w.kernelPath, w.initrdPath, w.rootfsPath, fsId, w.agentBinary, w.accel, vmmIdentity];
  parts.push(c.memSizeMib, c.vcpuCount, c.bootArgs);
  if (w.warmup) parts.push(`warmup:${w.warmup.key}`);
  // the device set is part of the saved state, and the guest's network configuration (its MTU is the mode's)
  if (hasNic(c)) parts.push(`nic:${networkOf(c).mode}`);
  return createHash("sha256").update(JSON.stringify(parts)).digest("hex").slice(0, 16);
}

/** The network mode of a config that has a NIC, or null. */
const nicMode = (c: ResolvedVMConfig): "user" | "tap" | null => {
  const m = networkOf(c).mode;
  return m === "none" ? null : m;
};

/** What a warm template of this config's guest has of its network (a LaunchPlan's `guestNet`). */
function guestNetOf(c: ResolvedVMConfig): { guestNet?: string } {
  const m = nicMode(c);
  return m ? { guestNet: guestNetKey(templateGuestNet(m)) } : {};
}

/** A template or snapshot of this config has a network device in its saved state. */
export const hasNic = (c: ResolvedVMConfig): boolean => networkOf(c).mode !== "none";

/** The unconnected NIC a capture runs with, so the saved state has the device a networked VM restores into. */
const captureNic = (c: ResolvedVMConfig): NicSpec | null => (hasNic(c) ? { kind: "dummy", mac: GUEST_NET.mac } : null);

/** A launch plan restoring from the warm template of these inputs, building the template the first time. */
export async function warmPlan(
  backend: Backend,
  w: WarmInputs,
  vmmIdentity: string,
  progress: Progress,
): Promise<LaunchPlan> {
  const dir = join(dataDir(), "warm", warmKey(w, vmmIdentity));
  let fast: FastImage | null;
  try {
    fast = readFast(dir);
  } catch (e) {
    if (!(e instanceof TamperedImageError)) throw e;
    progress(`${e.message}; building it again`);
    rmSync(dir, { recursive: true, force: true });
    fast = null;
  }
  if (!fast) {
    mkdirSync(join(dir, ".."), { recursive: true, mode: 0o700 });
    // one capture at a time per template, across processes: the others wait for it and restore from it
    fast = await buildOnce(
      `${dir}.lock`,
      () => readFast(dir),
      async () => {
        progress("building the warm-start snapshot for this image and size (once)");
        await captureTemplate(backend, w, vmmIdentity, dir);
        const made = readFast(dir);
        if (!made) throw new SmolVMError(`warm template in ${dir} was not created`);
        return made;
      },
      { onWait: () => progress("waiting for another process building the warm-start snapshot of this image") },
    );
  }
  return {
    kernelPath: w.kernelPath,
    initrdPath: w.initrdPath,
    hostname: TEMPLATE_HOSTNAME,
    bootArgs: w.config.bootArgs,
    // the capture's disk: a qcow2 layer (QEMU) or a raw copy (Firecracker)
    ...templateDisk(dir),
    accel: w.accel,
    agentBinary: w.agentBinary,
    incoming: fast.state,
    ram: fast.ram,
    ignoreShared: fast.ignoreShared,
    nicInState: hasNic(w.config),
    ...guestNetOf(w.config),
    from: "warm",
    consoleFrom: join(dir, "console.log"),
  };
}

function templateDisk(dir: string): { diskBase: string; diskBaseFormat: "raw" | "qcow2" } {
  const raw = join(dir, "disk.raw");
  return existsSync(raw)
    ? { diskBase: raw, diskBaseFormat: "raw" }
    : { diskBase: join(dir, "disk.qcow2"), diskBaseFormat: "qcow2" };
}

/**
 * Run what every sandbox's first commands run (a program by its path, a shell command) before the capture: the
 * binaries, libraries and directory entries they read are then in the template's page cache, and a restored VM's
 * first command reads nothing from its disk (under TCG, every guest code path it takes is also translated anew).
 * Best effort: an image may have no shell or no `true` (distroless).
 */
async function warmExecPath(c: AgentClient): Promise<void> {
  for (const req of [{ argv: ["true"] }, { shell: "true" }]) {
    // best effort: an image may have no shell or no `true` (distroless)
    await c.exec(req).exited.catch(() => {});
  }
}

/** Boot a template VM of these inputs, let its agent settle (and its network be configured), and capture it. */
async function captureTemplate(backend: Backend, w: WarmInputs, vmmIdentity: string, dir: string): Promise<void> {
  await capture(
    backend,
    {
      vmId: `template-${warmKey(w, vmmIdentity)}`,
      vcpuCount: w.config.vcpuCount,
      memSizeMib: w.config.memSizeMib,
      kernelPath: w.kernelPath,
      initrdPath: w.initrdPath,
      bootArgs: w.config.bootArgs,
      hostname: TEMPLATE_HOSTNAME,
      agentBinary: w.agentBinary,
      accel: w.accel,
      nic: captureNic(w.config),
    },
    { base: w.rootfsPath, baseFormat: "raw" },
    dir,
    async (sock) => {
      const c = await AgentClient.connect(sock);
      try {
        await c.waitReady(60_000, 5);
        // a NIC is captured with the configuration every guest has (network/guest.ts), so a VM restored from
        // the template is not reconfigured at all (one without internet only gets its resolver removed)
        const mode = networkOf(w.config).mode;
        if (mode !== "none") await c.netConfig(templateGuestNet(mode));
        await warmExecPath(c);
        await w.warmup?.run(c);
      } finally {
        c.close();
      }
    },
    // what `image prune` reads to tell a template that can still be used from one that cannot
    {
      "inputs.json": JSON.stringify({
        version: TEMPLATE_VERSION,
        rootfsPath: w.rootfsPath,
        initrdPath: w.initrdPath,
      }),
    },
  );
}

/**
 * The snapshot as a fast image. Snapshots are split into one when taken; one kept as a full state file (its format
 * not understood by the splitter, or taken before the splitter existed) is converted the first time: split if
 * possible, else loaded by the VMM (which is slow: it touches all of the file-backed RAM) and captured.
 */
export async function snapshotPlan(backend: Backend, snap: SnapshotRecord, agentBinary: string): Promise<LaunchPlan> {
  const dir = join(snap.dir, "fast");
  let fast = readFast(dir);
  if (!fast && backend.restoresDirectly) {
    // (Firecracker) the snapshot loads as it was written: memory mapped copy-on-write, no fast image
    return {
      ...snapshotBase(snap, agentBinary),
      incoming: snap.memFile,
    };
  }
  if (!fast && (await splitToFast(backend, snap.memFile, dir, snap.config.memSizeMib))) fast = readFast(dir);
  if (!fast) {
    await capture(
      backend,
      {
        vmId: `convert-${snap.id}`,
        vcpuCount: snap.config.vcpuCount,
        memSizeMib: snap.config.memSizeMib,
        kernelPath: snap.boot.kernelPath,
        initrdPath: snap.boot.initrdPath,
        bootArgs: snap.boot.bootArgs,
        hostname: snap.boot.hostname,
        agentBinary,
        accel: snap.accel as AccelName,
        incoming: snap.memFile,
        startPaused: true, // the guest never runs here, so the snapshot's own disk layer stays exact
        nic: captureNic(snap.config),
      },
      { base: snap.diskFile, baseFormat: diskFormatOf(snap.diskFile) },
      dir,
      async () => {},
    );
    fast = readFast(dir);
    if (!fast) throw new SmolVMError(`snapshot ${snap.id} could not be prepared for restore`);
  }
  return { ...snapshotBase(snap, agentBinary), incoming: fast.state, ram: fast.ram, ignoreShared: fast.ignoreShared };
}

/** What every restore of `snap` starts from: its boot, its disk, its console. */
function snapshotBase(snap: SnapshotRecord, agentBinary: string): Omit<LaunchPlan, "incoming"> {
  return {
    kernelPath: snap.boot.kernelPath,
    initrdPath: snap.boot.initrdPath,
    hostname: snap.boot.hostname,
    bootArgs: snap.boot.bootArgs,
    diskBase: snap.diskFile,
    diskBaseFormat: diskFormatOf(snap.diskFile),
    accel: snap.accel as AccelName,
    agentBinary,
    snapshotId: snap.id,
    consoleFrom: join(snap.dir, "console.log"),
    nicInState: hasNic(snap.config),
    from: "snapshot",
  };
}
