/**
 * User mode: passt, one process per VM, translating the guest's frames into ordinary sockets of the host. Why passt
 * and not QEMU's built-in slirp: slirp maps its gateway address to the host's 127.0.0.1, so a guest would reach every
 * loopback service; passt runs as its own unprivileged process and is told `--no-map-gw`. As root it runs as the
 * VM's own uid, and SmolVM's nftables output chain for that uid keeps it off the host's addresses, private networks
 * and the metadata address, and applies the egress policy. Without root there is no such chain: see doctor.
 */
import { spawn } from "node:child_process";
import { chownSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, rmSync } from "node:fs";
import type { Socket } from "node:net";
import { setPriority as osSetPriority } from "node:os";
import { join } from "node:path";
import { SmolVMError } from "../errors.js";
import { runtimeDir } from "../paths.js";
import { errorTail } from "../util/daemon.js";
import { killAllMatching, killAndWait, processAlive, waitFor } from "../util/proc.js";
import { which, withPrivateUmask } from "../util/run.js";
import { trace } from "../util/trace.js";
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

export interface PasstProcess {
  pid: number;
  /**
   * Our end of the socket pair passt serves, for the VMM: call it right before the VMM is spawned (synchronously).
   * Throws if passt is gone: Node then closes our end, and the number may soon be another descriptor's.
   */
  fd(): number;
  /** The VMM has its copy: let passt start (`ok`), or not; our end is closed either way. */
  handedOver(ok: boolean): void;
  /** Settles once passt is up (its pid file written), or rejects with what it said. */
  ready(): Promise<void>;
}

/** Set a process's nice value (only as root: anyone else could not set it back). Gone already: nothing to do. */
function setPriority(pid: number, nice: number): void {
  if (process.getuid?.() !== 0) return;
  try {
    osSetPriority(pid, nice);
  } catch {
    // gone: ready() says so
  }
}

/** The descriptor under a socket libuv made (its pipe handle keeps it in `fd`). */
function socketFd(s: Socket): number {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== "number" || fd < 0) throw new SmolVMError("cannot get the descriptor of passt's socket");
  return fd;
}

/**
 * Prepare the VM's passt on one end of a socket pair (`--fd`; Node's stdio pipes are socket pairs) whose other end
 * goes to the VMM. A shell holds passt's end and execs passt only once the VMM has its copy (`handedOver`): passt's
 * start-up (~90 ms of CPU here, most of it page faults of its frame buffers) then runs while the VMM loads the
 * guest's state instead of competing with the VMM's own start, and at low priority until it is up. The guest sends
 * nothing before it runs, and frames wait in the socket. passt exits by itself once the VMM has gone (`--one-off`).
 */
export function startPasst(vmId: string, owner: { uid: number; gid: number } | null): PasstProcess {
  const bin = which("passt");
  if (!bin) {
    throw new SmolVMError('network mode "user" needs passt: sudo apt-get install passt (or use network "tap" as root)');
  }
  const dir = passtDir(vmId);
  ensureDir(dir, owner);
  const errPath = join(dir, "passt.err");
  const pidFile = join(dir, "passt.pid");
  const args = [
    ...["-f", "-q", "-4", "--no-map-gw", "-1", "-F", "3", "-P", pidFile],
    ...["-a", GUEST_NET.ip, "-n", String(GUEST_NET.prefix), "-g", GUEST_NET.gateway, "-M", GUEST_NET.gatewayMac],
    ...["--dns-forward", GUEST_NET.dns, "--no-dhcp-search", "-t", "none", "-u", "none"],
    ...(owner ? ["--runas", `${owner.uid}:${owner.gid}`] : []),
  ];
  trace("passt: dir ready");
  const errFd = openSync(errPath, "w", 0o600);
  let child: ReturnType<typeof spawn>;
  try {
    // `go` on stdin: exec passt (same pid); end of input without it: exit
    const sh = 'read -r go && [ "$go" = go ] && exec "$0" "$@"';
    child = withPrivateUmask(() =>
      spawn("/bin/sh", ["-c", sh, bin, ...args], { stdio: ["pipe", "ignore", errFd, "pipe"], detached: true }),
    );
  } finally {
    closeSync(errFd);
  }
  trace("passt: spawned");
  const sock = child.stdio[3] as Socket | null;
  sock?.pause(); // never read here: every byte is the VMM's
  child.unref();
  const pid = child.pid;
  if (!pid || !sock || !child.stdin) {
    sock?.destroy();
    child.stdin?.destroy();
    throw new SmolVMError(`passt for VM ${vmId} failed to start: ${errorTail(errPath) || "spawn failed"}`);
  }
  setPriority(pid, 19);
  const stdin = child.stdin;
  stdin.on("error", () => {}); // the shell gone: ready() says why
  let exited = false;
  child.on("exit", () => {
    exited = true;
  });
  const gone = () => exited || !processAlive(pid, dir);
  const failed = () => new SmolVMError(`passt for VM ${vmId} exited: ${errorTail(errPath) || "no message"}`);
  let told = false;
  return {
    pid,
    fd: () => {
      if (gone() || sock.destroyed) throw failed();
      return socketFd(sock);
    },
    handedOver: (ok) => {
      if (!told && !stdin.destroyed) stdin.end(ok ? "go\n" : "");
      told = true;
      sock.destroy();
    },
    ready: async () => {
      if (!(await waitFor(() => gone() || existsSync(pidFile), 10_000)) || gone()) throw failed();
      setPriority(pid, 0);
    },
  };
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
