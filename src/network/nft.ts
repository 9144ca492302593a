/**
 * SmolVM's firewall: one nftables table, `inet smolvm`, and nothing else on the host. Base chains run just before
 * the usual filter priority and only ever drop or accept SmolVM's own traffic (matched by our TAP names, our guest
 * addresses and our VMs' uids), so other software's rules and devices are untouched. Every change is one atomic
 * `nft -f` transaction, serialized host-wide by a lock file (so removing the empty table on the last delete cannot
 * race with another process adding a VM). Per VM (key k):
 *   set a_k       explicit allowCidrs (interval)
 *   set d_k       addresses SmolVM's resolver returned for allowed names (filled by dnsmasq, 1 h timeout)
 *   chain g_k     tap: what the guest may reach through the host (forward hook)
 *   chain h_k     tap: what the guest may reach on the host itself (input hook): only its DNS resolver
 *   chain u_k     user: what the VM's passt process (its own uid) may connect to (output hook)
 * and elements of the shared maps and sets, keyed by the VM's TAP. A tap-mode guest has the addresses every guest has
 * (guest.ts); the first rules of `prerouting` (before conntrack) and all of `egress` (after NAT) translate them,
 * statelessly, to the VM's leased address and its gateway: nothing else on the host ever sees 10.0.2.x from a TAP.
 */
import { createHash } from "node:crypto";
import type { ResolvedInternet } from "../config.js";
import { SmolVMError } from "../errors.js";
import { runHost, which } from "../util/run.js";
import { BLOCKED_BY_DEFAULT } from "./addr.js";
import { GUEST_NET } from "./guest.js";

export const TABLE = "smolvm";
export const TAP_PREFIX = "smvt";
const LOCK = "/run/lock/smolvm-nft.lock";
/** How long an address a resolved allowed name stays allowed. */
export const DOMAIN_ADDR_TIMEOUT = "1h";

export const vmKey = (vmId: string): string => createHash("sha256").update(vmId).digest("hex").slice(0, 12);

/** Apply a script under the lock; `tryOnly`: report failure instead of throwing. */
async function nft(script: string, what: string, tryOnly = false): Promise<boolean> {
  const bin = which("nft");
  if (!bin) throw new SmolVMError("nft not found: install the nftables package (sudo apt-get install nftables)");
  const flock = which("flock");
  const r = flock
    ? await runHost(flock, ["-w", "30", LOCK, bin, "-f", "-"], { input: script, timeoutMs: 40_000 })
    : await runHost(bin, ["-f", "-"], { input: script, timeoutMs: 30_000 });
  if (r.code === 0) return true;
  if (tryOnly) return false;
  throw new SmolVMError(`nftables (${what}) failed: ${r.stderr.trim() || `exit ${r.code}`}`);
}

/** The table and its base chains; `add` is a no-op for what already exists. */
function baseScript(pool: string): string {
  const p = `${TAP_PREFIX}*`;
  const g = GUEST_NET;
  return `add table inet ${TABLE}
add set inet ${TABLE} blocked { type ipv4_addr; flags interval; auto-merge; }
add element inet ${TABLE} blocked { ${[...BLOCKED_BY_DEFAULT, pool].join(", ")} }
add set inet ${TABLE} guests { type ifname . ipv4_addr; }
add set inet ${TABLE} guest_ips { type ipv4_addr; }
add set inet ${TABLE} gateways { type ifname . ipv4_addr; }
add map inet ${TABLE} tap_addr { type ifname : ipv4_addr; }
add map inet ${TABLE} tap_gw { type ifname : ipv4_addr; }
add map inet ${TABLE} tap_fwd { type ifname : verdict; }
add map inet ${TABLE} tap_in { type ifname : verdict; }
add map inet ${TABLE} uid_out { type uid : verdict; }
add chain inet ${TABLE} prerouting { type filter hook prerouting priority raw; policy accept; }
add chain inet ${TABLE} input { type filter hook input priority filter - 5; policy accept; }
add chain inet ${TABLE} forward { type filter hook forward priority filter - 5; policy accept; }
add chain inet ${TABLE} output { type filter hook output priority filter - 5; policy accept; }
add chain inet ${TABLE} postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain inet ${TABLE} egress { type filter hook postrouting priority 110; policy accept; }
flush chain inet ${TABLE} prerouting
flush chain inet ${TABLE} input
flush chain inet ${TABLE} forward
flush chain inet ${TABLE} output
flush chain inet ${TABLE} postrouting
flush chain inet ${TABLE} egress
add rule inet ${TABLE} prerouting iifname "${p}" ip saddr ${g.ip} ip saddr set iifname map @tap_addr
add rule inet ${TABLE} prerouting iifname "${p}" ip daddr { ${g.gateway}, ${g.dns} } ip daddr set iifname map @tap_gw
add rule inet ${TABLE} prerouting iifname "${p}" meta nfproto ipv6 drop
add rule inet ${TABLE} prerouting iifname "${p}" iifname . ip saddr != @guests drop
add rule inet ${TABLE} input iifname "${p}" iifname vmap @tap_in
add rule inet ${TABLE} input iifname "${p}" drop
add rule inet ${TABLE} forward iifname "${p}" iifname vmap @tap_fwd
add rule inet ${TABLE} forward iifname "${p}" drop
add rule inet ${TABLE} forward oifname "${p}" ct state established,related accept
add rule inet ${TABLE} forward oifname "${p}" drop
add rule inet ${TABLE} output meta skuid vmap @uid_out
add rule inet ${TABLE} postrouting ip saddr @guest_ips oifname != "${p}" masquerade
add rule inet ${TABLE} egress oifname "${p}" oifname . ip daddr @guests ip daddr set ${g.ip}
add rule inet ${TABLE} egress oifname "${p}" oifname . ip saddr @gateways udp sport 53 ip saddr set ${g.dns}
add rule inet ${TABLE} egress oifname "${p}" oifname . ip saddr @gateways tcp sport 53 ip saddr set ${g.dns}
add rule inet ${TABLE} egress oifname "${p}" oifname . ip saddr @gateways ip saddr set ${g.gateway}
`;
}

export interface TapRules {
  kind: "tap";
  tap: string;
  guestIp: string;
  gatewayIp: string;
}
export interface UserRules {
  kind: "user";
  uid: number;
  /** The host's resolvers, which passt forwards the guest's DNS to. */
  nameservers: string[];
}

/** The egress rules of one VM's chain, after its preamble. */
function policyRules(k: string, chain: string, internet: ResolvedInternet): string[] {
  const add = (r: string) => `add rule inet ${TABLE} ${chain} ${r}`;
  const out = [add("ct state established,related accept")];
  if (typeof internet === "object" && internet.allowCidrs.length) out.push(add(`ip daddr @a_${k} accept`));
  if (chain.startsWith("u_")) out.push(add("fib daddr type local drop")); // the host's own addresses
  out.push(add("ip daddr @blocked drop"), add("meta nfproto ipv6 drop"));
  if (typeof internet === "object" && internet.allowDomains.length) out.push(add(`ip daddr @d_${k} accept`));
  out.push(add(internet === "open" ? "accept" : "drop"));
  return out;
}

function vmScript(k: string, r: TapRules | UserRules, internet: ResolvedInternet): string {
  const cidrs = typeof internet === "object" ? internet.allowCidrs : [];
  const lines = [
    `add set inet ${TABLE} a_${k} { type ipv4_addr; flags interval; auto-merge; }`,
    `flush set inet ${TABLE} a_${k}`,
    ...(cidrs.length ? [`add element inet ${TABLE} a_${k} { ${cidrs.join(", ")} }`] : []),
    `add set inet ${TABLE} d_${k} { type ipv4_addr; flags timeout; timeout ${DOMAIN_ADDR_TIMEOUT}; }`,
  ];
  if (r.kind === "tap") {
    lines.push(
      `add chain inet ${TABLE} g_${k}`,
      `flush chain inet ${TABLE} g_${k}`,
      ...policyRules(k, `g_${k}`, internet),
      `add chain inet ${TABLE} h_${k}`,
      `flush chain inet ${TABLE} h_${k}`,
      ...(cidrs.length ? [`add rule inet ${TABLE} h_${k} ip daddr @a_${k} accept`] : []),
      ...(internet === "off"
        ? []
        : [
            `add rule inet ${TABLE} h_${k} ip daddr ${r.gatewayIp} udp dport 53 accept`,
            `add rule inet ${TABLE} h_${k} ip daddr ${r.gatewayIp} tcp dport 53 accept`,
          ]),
      `add rule inet ${TABLE} h_${k} drop`,
      `add element inet ${TABLE} guests { "${r.tap}" . ${r.guestIp} }`,
      `add element inet ${TABLE} guest_ips { ${r.guestIp} }`,
      `add element inet ${TABLE} gateways { "${r.tap}" . ${r.gatewayIp} }`,
      `add element inet ${TABLE} tap_addr { "${r.tap}" : ${r.guestIp} }`,
      `add element inet ${TABLE} tap_gw { "${r.tap}" : ${r.gatewayIp} }`,
      `add element inet ${TABLE} tap_fwd { "${r.tap}" : jump g_${k} }`,
      `add element inet ${TABLE} tap_in { "${r.tap}" : jump h_${k} }`,
    );
  } else {
    const dns =
      internet === "off" || !r.nameservers.length
        ? []
        : [
            `add rule inet ${TABLE} u_${k} ip daddr { ${r.nameservers.join(", ")} } udp dport 53 accept`,
            `add rule inet ${TABLE} u_${k} ip daddr { ${r.nameservers.join(", ")} } tcp dport 53 accept`,
          ];
    lines.push(
      `add chain inet ${TABLE} u_${k}`,
      `flush chain inet ${TABLE} u_${k}`,
      ...dns,
      ...policyRules(k, `u_${k}`, internet),
      `add element inet ${TABLE} uid_out { ${r.uid} : jump u_${k} }`,
    );
  }
  return `${lines.join("\n")}\n`;
}

/** Install (or replace: a policy change) one VM's rules, creating the table on first use. */
export async function applyVmRules(
  vmId: string,
  r: TapRules | UserRules,
  internet: ResolvedInternet,
  pool: string,
): Promise<void> {
  // one transaction: the table and base chains (created, or rewritten as they should be) and the VM's chains and
  // sets (a policy change flushes and refills them). Trying the VM's part alone first costs a second process
  // whenever the table is absent, which is every time VMs come and go one at a time
  await nft(baseScript(pool) + vmScript(vmKey(vmId), r, internet), `rules of VM ${vmId}`);
}

function unhookScript(r: TapRules | UserRules | null): string {
  const lines: string[] = [];
  if (r?.kind === "tap") {
    lines.push(
      `delete element inet ${TABLE} tap_fwd { "${r.tap}" }`,
      `delete element inet ${TABLE} tap_in { "${r.tap}" }`,
      `delete element inet ${TABLE} guests { "${r.tap}" . ${r.guestIp} }`,
      `delete element inet ${TABLE} guest_ips { ${r.guestIp} }`,
      `delete element inet ${TABLE} gateways { "${r.tap}" . ${r.gatewayIp} }`,
      `delete element inet ${TABLE} tap_addr { "${r.tap}" }`,
      `delete element inet ${TABLE} tap_gw { "${r.tap}" }`,
    );
  } else if (r?.kind === "user") {
    lines.push(`delete element inet ${TABLE} uid_out { ${r.uid} }`);
  }
  return lines.length ? `${lines.join("\n")}\n` : "";
}

interface TableJson {
  nftables: Array<Record<string, { name?: string; elem?: unknown[] }>>;
}

async function listTable(): Promise<TableJson | null> {
  const bin = which("nft");
  if (!bin) return null;
  const r = await runHost(bin, ["-j", "list", "table", "inet", TABLE], { timeoutMs: 20_000 });
  if (r.code !== 0) return null; // no table
  try {
    return JSON.parse(r.stdout) as TableJson;
  } catch {
    return null;
  }
}

/**
 * The shell test "no VM has a chain in the table", then its deletion (run under the lock). A listing that fails
 * deletes nothing. (`nft list chains` takes a family only: `list chains inet smolvm` is a syntax error, whose empty
 * output once read as "no VM left" and dropped every other VM's rules with the last one's.)
 */
function dropIfUnusedSh(bin: string): string {
  return (
    `if t=$("${bin}" list table inet ${TABLE} 2>/dev/null) && ` +
    `! printf '%s\n' "$t" | grep -Eq 'chain [ghu]_[0-9a-f]{12} '; then "${bin}" delete table inet ${TABLE}; fi`
  );
}

/**
 * Remove one VM's rules when what it installed is known (the usual case): one locked process deletes them and the
 * table if it is now unused. Returns false if that did not work (some of them were already gone): then use
 * `removeVmRules`, which looks at the live table.
 */
export async function removeKnownVmRules(vmId: string, r: TapRules | UserRules): Promise<boolean> {
  const bin = which("nft");
  const flock = which("flock");
  if (!bin || !flock) return false;
  const k = vmKey(vmId);
  const chains = r.kind === "tap" ? [`g_${k}`, `h_${k}`] : [`u_${k}`];
  const script = [
    unhookScript(r).trim(),
    ...chains.map((c) => `delete chain inet ${TABLE} ${c}`),
    `delete set inet ${TABLE} a_${k}`,
    `delete set inet ${TABLE} d_${k}`,
  ].join("\n");
  const sh = `"${bin}" -f - || exit 3; ${dropIfUnusedSh(bin)}`;
  const res = await runHost(flock, ["-w", "30", LOCK, "sh", "-c", sh], { input: `${script}\n`, timeoutMs: 40_000 });
  return res.code === 0;
}

/**
 * Remove one VM's rules, whatever is left of them (after a crash, some may be missing), and the table itself when
 * no VM has rules any more. Elements that point at the VM's chains are found in the live table, not remembered.
 */
export async function removeVmRules(vmId: string): Promise<void> {
  const k = vmKey(vmId);
  const t = await listTable();
  if (!t) return;
  const names = new Set<string>();
  const lines: string[] = [];
  for (const o of t.nftables) {
    const chain = o.chain?.name;
    if (chain) names.add(`chain:${chain}`);
    const set = o.set?.name;
    if (set) names.add(`set:${set}`);
    const map = o.map;
    if (map?.name && Array.isArray(map.elem)) {
      for (const e of map.elem) {
        // [key, {jump: {target}}]
        const pair = e as [unknown, { jump?: { target?: string } }];
        const target = pair[1]?.jump?.target;
        if (target === `g_${k}` || target === `h_${k}` || target === `u_${k}`) {
          const key = typeof pair[0] === "number" ? String(pair[0]) : JSON.stringify(String(pair[0]));
          lines.push(`delete element inet ${TABLE} ${map.name} { ${key} }`);
        }
      }
    }
  }
  const tapElems = tapElements(t, k);
  lines.push(...tapElems);
  for (const c of [`g_${k}`, `h_${k}`, `u_${k}`])
    if (names.has(`chain:${c}`)) lines.push(`delete chain inet ${TABLE} ${c}`);
  for (const s of [`a_${k}`, `d_${k}`]) if (names.has(`set:${s}`)) lines.push(`delete set inet ${TABLE} ${s}`);
  if (lines.length) await nft(`${lines.join("\n")}\n`, `removing the rules of VM ${vmId}`);
  await dropTableIfUnused();
}

/** The anti-spoofing and NAT elements of the VM's TAP, found through its forward map entry's interface name. */
function tapElements(t: TableJson, k: string): string[] {
  let tap: string | null = null;
  for (const o of t.nftables) {
    const m = o.map;
    if (m?.name !== "tap_fwd" || !Array.isArray(m.elem)) continue;
    for (const e of m.elem) {
      const pair = e as [unknown, { jump?: { target?: string } }];
      if (pair[1]?.jump?.target === `g_${k}`) tap = String(pair[0]);
    }
  }
  if (!tap) return [];
  const out: string[] = [];
  for (const o of t.nftables) {
    const s = o.set;
    if ((s?.name !== "guests" && s?.name !== "gateways") || !Array.isArray(s.elem)) continue;
    for (const e of s.elem) {
      const c = (e as { concat?: unknown[] }).concat;
      if (Array.isArray(c) && c[0] === tap && typeof c[1] === "string") {
        out.push(`delete element inet ${TABLE} ${s.name} { "${tap}" . ${c[1]} }`);
        if (s.name === "guests") out.push(`delete element inet ${TABLE} guest_ips { ${c[1]} }`);
      }
    }
  }
  for (const o of t.nftables) {
    const m = o.map;
    if ((m?.name !== "tap_addr" && m?.name !== "tap_gw") || !Array.isArray(m.elem)) continue;
    for (const e of m.elem)
      if ((e as unknown[])[0] === tap) out.push(`delete element inet ${TABLE} ${m.name} { "${tap}" }`);
  }
  return out;
}

/** Delete the table once no VM has a chain in it (checked and deleted under the lock, in one shell). */
export async function dropTableIfUnused(): Promise<void> {
  const bin = which("nft");
  const flock = which("flock");
  if (!bin) return;
  const script = dropIfUnusedSh(bin);
  const r = flock
    ? await runHost(flock, ["-w", "30", LOCK, "sh", "-c", script], { timeoutMs: 40_000 })
    : await runHost("sh", ["-c", script], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new SmolVMError(`nftables (removing the empty smolvm table) failed: ${r.stderr.trim()}`);
}

/** Whether nftables can be driven here (root or CAP_NET_ADMIN, and the nft program). */
export async function nftUsable(): Promise<{ ok: boolean; why: string }> {
  const bin = which("nft");
  if (!bin) return { ok: false, why: "nft not found (package nftables)" };
  const r = await runHost(bin, ["list", "tables"], { timeoutMs: 10_000 });
  if (r.code !== 0)
    return { ok: false, why: r.stderr.trim() || "nft list tables failed (needs root or CAP_NET_ADMIN)" };
  return { ok: true, why: "" };
}
