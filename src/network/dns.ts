/**
 * The resolver of a TAP-mode guest: one dnsmasq per VM, listening only on the VM's gateway address, forwarding to the
 * host's resolvers. With a domain allowlist it answers only the allowed names (everything else: REFUSED) and puts
 * each address it returns for them into the VM's nftables set `d_<key>`, which is what lets the guest connect to
 * them: a name whose addresses change keeps working, because the guest's next lookup adds the new ones.
 * dnsmasq runs as nobody and keeps only CAP_NET_ADMIN (for the set); it caches nothing, so every lookup refreshes.
 */
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { ResolvedInternet } from "../config.js";
import { SmolVMError } from "../errors.js";
import { startDaemon } from "../util/daemon.js";
import { processAlive, waitFor } from "../util/proc.js";
import { which } from "../util/run.js";
import { TABLE, vmKey } from "./nft.js";
import { hostNameservers } from "./passt.js";

export interface DnsProcess {
  pid: number;
}

/** dnsmasq's name for "this name and every name below it". */
const dnsmasqDomain = (d: string) => d.replace(/^\*\./, "");

export function dnsmasqArgs(vmId: string, listen: string, internet: ResolvedInternet, pidFile: string): string[] {
  const k = vmKey(vmId);
  const args = [
    "--conf-file=/dev/null",
    "--keep-in-foreground",
    "--no-hosts",
    "--bind-interfaces",
    `--listen-address=${listen}`,
    "--port=53",
    "--cache-size=0",
    "--no-negcache",
    "--filter-AAAA", // the guest has IPv4 only: no AAAA answers it cannot use
    "--user=nobody",
    "--group=nogroup",
    `--pid-file=${pidFile}`,
    "--log-facility=/dev/null",
  ];
  if (typeof internet === "object") {
    const servers = hostNameservers();
    args.push("--no-resolv", "--address=/#/");
    for (const d of internet.allowDomains.map(dnsmasqDomain)) {
      for (const s of servers) args.push(`--server=/${d}/${s}`);
      args.push(`--nftset=/${d}/4#inet#${TABLE}#d_${k}`);
    }
  } else {
    args.push("--resolv-file=/etc/resolv.conf");
  }
  return args;
}

/** Start the VM's resolver on its gateway address (the TAP must be up with that address). */
export async function startDns(
  vmId: string,
  runDir: string,
  listen: string,
  internet: ResolvedInternet,
): Promise<DnsProcess> {
  const bin = which("dnsmasq");
  if (!bin)
    throw new SmolVMError('network mode "tap" needs dnsmasq for the guest\'s DNS: sudo apt-get install dnsmasq-base');
  const pidFile = join(runDir, "dnsmasq.pid");
  rmSync(pidFile, { force: true });
  const pid = await startDaemon(`dnsmasq for VM ${vmId}`, bin, dnsmasqArgs(vmId, listen, internet, pidFile), {
    errPath: join(runDir, "dnsmasq.err"),
    readyFile: pidFile,
  });
  return { pid };
}

/** Kill the VM's resolver (it keeps no state) and wait until it is gone. */
export async function stopDns(pid: number | null | undefined): Promise<void> {
  if (!pid || !processAlive(pid, "dnsmasq")) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return;
  }
  await waitFor(() => !processAlive(pid, "dnsmasq"), 2000);
}

/** The pid in a dnsmasq pid file, if that process is still dnsmasq. */
export function dnsPidFrom(runDir: string): number | null {
  try {
    const pid = Number(readFileSync(join(runDir, "dnsmasq.pid"), "utf8").trim());
    return processAlive(pid, "dnsmasq") ? pid : null;
  } catch {
    return null;
  }
}
