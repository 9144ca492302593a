/**
 * `smolvm setup --firecracker PATH`: install a Firecracker binary the user supplies (and the `jailer` beside it)
 * into ~/.local/bin, once it has said a version this client speaks. Copies go through a temporary file renamed into
 * place, mode 0755.
 */
import {
  accessSync,
  chmodSync,
  constants,
  copyFileSync,
  existsSync,
  mkdirSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { SmolVMError } from "../../errors.js";
import { checkFirecrackerVersion, localBinDir, probeVersion } from "./binary.js";

export class FirecrackerInstallError extends SmolVMError {}

export interface FirecrackerInstall {
  firecracker: string;
  version: string;
  /** Where the jailer went; null when none was beside the binary. */
  jailer: string | null;
}

function checkExecutable(file: string, what: string): void {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch {
    throw new FirecrackerInstallError(`${what} ${file} does not exist`);
  }
  if (!st.isFile()) throw new FirecrackerInstallError(`${what} ${file} is not a file`);
  try {
    accessSync(file, constants.X_OK);
  } catch {
    throw new FirecrackerInstallError(`${what} ${file} is not executable (chmod +x it)`);
  }
}

function versionOf(file: string, program: "Firecracker" | "Jailer"): string {
  const p = probeVersion(file, program);
  if (!p.version) throw new FirecrackerInstallError(`${file} is not a ${program} binary: ${p.error}`);
  return p.version;
}

function place(src: string, dest: string): void {
  const tmp = `${dest}.tmp-${process.pid}`;
  try {
    copyFileSync(src, tmp);
    chmodSync(tmp, 0o755);
    renameSync(tmp, dest);
  } finally {
    rmSync(tmp, { force: true });
  }
}

export function installFirecracker(path: string): FirecrackerInstall {
  const src = resolve(path);
  checkExecutable(src, "firecracker binary");
  const version = versionOf(src, "Firecracker");
  const bad = checkFirecrackerVersion(version);
  if (bad) throw new FirecrackerInstallError(`${src}: ${bad}`);
  const jailerSrc = join(dirname(src), "jailer");
  const hasJailer = existsSync(jailerSrc);
  if (hasJailer) {
    checkExecutable(jailerSrc, "jailer");
    const jv = versionOf(jailerSrc, "Jailer");
    if (jv !== version) {
      throw new FirecrackerInstallError(`${jailerSrc} is v${jv} but ${src} is v${version}: they must be one release`);
    }
  }
  const bin = localBinDir();
  mkdirSync(bin, { recursive: true });
  const dest = join(bin, "firecracker");
  if (resolve(dest) !== src) place(src, dest);
  let jailer: string | null = null;
  if (hasJailer) {
    jailer = join(bin, "jailer");
    if (resolve(jailer) !== jailerSrc) place(jailerSrc, jailer);
  }
  return { firecracker: dest, version, jailer };
}
