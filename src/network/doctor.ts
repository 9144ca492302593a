/** What `smolvm doctor` says about networking: tools, privileges, and which modes this host can run. */
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { runHost, which } from "../util/run.js";
import { addressPool, cidrText } from "./addr.js";
import { nftUsable } from "./nft.js";
import { hostNameservers } from "./passt.js";
import { uplink } from "./tap.js";

type Add = (name: string, status: "ok" | "warn" | "fail" | "skip", detail: string) => void;

/** Other software's forward chains that drop by default would drop forwarded guest traffic too (Docker does this). */
async function forwardDropPolicies(): Promise<string[]> {
  const nft = which("nft");
  if (!nft) return [];
  const r = await runHost(nft, ["list", "chains"], { timeoutMs: 10_000 });
  const out: string[] = [];
  let table = "";
  for (const line of r.stdout.split("\n")) {
    const t = /^table (\S+ \S+)/.exec(line);
    if (t) table = t[1] as string;
    if (/hook forward/.test(line) && /policy drop/.test(line) && !table.endsWith(" smolvm")) out.push(table);
  }
  return out;
}

export async function networkChecks(add: Add): Promise<void> {
  const root = process.getuid?.() === 0;
  const passt = which("passt");
  const tun = (() => {
    try {
      accessSync("/dev/net/tun", constants.R_OK | constants.W_OK);
      return true;
    } catch {
      return false;
    }
  })();
  const nft = root ? await nftUsable() : { ok: false, why: "needs root or CAP_NET_ADMIN" };
  const dnsmasq = which("dnsmasq");
  const ip = which("ip");
  add("passt", passt ? "ok" : "warn", passt ?? 'not found: network "user" needs it (sudo apt-get install passt)');
  add(
    "tun",
    tun ? "ok" : "warn",
    tun ? "/dev/net/tun" : '/dev/net/tun missing or not writable: network "tap" needs it',
  );
  add(
    "nftables",
    nft.ok ? "ok" : "warn",
    nft.ok ? `${which("nft")} (SmolVM's rules live in table inet smolvm)` : nft.why,
  );
  add(
    "dnsmasq",
    dnsmasq ? "ok" : "warn",
    dnsmasq ?? 'not found: the guest resolver of network "tap" (package dnsmasq-base)',
  );
  const modes = ["none"];
  if (passt) modes.push(root && nft.ok ? "user" : "user (policy not enforced: no root)");
  if (root && tun && nft.ok && dnsmasq && ip) modes.push("tap");
  add("network modes", "ok", `${modes.join(", ")}; default none; ports can be exposed in every mode`);
  if (passt && !(root && nft.ok)) {
    add(
      "user-mode isolation",
      "warn",
      "without root, a user-mode guest can reach this host's non-loopback addresses and its LAN (passt has no " +
        "firewall of its own; SmolVM's per-VM rules need root): see docs/NETWORKING.md",
    );
  }
  if (root && nft.ok) {
    const drops = await forwardDropPolicies();
    if (drops.length) {
      add(
        "forwarding",
        "warn",
        `forward chains with policy drop in ${drops.join(", ")}: tap-mode traffic may be dropped there too`,
      );
    }
    const up = await uplink();
    let fwd = "?";
    try {
      fwd = up ? readFileSync(`/proc/sys/net/ipv4/conf/${up}/forwarding`, "utf8").trim() : "-";
    } catch {
      // no such interface
    }
    add(
      "uplink",
      up ? "ok" : "warn",
      up
        ? `${up} (forwarding ${fwd === "1" ? "on" : "off; turned on for this interface only at the first tap VM"})`
        : "no default route: tap-mode guests will not reach the internet",
    );
    try {
      add("address pool", "ok", `${cidrText(addressPool())} (SMOLVM_NET_POOL), a /30 per tap VM`);
    } catch (e) {
      add("address pool", "fail", (e as Error).message);
    }
  }
  const ns = hostNameservers();
  add(
    "dns",
    ns.length ? "ok" : "warn",
    ns.length ? `host resolvers ${ns.join(", ")}` : "no IPv4 nameserver in /etc/resolv.conf",
  );
  if (!existsSync("/proc/sys/net/ipv4")) add("ipv4", "fail", "no IPv4 stack");
}
