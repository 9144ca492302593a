/**
 * TAP mode: one persistent TAP device per VM (`smvt<lease>`), routed, never bridged: the host side holds the /30's
 * gateway address, the guest the other one, so a VM's TAP is a link of its own and VMs never share a segment.
 * Leases live in SQLite; a lease whose device name is taken on the host (another state dir, foreign software) is
 * skipped. The host side has one fixed MAC address, so a restored clone's cached gateway entry stays right.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { SmolVMError } from "../errors.js";
import type { StateStore } from "../state/store.js";
import { runHost, which } from "../util/run.js";
import { addressPool, cidrText, leaseAddresses, poolSize } from "./addr.js";
import { TAP_PREFIX } from "./nft.js";

/** Host side of every TAP. */
export const GATEWAY_MAC = "02:53:4d:00:00:01";

export interface TapLease {
  idx: number;
  tap: string;
  gateway: string;
  guest: string;
  subnet: string;
  pool: string;
}

function ipBin(): string {
  const ip = which("ip");
  if (!ip) throw new SmolVMError("ip not found: install the iproute2 package");
  return ip;
}

function leaseOf(idx: number): TapLease {
  const pool = addressPool();
  return { idx, tap: `${TAP_PREFIX}${idx}`, ...leaseAddresses(pool, idx), pool: cidrText(pool) };
}

/** The VM's lease, taking the lowest free one. */
export function takeLease(store: StateStore, vmId: string): TapLease {
  const pool = addressPool();
  const size = poolSize(pool);
  return store.db
    .transaction(() => {
      const had = store.db.prepare("SELECT idx FROM net_leases WHERE vm_id = ?").get(vmId) as
        | { idx: number }
        | undefined;
      if (had) return leaseOf(had.idx);
      const used = new Set(
        (store.db.prepare("SELECT idx FROM net_leases").all() as { idx: number }[]).map((r) => r.idx),
      );
      for (let i = 0; i < size; i++) {
        if (used.has(i) || existsSync(`/sys/class/net/${TAP_PREFIX}${i}`)) continue;
        store.db
          .prepare("INSERT INTO net_leases (idx, vm_id, tap, created_at) VALUES (?, ?, ?, ?)")
          .run(i, vmId, `${TAP_PREFIX}${i}`, new Date().toISOString());
        return leaseOf(i);
      }
      throw new SmolVMError(`no free address in the pool ${cidrText(pool)} (set SMOLVM_NET_POOL to a larger one)`);
    })
    .immediate();
}

export function leaseFor(store: StateStore, vmId: string): TapLease | null {
  const r = store.db.prepare("SELECT idx FROM net_leases WHERE vm_id = ?").get(vmId) as { idx: number } | undefined;
  return r ? leaseOf(r.idx) : null;
}

export function releaseLease(store: StateStore, vmId: string): void {
  store.db.prepare("DELETE FROM net_leases WHERE vm_id = ?").run(vmId);
}

function sysctl(path: string, value: string): void {
  try {
    writeFileSync(`/proc/sys/net/${path}`, value);
  } catch {
    // absent (IPv6 off on this host) or read-only: the nftables rules still hold
  }
}

/** The interface of the host's IPv4 default route (the uplink NAT goes out of), or null. From /proc: no exec. */
export async function uplink(): Promise<string | null> {
  try {
    for (const line of readFileSync("/proc/net/route", "utf8").split("\n").slice(1)) {
      const [iface, dest, , , , , , mask] = line.trim().split(/\s+/);
      if (iface && dest === "00000000" && mask === "00000000") return iface;
    }
  } catch {
    // no IPv4
  }
  return null;
}

/**
 * Create and address the TAP. Forwarding is switched on for this TAP and the uplink only (the per-interface
 * switch, not the host-wide `ip_forward`); what may be forwarded is decided by SmolVM's nftables chains.
 */
export async function createTap(l: TapLease): Promise<void> {
  const ip = ipBin();
  if (existsSync(`/sys/class/net/${l.tap}`)) await runHost(ip, ["link", "del", l.tap]); // our own, left by a crash
  // one `ip` process for the whole device: each exec costs milliseconds on the warm-start path
  const batch = [
    `tuntap add dev ${l.tap} mode tap`,
    `link set dev ${l.tap} address ${GATEWAY_MAC}`,
    `addr add ${l.gateway}/30 dev ${l.tap}`,
    `link set dev ${l.tap} up`,
  ].join("\n");
  const r = await runHost(ip, ["-batch", "-"], { input: `${batch}\n`, timeoutMs: 20_000 });
  if (r.code !== 0) {
    await deleteTap(l.tap);
    const why = r.stderr.trim();
    throw new SmolVMError(
      /not permitted|denied/i.test(why)
        ? `network mode "tap" needs root or CAP_NET_ADMIN (creating ${l.tap}: ${why}); use network "user" instead`
        : `cannot create TAP device ${l.tap}: ${why}`,
    );
  }
  sysctl(`ipv6/conf/${l.tap}/disable_ipv6`, "1");
  sysctl(`ipv4/conf/${l.tap}/forwarding`, "1");
  await uplinkForwarding();
}

let uplinkDone: string | null = null;

/** Forwarding on for the uplink (checked once per process: the default route rarely moves). */
async function uplinkForwarding(): Promise<void> {
  const up = await (uplinkDone === null ? uplink() : Promise.resolve(uplinkDone));
  if (!up) return;
  if (uplinkDone !== up) sysctl(`ipv4/conf/${up}/forwarding`, "1");
  uplinkDone = up;
}

export async function deleteTap(tap: string): Promise<void> {
  if (!tap.startsWith(TAP_PREFIX) || !existsSync(`/sys/class/net/${tap}`)) return;
  await runHost(ipBin(), ["link", "del", tap]);
}
