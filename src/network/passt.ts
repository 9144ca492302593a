/**
 * User mode: passt, one process per VM, translating the guest's frames into ordinary sockets of the host. Why passt
 * and not QEMU's built-in slirp: slirp maps its gateway address to the host's 127.0.0.1, so a guest would reach every
 * loopback service; passt runs as its own unprivileged process and is told `--no-map-gw`. As root it runs as the
 * VM's own uid, and SmolVM's nftables output chain for that uid keeps it off the host's addresses, private networks
 * and the metadata address, and applies the egress policy. Without root there is no such chain: see doctor.
 */
import { chownSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { SmolVMError } from "../errors.js";
import { runtimeDir } from "../paths.js";
import { errorTail, startDaemon } from "../util/daemon.js";
import { killAllMatching, killAndWait } from "../util/proc.js";
import { which } from "../util/run.js";
import { vmKey } from "./nft.js";

/** The addresses a user-mode guest sees (the same in every VM: each has its own passt). */
export const USER_NET = { guest: "10.0.2.15", prefix: 24, gateway: "10.0.2.2", dns: "10.0.2.3", mtu: 65520 };

/** A folder the VM's passt (running as the VM's uid) can create its socket in; nobody else can enter it. */
export function passtDir(vmId: string): string {
  return join(`${runtimeDir()}-net`, vmKey(vmId));
}

function ensureDir(dir: string, owner: { uid: number; gid: number } | null): void {
  const top = join(dir, "..");
  mkdirSync(top, { recursive: true, mode: owner ? 0o711 : 0o700 });
  const st = lstatSync(top);
  if (!st.isDirectory() || st.uid !== (process.getuid?.() ?? 0) || (st.mode & 0o022) !== 0) {
    throw new SmolVMError(`${top} must be a folder of ours that nobody else can write`);
  }
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  if (owner) chownSync(dir, owner.uid, owner.gid);
}

export interface PasstProcess {
  pid: number;
  socket: string;
}

/** Start the VM's passt; it exits by itself once its VMM has gone (`--one-off`). */
export async function startPasst(vmId: string, owner: { uid: number; gid: number } | null): Promise<PasstProcess> {
  const bin = which("passt");
  if (!bin) {
    throw new SmolVMError('network mode "user" needs passt: sudo apt-get install passt (or use network "tap" as root)');
  }
  const dir = passtDir(vmId);
  ensureDir(dir, owner);
  const socket = join(dir, "passt.sock");
  const args = [
    ...["-f", "-q", "-4", "--no-map-gw", "-1"],
    ...["-a", USER_NET.guest, "-n", String(USER_NET.prefix), "-g", USER_NET.gateway],
    ...["--dns-forward", USER_NET.dns, "--no-dhcp-search"],
    ...["-t", "none", "-u", "none", "-s", socket],
    ...(owner ? ["--runas", `${owner.uid}:${owner.gid}`] : []),
  ];
  const pid = await startDaemon(`passt for VM ${vmId}`, bin, args, {
    errPath: join(dir, "passt.err"),
    readyFile: socket,
  });
  return { pid, socket };
}

/** The last lines passt wrote to stderr, or "". */
export const passtError = (vmId: string): string => errorTail(join(passtDir(vmId), "passt.err"));

/** Kill the VM's passt (found by pid, or by its folder when the pid is unknown) and remove its folder. */
export async function stopPasst(vmId: string, pid: number | null | undefined): Promise<void> {
  const dir = passtDir(vmId);
  if (pid) await killAndWait(pid, "passt");
  else if (existsSync(dir)) await killAllMatching(dir);
  rmSync(dir, { recursive: true, force: true });
}

/** The host's IPv4 resolvers (passt forwards the guest's DNS to the first). */
export function hostNameservers(): string[] {
  try {
    return readFileSync("/etc/resolv.conf", "utf8")
      .split("\n")
      .map((l) => /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(l)?.[1])
      .filter((x): x is string => !!x);
  } catch {
    return [];
  }
}
