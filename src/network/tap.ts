/**
 * TAP mode: one TAP device per VM (`smvt<lease>`), routed, never bridged: the host side holds the /30's gateway
 * address, the VM is seen at the other one, so a VM's TAP is a link of its own and VMs never share a segment. The
 * TAP is created and set up by the VMM's launcher (`--new-tap`: a few ioctls in the process that starts the VMM,
 * instead of an `ip` process before it), not persistent: it goes when the VMM ends, however it ends. Inside, the
 * guest has the addresses every guest has (guest.ts), translated at the TAP by nft.ts. Leases live in SQLite; a
 * lease whose device name is taken on the host (another state dir, foreign software) is skipped.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { SmolVMError } from "../errors.js";
import type { StateStore } from "../state/store.js";
import { runHost, which } from "../util/run.js";
import { addressPool, cidrText, leaseAddresses, poolSize } from "./addr.js";
import { TAP_PREFIX } from "./nft.js";

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

let uplinkDone: string | null = null;

/**
 * Forwarding on for the uplink (checked once per process: the default route rarely moves). Forwarding is switched on
 * for each TAP (by its launcher) and the uplink only, not with the host-wide `ip_forward`; what may be forwarded is
 * decided by SmolVM's nftables chains.
 */
export async function uplinkForwarding(): Promise<void> {
  const up = await (uplinkDone === null ? uplink() : Promise.resolve(uplinkDone));
  if (!up) return;
  if (uplinkDone !== up) sysctl(`ipv4/conf/${up}/forwarding`, "1");
  uplinkDone = up;
}

export async function deleteTap(tap: string): Promise<void> {
  if (!tap.startsWith(TAP_PREFIX) || !existsSync(`/sys/class/net/${tap}`)) return;
  await runHost(ipBin(), ["link", "del", tap]);
}
