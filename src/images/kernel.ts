/**
 * Guest kernel sourcing. In order: `SMOLVM_KERNEL` (a bzImage; modules from `SMOLVM_KERNEL_MODULES`, else taken to
 * be built in), else Debian's `linux-image-cloud-<arch>` fetched with `apt-get download` and unpacked without
 * installing it. Only the bzImage, its build configuration (`config`) and the virtio modules are kept, under
 * `<data>/kernels/<version>/`.
 */
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir } from "../paths.js";
import { mustRun, type Progress, runHost, silent } from "../util/run.js";
import { indexModules, resolveModules } from "./modules.js";

export interface KernelInfo {
  version: string;
  kernelPath: string;
  /** Module files in load order (dependencies first). */
  modules: string[];
  source: "env" | "debian";
}

function debianArch(): string {
  if (process.arch === "x64") return "amd64";
  if (process.arch === "arm64") return "arm64";
  throw new ImageError(`no Debian cloud kernel for ${process.arch}; set SMOLVM_KERNEL to a kernel image`);
}

export const kernelsDir = () => join(dataDir(), "kernels");

/** The installed kernel, without fetching anything; null if none. */
export function findKernel(): KernelInfo | null {
  const env = process.env.SMOLVM_KERNEL;
  if (env) {
    if (!existsSync(env)) throw new ImageError(`SMOLVM_KERNEL points to a missing file: ${env}`);
    const modDir = process.env.SMOLVM_KERNEL_MODULES;
    const modules = modDir ? resolveModules(indexModules(modDir)).order : [];
    return { version: `custom-${basename(env)}`, kernelPath: env, modules, source: "env" };
  }
  const current = join(kernelsDir(), "current.json");
  if (!existsSync(current)) return null;
  try {
    const info = JSON.parse(readFileSync(current, "utf8")) as KernelInfo;
    if (existsSync(info.kernelPath) && info.modules.every((m) => existsSync(m))) return info;
  } catch {
    // fall through: re-fetch
  }
  return null;
}

/** Return the kernel, fetching Debian's cloud kernel when none is installed. */
export async function ensureKernel(progress: Progress = silent): Promise<KernelInfo> {
  const found = findKernel();
  if (found) return found;
  const meta = `linux-image-cloud-${debianArch()}`;
  progress(`resolving ${meta}`);
  const deps = await runHost("apt-cache", ["depends", "--important", meta]);
  const pkg = /Depends:\s*(linux-image-\S+)/.exec(deps.stdout)?.[1];
  if (!pkg) {
    throw new ImageError(
      `cannot resolve ${meta} with apt-cache (${deps.stderr.trim() || "no candidate"}); run 'apt-get update' first, ` +
        "or set SMOLVM_KERNEL to a kernel image",
    );
  }
  const work = mkdtempSync(join(tmpdir(), "smolvm-kernel-"));
  try {
    progress(`downloading ${pkg}`);
    await mustRun("apt-get", ["download", "-q", pkg], { cwd: work, timeoutMs: 600_000 });
    const deb = join(work, (await mustRun("sh", ["-c", "ls *.deb"], { cwd: work })).trim().split("\n")[0] ?? "");
    progress(`unpacking ${basename(deb)}`);
    const x = join(work, "x");
    await mustRun("dpkg-deb", ["-x", deb, x]);
    const version = (await mustRun("ls", [join(x, "lib/modules")])).trim().split("\n")[0] ?? "";
    const vmlinuz = join(x, "boot", `vmlinuz-${version}`);
    if (!version || !existsSync(vmlinuz)) throw new ImageError(`${pkg} holds no vmlinuz for ${version}`);
    const { order } = resolveModules(indexModules(join(x, "lib/modules", version)));
    const dest = join(kernelsDir(), version);
    const staging = `${dest}.tmp-${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(join(staging, "modules"), { recursive: true });
    copyFileSync(vmlinuz, join(staging, "vmlinuz"));
    const config = join(x, "boot", `config-${version}`);
    if (existsSync(config)) copyFileSync(config, join(staging, "config"));
    const names = order.map((m, i) => {
      const name = `${String(i).padStart(2, "0")}-${basename(m)}`;
      copyFileSync(m, join(staging, "modules", name));
      return name;
    });
    rmSync(dest, { recursive: true, force: true });
    renameSync(staging, dest);
    const info: KernelInfo = {
      version,
      kernelPath: join(dest, "vmlinuz"),
      modules: names.map((n) => join(dest, "modules", n)),
      source: "debian",
    };
    const tmp = join(kernelsDir(), `current.json.${process.pid}`);
    writeFileSync(tmp, JSON.stringify(info, null, 2));
    renameSync(tmp, join(kernelsDir(), "current.json"));
    progress(`kernel ${version} ready (${names.length} modules)`);
    return info;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Where the build configuration of `kernel` is, or null: `SMOLVM_KERNEL_CONFIG`; beside a fetched kernel, `config`;
 * beside a custom one, `<kernel>.config` (how Firecracker's CI kernels ship theirs), `config-<suffix>` for a
 * `vmlinuz-<suffix>` or `vmlinux-<suffix>`, or `config` in its folder.
 */
export function kernelConfigPath(kernel: KernelInfo): string | null {
  const env = process.env.SMOLVM_KERNEL_CONFIG;
  if (env) return existsSync(env) ? env : null;
  const dir = dirname(kernel.kernelPath);
  const name = basename(kernel.kernelPath);
  const suffix = /^vmlinu[xz]-(.+)$/.exec(name)?.[1];
  const candidates =
    kernel.source === "debian"
      ? [join(dir, "config")]
      : [`${kernel.kernelPath}.config`, ...(suffix ? [join(dir, `config-${suffix}`)] : []), join(dir, "config")];
  return candidates.find((c) => existsSync(c)) ?? null;
}

/**
 * The configuration of a Debian kernel fetched before SmolVM kept it: downloads `linux-image-<version>` again
 * (apt-get download) and keeps `boot/config-<version>` as `config`. Returns its path, or null for other kernels.
 */
export async function ensureKernelConfig(kernel: KernelInfo, progress: Progress = silent): Promise<string | null> {
  const have = kernelConfigPath(kernel);
  if (have || kernel.source !== "debian") return have;
  const pkg = `linux-image-${kernel.version}`;
  const work = mkdtempSync(join(tmpdir(), "smolvm-kconfig-"));
  try {
    progress(`downloading ${pkg} for its kernel configuration`);
    const got = await runHost("apt-get", ["download", "-q", pkg], { cwd: work, timeoutMs: 600_000 });
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (got.code !== 0 || !deb) {
      throw new ImageError(`cannot fetch ${pkg} for its kernel configuration: ${got.stderr.trim().slice(-500)}`);
    }
    const x = join(work, "x");
    await mustRun("dpkg-deb", ["-x", join(work, deb), x]);
    const src = join(x, "boot", `config-${kernel.version}`);
    if (!existsSync(src)) throw new ImageError(`${deb} holds no boot/config-${kernel.version}`);
    const dest = join(dirname(kernel.kernelPath), "config");
    const tmp = `${dest}.${process.pid}`;
    copyFileSync(src, tmp);
    renameSync(tmp, dest);
    return dest;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
