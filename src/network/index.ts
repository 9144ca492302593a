/**
 * A VM's network, behind the four calls the lifecycle makes: `attachNetwork` before the VMM starts (lease, TAP,
 * rules, resolver or passt), `configureGuest` once the agent answers (address, MAC, route and resolver inside the
 * guest, after every boot and every restore: a clone gets its own), `detachNetwork` on stop, delete and reconcile
 * (idempotent: it finds what is left by name, so a crash at any point leaves nothing), and `setInternet` for a
 * policy change on a running VM. Nothing else in SmolVM knows how networking is done.
 */
import { existsSync } from "node:fs";
import type { AgentClient } from "../agent/client.js";
import { vmmIdentity } from "../backends/qemu/vmm-user.js";
import type { NicSpec } from "../backends/types.js";
import {
  checkPolicyForMode,
  type NetworkMode,
  networkOf,
  type ResolvedInternet,
  type ResolvedVMConfig,
} from "../config.js";
import { SmolVMError } from "../errors.js";
import { ensurePrivateDir } from "../paths.js";
import type { StateStore } from "../state/store.js";
import { trace } from "../util/trace.js";
import { addressPool, cidrText } from "./addr.js";
import { dnsPidFrom, startDns, stopDns } from "./dns.js";
import { GUEST_NET, guestNetConfig, guestNetKey } from "./guest.js";
import { applyVmRules, removeKnownVmRules, removeVmRules, type TapRules, type UserRules } from "./nft.js";
import { hostNameservers, passtDir, passtPeer, stopPasst } from "./passt.js";
import { closePorts } from "./ports.js";
import { deleteTap, leaseFor, releaseLease, takeLease, uplinkForwarding } from "./tap.js";

/** What `vm.networkConfig` and `smolvm status` show. */
export interface NetworkInfo {
  mode: NetworkMode;
  /**
   * The VM's address: in tap mode its leased one, which the host and the network see (the guest's own interface has
   * 10.0.2.15, translated at the TAP: `interfaceIp`); in user mode 10.0.2.15, private to its passt.
   */
  guestIp: string | null;
  /** In tap mode, the address of the guest's own interface (the same in every VM). */
  interfaceIp?: string;
  gatewayIp: string | null;
  /** Prefix length of the guest's subnet. */
  prefix: number | null;
  macAddress: string | null;
  tapDevice?: string;
  dns: string[];
  internet: ResolvedInternet;
  /** Whether SmolVM's firewall enforces the policy (false: user mode without root, see the docs). */
  enforced: boolean;
}

interface NetState extends NetworkInfo {
  passtPid?: number;
  dnsPid?: number;
  uid?: number;
}

export interface AttachedNetwork {
  /** The NIC to give the VMM, or null for none. */
  nic: NicSpec | null;
  info: NetworkInfo;
  /**
   * Put the VM's firewall rules in place (started on the first call; later calls return the same promise). The
   * guest must not run before they are (a restore's vCPUs are started only then; a cold boot waits for them before
   * the VMM starts), but the VMM may start meanwhile.
   */
  rules(): Promise<void>;
  /** Settles once whatever was started (rules, resolver) has settled: before undoing a failed start. */
  idle(): Promise<void>;
  /** Tell it the VMM is up (`ok`: its NIC exists) or will not be: what waited for that goes on (or is dropped). */
  vmmStarted(ok: boolean): void;
  /** Settles when what the guest needs once it runs (its resolver, passt) is up; call after `vmmStarted`. */
  ready(): Promise<void>;
}

const settled = Promise.resolve();
const nothing = { rules: () => settled, vmmStarted: () => {}, ready: () => settled, idle: () => settled };

/**
 * `f` run on the first call only, its rejection handled until someone awaits it; `settledIfStarted` waits for it
 * only if it was started.
 */
function once(f: () => Promise<void>): (() => Promise<void>) & { settledIfStarted(): Promise<void> } {
  let p: Promise<void> | null = null;
  const run = () => {
    p ??= later(f());
    return p;
  };
  return Object.assign(run, { settledIfStarted: async () => void (await p?.catch(() => {})) });
}

/** Start `p` now, await it later: no unhandled rejection meanwhile. */
function later<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

const isRoot = () => process.getuid?.() === 0;

function saveState(store: StateStore, vmId: string, s: NetState): void {
  store.db.prepare("INSERT OR REPLACE INTO vm_net (vm_id, info) VALUES (?, ?)").run(vmId, JSON.stringify(s));
}

function loadState(store: StateStore, vmId: string): NetState | null {
  const r = store.db.prepare("SELECT info FROM vm_net WHERE vm_id = ?").get(vmId) as { info: string } | undefined;
  return r ? (JSON.parse(r.info) as NetState) : null;
}

/** The network of a VM that is not running: its config, no addresses. */
export function unattached(c: ResolvedVMConfig): NetworkInfo {
  const net = networkOf(c);
  return {
    mode: net.mode,
    guestIp: null,
    gatewayIp: null,
    prefix: null,
    macAddress: null,
    dns: [],
    internet: net.internet,
    enforced: true,
  };
}

/** The network a VM has now (null: none, or it is not running). */
export function networkInfo(store: StateStore, vmId: string): NetworkInfo | null {
  const s = loadState(store, vmId);
  if (!s) return null;
  const { passtPid: _p, dnsPid: _d, uid: _u, ...info } = s;
  return info;
}

/**
 * Set up the VM's network before its VMM starts. `nicInState`: the guest state being restored has a NIC (a warm
 * template or snapshot taken with networking): the VM must then get one too, if only an unconnected one.
 */
export async function attachNetwork(
  store: StateStore,
  c: ResolvedVMConfig,
  runDir: string,
  nicInState: boolean,
): Promise<AttachedNetwork> {
  const net = networkOf(c);
  const mac = GUEST_NET.mac;
  const none = unattached(c);
  if (net.mode === "none") {
    return { nic: nicInState ? { kind: "dummy", mac } : null, info: none, ...nothing };
  }
  checkPolicyForMode(net.mode, net.internet);
  trace("net: attach");
  await detachNetwork(store, c.vmId, runDir); // whatever a crashed earlier start left
  trace("net: leftovers checked");
  ensurePrivateDir(runDir);
  try {
    if (net.mode === "tap") return await attachTap(store, c, runDir, mac);
    return await attachUser(store, c, runDir, mac, none);
  } catch (e) {
    await detachNetwork(store, c.vmId, runDir);
    throw e;
  }
}

async function attachTap(
  store: StateStore,
  c: ResolvedVMConfig,
  runDir: string,
  mac: string,
): Promise<AttachedNetwork> {
  const internet = networkOf(c).internet;
  if (!isRoot()) {
    throw new SmolVMError('network mode "tap" needs root or CAP_NET_ADMIN; use network "user" (passt) instead');
  }
  const l = takeLease(store, c.vmId);
  const state: NetState = {
    mode: "tap",
    guestIp: l.guest,
    interfaceIp: GUEST_NET.ip,
    gatewayIp: l.gateway,
    prefix: 30,
    macAddress: mac,
    tapDevice: l.tap,
    dns: internet === "off" ? [] : [GUEST_NET.dns],
    internet,
    enforced: true,
  };
  saveState(store, c.vmId, state); // before anything exists, so a crash from here on is cleaned up by name
  // the VMM's launcher creates the TAP; the rules only have to be in place before the guest runs, and the resolver
  // (which listens on the TAP's address) starts once the TAP exists: neither is on the way to the VMM's start
  const rules = once(() =>
    applyVmRules(c.vmId, { kind: "tap", tap: l.tap, guestIp: l.guest, gatewayIp: l.gateway }, internet, l.pool).then(
      () => trace("net: rules applied"),
    ),
  );
  await uplinkForwarding();
  let go: (ok: boolean) => void = () => {};
  const dns = later(
    new Promise<boolean>((res) => {
      go = res;
    }).then(async (ok) => {
      if (!ok || internet === "off") return;
      const p = await startDns(c.vmId, runDir, l.gateway, internet);
      trace("net: dns started");
      state.dnsPid = p.pid;
      saveState(store, c.vmId, state);
    }),
  );
  const { dnsPid: _d, ...info } = state;
  return {
    nic: {
      kind: "tap",
      tap: l.tap,
      mac,
      create: { mac: GUEST_NET.gatewayMac, address: `${l.gateway}/30`, neighbor: { ip: l.guest, mac } },
    },
    info,
    rules,
    vmmStarted: (ok) => go(ok),
    ready: () => dns,
    idle: async () => {
      go(false);
      await Promise.allSettled([rules.settledIfStarted(), dns]);
    },
  };
}

async function attachUser(
  store: StateStore,
  c: ResolvedVMConfig,
  runDir: string,
  mac: string,
  none: NetworkInfo,
): Promise<AttachedNetwork> {
  const internet = networkOf(c).internet;
  const owner = vmmIdentity(runDir);
  if (!owner && typeof internet === "object") {
    throw new SmolVMError(
      'network.internet: an allowlist in mode "user" is enforced by nftables rules for the VM\'s own uid, which ' +
        'needs root; run as root, or use internet "open" or "off"',
    );
  }
  const state: NetState = {
    mode: "user",
    guestIp: GUEST_NET.ip,
    gatewayIp: GUEST_NET.gateway,
    prefix: GUEST_NET.prefix,
    macAddress: mac,
    dns: internet === "off" ? [] : [GUEST_NET.dns],
    internet,
    enforced: !!owner,
    ...(owner ? { uid: owner.uid } : {}),
  };
  if (!owner && internet === "off") {
    // no firewall without root: "off" is a NIC connected to nothing
    saveState(store, c.vmId, { ...state, enforced: true });
    return {
      nic: { kind: "dummy", mac },
      info: { ...none, macAddress: mac, enforced: true },
      ...nothing,
    };
  }
  saveState(store, c.vmId, state);
  // passt is started by the VMM's launcher once the VMM is up; the rules only have to be in place before the guest
  // runs: passt opens sockets only for the guest's traffic
  const rules = once(() =>
    owner
      ? applyVmRules(
          c.vmId,
          { kind: "user", uid: owner.uid, nameservers: hostNameservers() },
          internet,
          cidrText(addressPool()),
        ).then(() => trace("net: rules applied"))
      : settled,
  );
  const p = passtPeer(c.vmId, owner);
  const { passtPid: _p, uid: _u, ...info } = state;
  let up: Promise<void> | null = null;
  return {
    nic: { kind: "stream", peer: p.peer, mac },
    info,
    rules,
    vmmStarted: () => {},
    ready: () => {
      up ??= p.ready().then((pid) => {
        trace("net: passt ready");
        state.passtPid = pid;
        saveState(store, c.vmId, state);
      });
      return up;
    },
    idle: async () => {
      await rules.settledIfStarted();
    },
  };
}

/**
 * Give the guest its address, MAC, route and resolver (after every boot and restore), unless `inState` says the
 * restored guest has them already (a warm template is captured with them: guest.ts).
 */
export async function configureGuest(client: AgentClient, info: NetworkInfo, inState?: string): Promise<void> {
  if (!info.guestIp || info.mode === "none") return;
  const cfg = guestNetConfig(info.mode, info.internet);
  if (inState === guestNetKey(cfg)) return;
  await client.netConfig(cfg);
}

/** The configuration a warm template's guest is captured with. */
export const templateGuestNet = (mode: "user" | "tap"): ReturnType<typeof guestNetConfig> =>
  guestNetConfig(mode, "open");

/** Remove everything the VM's network used. Safe to call at any time, any number of times. */
export async function detachNetwork(store: StateStore, vmId: string, runDir: string): Promise<void> {
  const s = loadState(store, vmId);
  const lease = leaseFor(store, vmId);
  if (!s && !lease) {
    // nothing recorded: only what a start killed before its first write could have left (cheap checks first)
    await stopDns(dnsPidFrom(runDir));
    if (existsSync(passtDir(vmId))) await stopPasst(vmId, null);
    return;
  }
  const known: TapRules | UserRules | null =
    s?.mode === "tap" && s.tapDevice && s.guestIp && s.gatewayIp
      ? { kind: "tap", tap: s.tapDevice, guestIp: s.guestIp, gatewayIp: s.gatewayIp }
      : s?.mode === "user" && s.uid !== undefined
        ? { kind: "user", uid: s.uid, nameservers: [] }
        : null;
  const hasRules = s?.mode === "tap" || s?.uid !== undefined || !!lease;
  // independent steps, side by side: the TAP's deletion alone waits for the kernel (tens of ms)
  await Promise.all([
    stopDns(s?.dnsPid ?? dnsPidFrom(runDir)),
    s?.passtPid || existsSync(passtDir(vmId)) ? stopPasst(vmId, s?.passtPid) : Promise.resolve(),
    (async () => {
      if (s?.tapDevice) await deleteTap(s.tapDevice);
      if (lease && lease.tap !== s?.tapDevice) await deleteTap(lease.tap);
    })(),
    (async () => {
      if (!hasRules) return;
      if (!(known && (await removeKnownVmRules(vmId, known)))) await removeVmRules(vmId);
    })(),
  ]);
  releaseLease(store, vmId);
  store.db.prepare("DELETE FROM vm_net WHERE vm_id = ?").run(vmId);
}

/** Change a running VM's egress policy (its record's config is updated by the caller). */
export async function setInternet(
  store: StateStore,
  vmId: string,
  runDir: string,
  internet: ResolvedInternet,
): Promise<NetworkInfo> {
  const s = loadState(store, vmId);
  if (!s || s.mode === "none")
    throw new SmolVMError(`VM ${vmId} has no network: create it with network "user" or "tap"`);
  checkPolicyForMode(s.mode, internet);
  if (s.mode === "tap") {
    const l = leaseFor(store, vmId);
    if (!l || !s.tapDevice || !s.gatewayIp || !s.guestIp) throw new SmolVMError(`VM ${vmId} has lost its TAP lease`);
    await applyVmRules(
      vmId,
      { kind: "tap", tap: s.tapDevice, guestIp: s.guestIp, gatewayIp: s.gatewayIp },
      internet,
      l.pool,
    );
    await stopDns(s.dnsPid ?? dnsPidFrom(runDir));
    s.dnsPid = internet === "off" ? undefined : (await startDns(vmId, runDir, s.gatewayIp, internet)).pid;
  } else {
    if (s.uid === undefined) {
      throw new SmolVMError("the egress policy of a user-mode VM can only be changed when SmolVM runs as root");
    }
    await applyVmRules(
      vmId,
      { kind: "user", uid: s.uid, nameservers: hostNameservers() },
      internet,
      cidrText(addressPool()),
    );
  }
  s.internet = internet;
  s.dns = internet === "off" ? [] : [GUEST_NET.dns];
  saveState(store, vmId, s);
  const { passtPid: _p, dnsPid: _d, uid: _u, ...info } = s;
  return info;
}

/**
 * Free the network and exposed ports of every VM that is not running (or no longer exists): what a `kill -9` of
 * the VMM or of the process that owned it left behind.
 */
export async function reconcileNetwork(store: StateStore, runDirOf: (vmId: string) => string): Promise<string[]> {
  const ids = store.db
    .prepare("SELECT vm_id FROM vm_net UNION SELECT vm_id FROM net_leases UNION SELECT vm_id FROM ports")
    .all() as { vm_id: string }[];
  const freed: string[] = [];
  for (const { vm_id } of ids) {
    const rec = store.getById(vm_id);
    if (rec?.handle && (rec.status === "running" || rec.status === "paused")) continue;
    await closePorts(store, vm_id);
    await detachNetwork(store, vm_id, runDirOf(vm_id));
    freed.push(vm_id);
  }
  return freed;
}
