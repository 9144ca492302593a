/** The host programs SmolVM needs, and the Debian packages that provide them. */
import { existsSync } from "node:fs";
import { qemuBinary } from "./backends/qemu/binary.js";
import { busyboxPath } from "./images/rootfs.js";
import { which } from "./util/run.js";

export interface HostTool {
  what: string;
  pkg: string;
  found: string | null;
}

function libcStatic(): string | null {
  const dirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/lib64"];
  return dirs.map((d) => `${d}/libc.a`).find((p) => existsSync(p)) ?? null;
}

export function hostTools(): HostTool[] {
  const qemuPkg = process.arch === "arm64" ? "qemu-system-arm" : "qemu-system-x86";
  return [
    { what: "QEMU system emulator", pkg: qemuPkg, found: qemuBinary() },
    { what: "qemu-img", pkg: "qemu-utils", found: which("qemu-img") },
    { what: "mkfs.ext4", pkg: "e2fsprogs", found: which("mkfs.ext4") },
    { what: "static busybox", pkg: "busybox-static", found: busyboxPath() },
    { what: "C compiler", pkg: "gcc", found: which("gcc") ?? which("cc") },
    { what: "static libc", pkg: "libc6-dev", found: libcStatic() },
    { what: "dpkg-deb", pkg: "dpkg", found: which("dpkg-deb") },
    { what: "zstd", pkg: "zstd", found: which("zstd") },
    // images: presets are built from Debian packages; debugfs and resize2fs finish and grow ext4 images
    { what: "mmdebstrap", pkg: "mmdebstrap", found: which("mmdebstrap") },
    { what: "debugfs", pkg: "e2fsprogs", found: which("debugfs") },
  ];
}

export const missingTools = () => hostTools().filter((t) => !t.found);

/** Networking: passt (network "user"), nftables and dnsmasq (network "tap", and the firewall of both), iproute2. */
export function networkTools(): HostTool[] {
  return [
    { what: "passt", pkg: "passt", found: which("passt") },
    { what: "nft", pkg: "nftables", found: which("nft") },
    { what: "dnsmasq", pkg: "dnsmasq-base", found: which("dnsmasq") },
    { what: "ip", pkg: "iproute2", found: which("ip") },
    { what: "flock", pkg: "util-linux", found: which("flock") },
  ];
}

/**
 * Extra programs the test suite and benchmarks drive (tmux for terminal tests, dropbear/ssh for the SSH baseline,
 * a registry on loopback for the image tests).
 */
export function testTools(): HostTool[] {
  return [
    { what: "tmux", pkg: "tmux", found: which("tmux") },
    { what: "dropbear", pkg: "dropbear-bin", found: which("dropbear") },
    { what: "ssh client", pkg: "openssh-client", found: which("ssh") },
    { what: "OCI registry", pkg: "docker-registry", found: which("docker-registry") },
  ];
}
