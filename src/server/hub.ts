/**
 * The server's view of sandboxes: SmolVM handles cached by id, creation under the server's limits (count and memory,
 * reserved before a VM starts so concurrent creates cannot overshoot), and every created VM given a lifetime.
 * REST, MCP and the E2B API all go through one hub; none of them touches the state store or a backend directly.
 */
import { networkInterfaces, totalmem } from "node:os";
import { LIFETIME_MS, networkOf, type ResolvedNetwork, type VMConfig } from "../config.js";
import { ConfigError, VMNotFoundError } from "../errors.js";
import { addressPool, BLOCKED_BY_DEFAULT, cidrText, ipToInt, overlaps, parseCidr } from "../network/addr.js";
import { SmolVM, type VMInfo } from "../sandbox/smolvm.js";
import { SnapshotNotFoundError } from "../sandbox/snapshots.js";
import { StateStore } from "../state/store.js";
import type { Progress } from "../util/run.js";

export interface HubLimits {
  /** Sandboxes running or paused at once on this host (every VM of the state store counts). */
  maxSandboxes: number;
  /** Guest memory (MiB) of those sandboxes together. */
  maxMemoryMib: number;
  /** Lifetime given to a sandbox created without one. */
  defaultTimeoutMs: number;
  /** Longest lifetime a client may ask for. */
  maxTimeoutMs: number;
  /**
   * Let clients allow their guests CIDRs of the host's own networks (private ranges, link-local with the cloud
   * metadata address, the VM pool, the host's addresses). Off: such an `allowCidrs` is refused (`--allow-private-cidrs`).
   */
  allowPrivateCidrs?: boolean;
}

export function defaultLimits(): HubLimits {
  return {
    maxSandboxes: 64,
    maxMemoryMib: Math.floor(((totalmem() / 1048576) * 3) / 4),
    defaultTimeoutMs: 15 * 60_000,
    maxTimeoutMs: 24 * 3_600_000,
  };
}

/** A limit of the server would be exceeded: HTTP 429 (count) or 507 (memory). `limit` names it. */
export class LimitError extends Error {
  constructor(
    readonly limit: "maxSandboxes" | "maxMemoryMib",
    readonly status: 429 | 507,
    message: string,
  ) {
    super(message);
    this.name = "LimitError";
  }
}

const LIVE = new Set(["running", "paused"]);

/** Largest folder listing the server asks a guest for (wire bytes; some 40,000 entries): decoded, it takes ~25x. */
export const SERVER_LIST_BYTES = 2 << 20;

/**
 * A client of the server may open the internet to its guest, never the host's side of it: an `allowCidrs` entry that
 * overlaps a private or link-local range, SmolVM's address pool or one of the host's own addresses is refused.
 */
export function refusePrivateCidrs(net: ResolvedNetwork): void {
  if (typeof net.internet !== "object") return;
  const hostAddrs = Object.values(networkInterfaces())
    .flat()
    .filter((a) => a?.family === "IPv4")
    .map((a) => parseCidr(`${a?.address}/32`));
  const forbidden = [...BLOCKED_BY_DEFAULT.map((c) => parseCidr(c)), addressPool(), ...hostAddrs];
  for (const raw of net.internet.allowCidrs) {
    const c = parseCidr(raw);
    if (!c || ipToInt(raw.split("/")[0] ?? "") === null) continue; // resolveConfig already refused a malformed one
    const hit = forbidden.find((f) => f && overlaps(c, f));
    if (hit) {
      throw new ConfigError(
        "network.internet.allowCidrs",
        `${raw} overlaps ${cidrText(hit)}, a network of the host (private, link-local, the VM pool or the host's own address); the server refuses it unless started with --allow-private-cidrs`,
      );
    }
  }
}

export class SandboxHub {
  private readonly vms = new Map<string, SmolVM>();
  /** fromId calls in flight, so concurrent requests for one VM share one handle (one agent connection). */
  private readonly opening = new Map<string, Promise<SmolVM>>();
  private pendingCount = 0;
  private pendingMemory = 0;
  private readonly store = StateStore.open();

  constructor(readonly limits: HubLimits = defaultLimits()) {}

  /** The lifetime a client asked for, checked against the server's bounds; undefined → the default. */
  lifetime(ms: number | null | undefined, field = "timeoutMs"): number {
    if (ms === undefined || ms === null) return this.limits.defaultTimeoutMs;
    if (!Number.isInteger(ms) || ms < LIFETIME_MS[0]) throw new ConfigError(field, `at least ${LIFETIME_MS[0]} ms`);
    if (ms > this.limits.maxTimeoutMs) {
      throw new ConfigError(field, `at most ${this.limits.maxTimeoutMs} ms (this server's --max-timeout)`);
    }
    return ms;
  }

  /** Running or paused VMs on this host and the memory they hold. */
  usage(): { sandboxes: number; memoryMib: number } {
    let sandboxes = 0;
    let memoryMib = 0;
    for (const rec of this.store.list()) {
      if (!LIVE.has(rec.status)) continue;
      sandboxes++;
      memoryMib += rec.config.memSizeMib;
    }
    return { sandboxes, memoryMib };
  }

  /**
   * Create and start a sandbox. It is kept when the server exits (a restart finds it again) and always has a
   * lifetime: `timeoutMs` (bounded by the server) or the server's default. Throws `LimitError`, `ConfigError`.
   */
  async create(config: VMConfig, opts: { onProgress?: Progress; keep?: boolean } = {}): Promise<SmolVM> {
    const cfg: VMConfig = {
      ...config,
      timeoutMs: this.lifetime(config.timeoutMs, "timeoutMs"),
      keep: opts.keep ?? true,
    };
    const vm = new SmolVM(cfg); // validates before anything is reserved
    if (!this.limits.allowPrivateCidrs) refusePrivateCidrs(networkOf(vm.config));
    const mem = vm.config.memSizeMib;
    this.reserve(mem);
    try {
      await vm.start({ onProgress: opts.onProgress });
    } catch (e) {
      await vm.delete().catch(() => {});
      throw e;
    } finally {
      this.pendingCount--;
      this.pendingMemory -= mem;
    }
    this.vms.set(vm.vmId, vm);
    return vm;
  }

  /** `count` copies of a running sandbox, under the same limits; each with a lifetime (kept unless `keep: false`). */
  async fork(vm: SmolVM, count: number, timeoutMs?: number, opts: { keep?: boolean } = {}): Promise<SmolVM[]> {
    const mem = vm.config.memSizeMib;
    const lifetime = this.lifetime(timeoutMs);
    this.reserve(mem, count);
    try {
      const clones = await vm.fork(count, { timeoutMs: lifetime, keep: opts.keep ?? true });
      for (const c of clones) this.vms.set(c.vmId, c);
      return clones;
    } finally {
      this.pendingCount -= count;
      this.pendingMemory -= mem * count;
    }
  }

  /** A new sandbox restored from a snapshot, under the same limits; with a lifetime (kept unless `keep: false`). */
  async restore(snapshot: string, opts: { name?: string; timeoutMs?: number; keep?: boolean } = {}): Promise<SmolVM> {
    const snap = this.store.getSnapshot(snapshot);
    if (!snap) throw new SnapshotNotFoundError(snapshot);
    const mem = snap.config.memSizeMib;
    const lifetime = this.lifetime(opts.timeoutMs);
    this.reserve(mem);
    try {
      const vm = await SmolVM.fromSnapshot(snap.id, { name: opts.name, timeoutMs: lifetime, keep: opts.keep ?? true });
      this.vms.set(vm.vmId, vm);
      return vm;
    } finally {
      this.pendingCount--;
      this.pendingMemory -= mem;
    }
  }

  private reserve(mem: number, n = 1): void {
    const u = this.usage();
    const count = u.sandboxes + this.pendingCount;
    if (count + n > this.limits.maxSandboxes) {
      throw new LimitError(
        "maxSandboxes",
        429,
        `too many sandboxes: ${count} running or starting, limit maxSandboxes=${this.limits.maxSandboxes}; delete one or retry later`,
      );
    }
    const used = u.memoryMib + this.pendingMemory;
    if (used + mem * n > this.limits.maxMemoryMib) {
      throw new LimitError(
        "maxMemoryMib",
        507,
        `not enough memory for ${mem * n} MiB: ${used} MiB of sandboxes running or starting, limit maxMemoryMib=${this.limits.maxMemoryMib}`,
      );
    }
    this.pendingCount += n;
    this.pendingMemory += mem * n;
  }

  /** Remember a VM this process made some other way (fork, restore) so `get` reuses its connection. */
  adopt(vm: SmolVM): SmolVM {
    this.vms.set(vm.vmId, vm);
    return vm;
  }

  /** The sandbox by id or name; throws `VMNotFoundError` (also for one deleted by another process meanwhile). */
  async get(idOrName: string): Promise<SmolVM> {
    const cached = this.vms.get(idOrName);
    if (cached) {
      if (this.store.getById(cached.vmId)) return cached;
      this.forget(cached);
      throw new VMNotFoundError(idOrName);
    }
    let pending = this.opening.get(idOrName);
    if (!pending) {
      pending = SmolVM.fromId(idOrName).finally(() => this.opening.delete(idOrName));
      this.opening.set(idOrName, pending);
    }
    const vm = await pending;
    const again = this.vms.get(vm.vmId); // a name resolved to a VM already cached, or a concurrent get won
    if (again && again !== vm) {
      vm.close();
      return again;
    }
    this.vms.set(vm.vmId, vm);
    return vm;
  }

  /** Every VM, or those whose labels include all of `labels`. */
  async list(labels: Record<string, string> = {}): Promise<VMInfo[]> {
    const all = await SmolVM.list();
    const want = Object.entries(labels);
    return all.filter((v) => want.every(([k, val]) => v.labels[k] === val));
  }

  /** Delete a sandbox (network, disk, record); throws `VMNotFoundError`. */
  async delete(idOrName: string): Promise<void> {
    const vm = await this.get(idOrName);
    this.forget(vm);
    await vm.delete();
  }

  /** Drop a cached handle (its VM was deleted, or is about to be). */
  forget(vm: SmolVM): void {
    this.vms.delete(vm.vmId);
    vm.close();
  }

  /** Close every connection; the VMs keep running. */
  close(): void {
    for (const vm of this.vms.values()) vm.close();
    this.vms.clear();
  }
}
