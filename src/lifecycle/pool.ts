/**
 * A pool of sandboxes started ahead of time, so `SmolVM.create()` hands one out instead of starting one. Opt-in:
 * `SMOLVM_POOL=N` (or `configurePool({ size: N })`, or `smolvm serve --pool N`) keeps up to N ready VMs per shape
 * (backend, image, size, network, boot arguments). A shape's pool fills after its first `create()`, in the background,
 * one VM at a time: each is a normal warm start, then paused, so it costs memory but no CPU while it waits.
 *
 * Handing one out gives it the caller's identity: its id was drawn at random and never shown to anyone; its hostname
 * and clock are set anew (the agent's SYNC), its entropy is its own since its restore reseeded it (its random state
 * is never copied while it waits), its name, env, labels and lifetime are the caller's, and it is owned by the caller
 * from then on. Its network address is its own lease, as every VM's (`tap`), or the same private
 * address every VM has behind its own NAT (`user`). Pool VMs belong to the process that made them (not kept): when
 * it ends, their supervisors delete them; `closePool()` does it at once.
 *
 * Hits, misses (a pooled shape found empty) and bypasses (a config the pool cannot serve: an explicit vmId, a cold
 * boot, a shared disk, an explicit kernel or disk) are counted separately (`poolStats()`).
 */
import { createHash } from "node:crypto";
import { networkOf, type ResolvedVMConfig, type VMConfig } from "../config.js";
import { ConfigError } from "../errors.js";

/** The label a VM carries while it waits in a pool (removed when handed out); `list()` does not show such VMs. */
export const POOL_LABEL = "smolvm.pool";

export interface PoolMember {
  readonly vmId: string;
  delete(): Promise<void>;
}

export interface PoolStats {
  /** Pool size per shape (0: off). */
  size: number;
  /** `create()` calls served from the pool. */
  hits: number;
  /** `create()` calls of a pooled shape that found its pool empty (started as usual, then refilled). */
  misses: number;
  /** `create()` calls the pool cannot serve (explicit vmId, coldBoot, shared disk, explicit kernel or disk). */
  bypassed: number;
  /** VMs started for the pool, and how many of those starts failed. */
  started: number;
  failed: number;
  /** VMs waiting now, all shapes. */
  ready: number;
}

interface Shape<T> {
  ready: T[];
  filling: boolean;
  /** Consecutive failed starts: the shape stops refilling after 3. */
  failures: number;
  template: VMConfig;
}

export interface PoolDriver<T extends PoolMember> {
  /** Start a VM of `c` (a warm start, never through the pool) and leave it paused. */
  start(c: VMConfig): Promise<T>;
  /** Give a pooled VM the caller's identity, name, env, labels and lifetime, and resume it. */
  handOut(vm: T, requested: ResolvedVMConfig): Promise<void>;
}

const MAX_POOL = 64;
/** How long after a hit the refill starts. */
const REFILL_DELAY_MS = 500;

/** The pool size `SMOLVM_POOL` asks for (0: off). */
export function poolSizeFromEnv(): number {
  const v = process.env.SMOLVM_POOL;
  if (v === undefined || v === "") return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > MAX_POOL) {
    throw new ConfigError("SMOLVM_POOL", `must be a whole number from 0 to ${MAX_POOL}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/**
 * What VMs of `c` are interchangeable by, or null when the pool cannot serve it. `explicitId`: the caller chose the
 * VM's id (a pooled VM's id is already drawn).
 */
export function poolShape(c: ResolvedVMConfig, backend: string, explicitId: boolean): string | null {
  if (explicitId || c.coldBoot || c.diskMode !== "isolated" || c.kernelPath || c.initrdPath || c.rootfsPath)
    return null;
  const shape = [backend, c.image, c.diskSizeMib, c.memSizeMib, c.vcpuCount, c.bootArgs, c.accel, networkOf(c)];
  return createHash("sha256").update(JSON.stringify(shape)).digest("hex").slice(0, 16);
}

/** The config a pool VM of the caller's shape starts with: theirs without what is theirs alone. */
function templateOf(requested: VMConfig, shape: string): VMConfig {
  const { vmId: _i, name: _n, env: _e, labels: _l, timeoutMs: _t, onTimeout: _o, keep: _k, ...rest } = requested;
  return { ...rest, labels: { [POOL_LABEL]: shape }, keep: false };
}

export class Pool<T extends PoolMember> {
  private readonly shapes = new Map<string, Shape<T>>();
  private readonly counts = { hits: 0, misses: 0, bypassed: 0, started: 0, failed: 0 };
  private closed = false;
  private fills: Promise<void>[] = [];

  constructor(
    private readonly driver: PoolDriver<T>,
    public size: number,
  ) {}

  /** A pooled VM handed out as `requested`, or null (then the caller starts one, and the pool refills). */
  async take(requested: VMConfig, resolved: ResolvedVMConfig, backend: string): Promise<T | null> {
    if (this.size <= 0 || this.closed) return null;
    const shape = poolShape(resolved, backend, requested.vmId !== undefined);
    if (!shape) {
      this.counts.bypassed++;
      return null;
    }
    let s = this.shapes.get(shape);
    if (!s) {
      s = { ready: [], filling: false, failures: 0, template: templateOf(requested, shape) };
      this.shapes.set(shape, s);
    }
    let vm = s.ready.shift() ?? null;
    while (vm) {
      try {
        await this.driver.handOut(vm, resolved);
        this.counts.hits++;
        // later, so that the caller's first commands do not compete with a VM being started (on a small host they
        // would wait for CPU): the refill is half a second behind
        setTimeout(() => this.refill(shape), REFILL_DELAY_MS).unref();
        return vm;
      } catch {
        // it died while it waited (killed, or its host went through a restart): drop it, try the next
        await vm.delete().catch(() => {});
        vm = s.ready.shift() ?? null;
      }
    }
    this.counts.misses++;
    this.refill(shape);
    return null;
  }

  /** Start VMs for `shape` until it has `size` waiting, one at a time, in the background. */
  private refill(shape: string): void {
    const s = this.shapes.get(shape);
    if (!s || s.filling || this.closed || s.failures >= 3) return;
    s.filling = true;
    const run = (async () => {
      while (!this.closed && s.ready.length < this.size && s.failures < 3) {
        this.counts.started++;
        try {
          const vm = await this.driver.start(s.template);
          if (this.closed) {
            await vm.delete();
            break;
          }
          s.ready.push(vm);
          s.failures = 0;
        } catch {
          this.counts.failed++;
          s.failures++;
        }
      }
      s.filling = false;
    })();
    this.fills.push(run);
    void run.finally(() => {
      this.fills = this.fills.filter((f) => f !== run);
    });
  }

  stats(): PoolStats {
    let ready = 0;
    for (const s of this.shapes.values()) ready += s.ready.length;
    return { size: this.size, ...this.counts, ready };
  }

  /** Stop refilling and delete every VM waiting in the pool (the ones handed out are their callers'). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled(this.fills);
    const all = [...this.shapes.values()].flatMap((s) => s.ready.splice(0));
    await Promise.allSettled(all.map((vm) => vm.delete()));
    this.shapes.clear();
  }

  /** Open again after `close()` (a new size applies to shapes seen from now on). */
  reopen(size: number): void {
    this.closed = false;
    this.size = size;
  }
}
