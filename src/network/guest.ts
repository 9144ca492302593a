/**
 * What a guest sees of its network, the same in every VM and every mode: address 10.0.2.15/24, gateway 10.0.2.2,
 * resolver 10.0.2.3, and permanent link-layer entries for both. In user mode each VM has its own passt, which serves
 * exactly these addresses; in tap mode the host translates them, statelessly, at the VM's TAP (see nft.ts): the rest
 * of the host and the network see the VM by its leased address. So the warm-start template is captured with this
 * configuration and a VM restored from it needs no reconfiguration at all: reconfiguring a restored guest's network
 * is kernel work it has not done since the restore, which under TCG costs 60-90 ms (a few ms with KVM).
 */
import type { NetConfig } from "../agent/client.js";
import type { ResolvedInternet } from "../config.js";

export const GUEST_NET = {
  ip: "10.0.2.15",
  prefix: 24,
  gateway: "10.0.2.2",
  dns: "10.0.2.3",
  /** The guest's MAC: each VM's link is its own (a TAP, or a socket to its passt), so one address serves all. */
  mac: "02:53:4d:00:00:02",
  /** The MAC of the gateway and resolver: the TAP's own (the host's end) and passt's. */
  gatewayMac: "02:53:4d:00:00:01",
  /** passt's: its frames are not limited by a wire, and large ones are what make it fast; a TAP's: the wire's. */
  mtu: { user: 65520, tap: 1500 },
} as const;

/**
 * What the guest is told: the same for every VM of a mode (the MTU is the mode's: so warm templates are kept per
 * mode); without internet, no resolver (a lookup fails at once).
 */
export function guestNetConfig(mode: "user" | "tap", internet: ResolvedInternet): NetConfig {
  const dns = internet === "off" ? [] : [GUEST_NET.dns];
  return {
    addr: `${GUEST_NET.ip}/${GUEST_NET.prefix}`,
    gateway: GUEST_NET.gateway,
    mac: GUEST_NET.mac,
    dns,
    mtu: GUEST_NET.mtu[mode],
    neighbors: [GUEST_NET.gateway, GUEST_NET.dns].map((ip) => ({ ip, mac: GUEST_NET.gatewayMac })),
  };
}

/** A short name of a configuration, to know whether a restored guest already has it. */
export const guestNetKey = (cfg: NetConfig): string => JSON.stringify(cfg);
