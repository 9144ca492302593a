/**
 * The image store under the data dir. Everything is content-addressed, so `ensureDefaultImage` is idempotent and
 * safe to run from several processes at once (each piece is written to a temp file and renamed into place):
 *   agent/<hash>/smolvm-agent         the static agent (also the host-side proxy)
 *   initrd/<agent>-<kernel>.img       initramfs: the agent as /init + the virtio modules
 *   images/busybox-v<N>.ext4          the default root filesystem
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir } from "../paths.js";
import { type Progress, silent } from "../util/run.js";
import { agentHash, agentPath, ensureAgent } from "./agent-build.js";
import { type CpioEntry, S_IFCHR, S_IFDIR, S_IFREG, writeCpio } from "./cpio.js";
import { ensureKernel, findKernel, type KernelInfo } from "./kernel.js";
import { buildBusyboxRootfs, ROOTFS_VERSION } from "./rootfs.js";

export interface ImagePaths {
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
  agentPath: string;
  kernelVersion: string;
}

const shortHash = (s: string) => createHash("sha256").update(s).digest("hex").slice(0, 12);
const initrdPathFor = (kernel: KernelInfo) =>
  join(dataDir(), "initrd", `${agentHash()}-${shortHash(kernel.version + kernel.modules.join(","))}.img`);
export const defaultRootfsPath = () => join(dataDir(), "images", `busybox-v${ROOTFS_VERSION}.ext4`);

/** The default image's paths if every piece is already built, else null (builds nothing). */
export function findDefaultImage(): ImagePaths | null {
  const kernel = findKernel();
  if (!kernel) return null;
  const paths = {
    kernelPath: kernel.kernelPath,
    initrdPath: initrdPathFor(kernel),
    rootfsPath: defaultRootfsPath(),
    agentPath: agentPath(),
    kernelVersion: kernel.version,
  };
  return existsSync(paths.initrdPath) && existsSync(paths.rootfsPath) && existsSync(paths.agentPath) ? paths : null;
}

export function buildInitrd(agent: string, kernel: KernelInfo): Buffer {
  const dir = (path: string): CpioEntry => ({ path, mode: S_IFDIR | 0o755 });
  const entries: CpioEntry[] = [
    dir("dev"),
    { path: "dev/console", mode: S_IFCHR | 0o600, rdev: [5, 1] },
    dir("proc"),
    dir("sys"),
    dir("newroot"),
    dir("etc"),
    dir("etc/smolvm"),
    dir("lib"),
    dir("lib/modules"),
    { path: "init", mode: S_IFREG | 0o755, data: readFileSync(agent) },
  ];
  const names = kernel.modules.map((m) => basename(m));
  for (const m of kernel.modules) {
    entries.push({ path: `lib/modules/${basename(m)}`, mode: S_IFREG | 0o644, data: readFileSync(m) });
  }
  entries.push({ path: "etc/smolvm/modules", mode: S_IFREG | 0o644, data: Buffer.from(`${names.join("\n")}\n`) });
  return writeCpio(entries);
}

function writeAtomic(path: string, data: Buffer): void {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

/** The build under way in this process: concurrent starts (a pool refilling beside a create) share it. */
let building: Promise<ImagePaths> | null = null;

/** Build whatever part of the default image is missing, and return its paths. */
export function ensureDefaultImage(progress: Progress = silent): Promise<ImagePaths> {
  building ??= buildDefaultImage(progress).finally(() => {
    building = null;
  });
  return building;
}

async function buildDefaultImage(progress: Progress): Promise<ImagePaths> {
  const agent = await ensureAgent(progress);
  const kernel = await ensureKernel(progress);
  const initrdPath = initrdPathFor(kernel);
  if (!existsSync(initrdPath)) {
    progress("building the initramfs");
    mkdirSync(join(dataDir(), "initrd"), { recursive: true });
    writeAtomic(initrdPath, buildInitrd(agent, kernel));
  }
  const rootfsPath = defaultRootfsPath();
  if (!existsSync(rootfsPath)) {
    mkdirSync(join(dataDir(), "images"), { recursive: true });
    await buildBusyboxRootfs(rootfsPath, progress);
  }
  if (!existsSync(kernel.kernelPath)) throw new ImageError(`kernel missing: ${kernel.kernelPath}`);
  return { kernelPath: kernel.kernelPath, initrdPath, rootfsPath, agentPath: agent, kernelVersion: kernel.version };
}
