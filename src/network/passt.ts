/**
 * User mode: passt, one process per VM, translating the guest's frames into ordinary sockets of the host. Why passt
 * and not QEMU's built-in slirp: slirp maps its gateway address to the host's 127.0.0.1, so a guest would reach every
 * loopback service; passt runs as its own unprivileged process and is told `--no-map-gw`. As root it runs as the
 * VM's own uid, and SmolVM's nftables output chain for that uid keeps it off the host's addresses, private networks
 * and the metadata address, and applies the egress policy. Without root there is no such chain: see doctor.
 */
import { chownSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { setPriority } from "node:os";
import { join } from "node:path";
import { SmolVMError } from "../errors.js";
import { runtimeDir } from "../paths.js";
import { errorTail } from "../util/daemon.js";
import { killAllMatching, killAndWait, processAlive, waitFor } from "../util/proc.js";
import { which } from "../util/run.js";
import { GUEST_NET } from "./guest.js";
import { vmKey } from "./nft.js";

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

export interface PasstPeer {
  /** For the VMM's launcher, which starts passt on its end of a socket pair once the VMM is up (NicSpec). */
  peer: { argv: string[]; errPath: string; pidPath: string };
  /** Settles with passt's pid once it is up (its pid file written), or rejects with what it said. */
  ready(): Promise<number>;
}

/**
 * The VM's passt, as the VMM's launcher starts it: on one end of a socket pair whose other end is the VMM's NIC
 * (`--fd 3`), once the VMM is up, at low priority (its start-up costs ~90 ms of CPU here, mostly page faults of its
 * frame buffers, and must not slow the VMM's), in a session of its own. Nothing waits for it before the VMM starts:
 * the guest sends nothing until it runs, and frames wait in the socket. It exits by itself once the VMM has gone
 * (`--one-off`). Without a process of ours in between, no descriptor is passed through Node.
 */
export function passtPeer(vmId: string, owner: { uid: number; gid: number } | null): PasstPeer {
  const bin = which("passt");
  if (!bin) {
    throw new SmolVMError('network mode "user" needs passt: sudo apt-get install passt (or use network "tap" as root)');
  }
  const dir = passtDir(vmId);
  ensureDir(dir, owner);
  const errPath = join(dir, "passt.err");
  const pidFile = join(dir, "passt.pid"); // passt's own, written once it is set up
  const pidPath = join(dir, "peer.pid"); // the launcher's, written when it starts passt
  const argv = [
    ...[bin, "-f", "-q", "-4", "--no-map-gw", "-1", "-F", "3", "-P", pidFile],
    ...["-a", GUEST_NET.ip, "-n", String(GUEST_NET.prefix), "-g", GUEST_NET.gateway, "-M", GUEST_NET.gatewayMac],
    ...["--dns-forward", GUEST_NET.dns, "--no-dhcp-search", "-t", "none", "-u", "none"],
    ...(owner ? ["--runas", `${owner.uid}:${owner.gid}`] : []),
  ];
  const read = (f: string): number => {
    try {
      return Number.parseInt(readFileSync(f, "utf8"), 10) || 0;
    } catch {
      return 0;
    }
  };
  return {
    peer: { argv, errPath, pidPath },
    ready: async () => {
      const pid = read(pidPath);
      const gone = () => !processAlive(pid, dir);
      if (!(await waitFor(() => existsSync(pidFile) || gone(), 10_000)) || gone()) {
        throw new SmolVMError(`passt for VM ${vmId} exited: ${errorTail(errPath) || "no message"}`);
      }
      if (process.getuid?.() === 0) {
        try {
          setPriority(pid, 0); // the launcher started it at nice 19
        } catch {
          // gone meanwhile: the guest's network says so
        }
      }
      return pid;
    },
  };
}

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
