/** The default root filesystem: static busybox in an ext4 image made with `mkfs.ext4 -d` (no root, no loop devices). */
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ImageError } from "../errors.js";
import { isStaticElf } from "../util/elf.js";
import { mustRun, type Progress, silent, which } from "../util/run.js";

/** Bump when the rootfs layout changes, so images are rebuilt. */
export const ROOTFS_VERSION = 1;
export const ROOTFS_SIZE = "1G"; // sparse: a fresh image takes a few MiB of disk

const FILES: Record<string, string> = {
  "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
  "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
  "etc/shadow": "root:*:19000:0:99999:7:::\n",
  "etc/hostname": "smolvm\n",
  "etc/hosts": "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 smolvm\n",
  "etc/os-release": 'NAME="SmolVM busybox"\nID=smolvm-busybox\nPRETTY_NAME="SmolVM busybox"\n',
  "etc/profile": "export PS1='\\h:\\w\\$ '\n",
};

/** A statically linked busybox on the host (Debian's busybox-static), or null. */
export function busyboxPath(): string | null {
  return ["/bin/busybox", "/usr/bin/busybox"].find((p) => isStaticElf(p)) ?? null;
}

export async function buildBusyboxRootfs(out: string, progress: Progress = silent): Promise<void> {
  const busybox = busyboxPath();
  if (!busybox) throw new ImageError("a static busybox is needed for the default image; install busybox-static");
  const mkfs = which("mkfs.ext4");
  if (!mkfs) throw new ImageError("mkfs.ext4 is needed to build images; install e2fsprogs");
  progress("building the busybox root filesystem");
  const dir = mkdtempSync(join(tmpdir(), "smolvm-rootfs-"));
  try {
    for (const d of [
      "bin",
      "sbin",
      "usr/bin",
      "usr/sbin",
      "etc",
      "dev",
      "proc",
      "sys",
      "run",
      "root",
      "home",
      "var/tmp",
    ]) {
      mkdirSync(join(dir, d), { recursive: true });
    }
    mkdirSync(join(dir, "tmp"));
    chmodSync(join(dir, "tmp"), 0o1777);
    chmodSync(join(dir, "root"), 0o700);
    copyFileSync(busybox, join(dir, "bin/busybox"));
    chmodSync(join(dir, "bin/busybox"), 0o755);
    const applets = (await mustRun(busybox, ["--list-full"])).split("\n").filter(Boolean);
    for (const a of applets) {
      if (a === "bin/busybox") continue;
      mkdirSync(join(dir, dirname(a)), { recursive: true });
      symlinkSync("/bin/busybox", join(dir, a));
    }
    for (const [p, text] of Object.entries(FILES)) writeFileSync(join(dir, p), text);
    chmodSync(join(dir, "etc/shadow"), 0o600);
    const tmp = `${out}.tmp-${process.pid}`;
    rmSync(tmp, { force: true });
    await mustRun(mkfs, [
      "-q",
      "-F",
      "-t",
      "ext4",
      "-L",
      "smolvm-root",
      "-E",
      "root_owner=0:0",
      "-d",
      dir,
      tmp,
      ROOTFS_SIZE,
    ]);
    renameSync(tmp, out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
