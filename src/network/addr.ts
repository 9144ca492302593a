/** IPv4 addresses and CIDR blocks: parsing, the address pool, and the ranges a guest never reaches by default. */
import { ConfigError } from "../errors.js";

/** An IPv4 address as an unsigned 32-bit number. */
export function ipToInt(ip: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) return null;
  const parts = m.slice(1).map(Number);
  if (parts.some((p, i) => p > 255 || ((m[i + 1] as string).length > 1 && (m[i + 1] as string).startsWith("0"))))
    return null;
  return (
    ((parts[0] as number) * 2 ** 24 +
      (parts[1] as number) * 2 ** 16 +
      (parts[2] as number) * 2 ** 8 +
      (parts[3] as number)) >>>
    0
  );
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export interface Cidr {
  base: number;
  prefix: number;
}

/** "a.b.c.d/n" (or a bare address: /32), normalised to its network address. Null if malformed. */
export function parseCidr(s: string): Cidr | null {
  const [ip, p, ...rest] = s.split("/");
  if (rest.length || ip === undefined) return null;
  const n = ipToInt(ip);
  const prefix = p === undefined ? 32 : /^\d{1,2}$/.test(p) ? Number(p) : -1;
  if (n === null || prefix < 0 || prefix > 32) return null;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { base: (n & mask) >>> 0, prefix };
}

export const cidrText = (c: Cidr): string => `${intToIp(c.base)}/${c.prefix}`;

export function inCidr(ip: number, c: Cidr): boolean {
  const mask = c.prefix === 0 ? 0 : (0xffffffff << (32 - c.prefix)) >>> 0;
  return (ip & mask) >>> 0 === c.base;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return inCidr(a.base, b) || inCidr(b.base, a);
}

/**
 * Never reached by a guest unless its config allows a CIDR that covers them: the host's own networks (loopback,
 * RFC 1918, CGNAT, link-local with the cloud metadata address 169.254.169.254), "this network", benchmarking,
 * multicast, reserved and broadcast. SmolVM's own address pool is added to these at run time.
 */
export const BLOCKED_BY_DEFAULT = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "224.0.0.0/4",
  "240.0.0.0/4",
];

export const DEFAULT_POOL = "172.16.0.0/16";

/** The TAP address pool: `SMOLVM_NET_POOL` (an IPv4 CIDR, /8 to /28), default 172.16.0.0/16. Each VM takes a /30. */
export function addressPool(): Cidr {
  const raw = process.env.SMOLVM_NET_POOL ?? DEFAULT_POOL;
  const c = parseCidr(raw);
  if (!c || c.prefix < 8 || c.prefix > 28) {
    throw new ConfigError("SMOLVM_NET_POOL", `must be an IPv4 CIDR from /8 to /28, got ${JSON.stringify(raw)}`);
  }
  return c;
}

/** Subnet number `i` of the pool: host side (gateway) .1, guest .2, in a /30. */
export function leaseAddresses(pool: Cidr, i: number): { subnet: string; gateway: string; guest: string } {
  const base = pool.base + i * 4;
  return { subnet: `${intToIp(base)}/30`, gateway: intToIp(base + 1), guest: intToIp(base + 2) };
}

export const poolSize = (pool: Cidr): number => 2 ** (32 - pool.prefix) / 4;
