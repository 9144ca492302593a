/** The pool of this process (src/lifecycle/pool.ts) bound to SmolVM: how its VMs start and how one is handed out. */
import type { BackendKind } from "../backends/types.js";
import { labelsOf, type ResolvedVMConfig, type VMConfig } from "../config.js";
import { ConfigError, VMStateError } from "../errors.js";
import { handOverLease } from "../lifecycle/lease.js";
import { POOL_LABEL, Pool, type PoolStats, poolSizeFromEnv } from "../lifecycle/pool.js";
import { StateStore } from "../state/store.js";
import { trace } from "../util/trace.js";
import type { SmolVM } from "./smolvm.js";

let pool: Pool<SmolVM> | null = null;

function thePool(): Pool<SmolVM> {
  pool ??= new Pool<SmolVM>(
    {
      // a plain (warm) start, never through the pool, three commands, then paused: no CPU while it waits
      start: async (c) => {
        const { SmolVM } = await import("./smolvm.js");
        const vm = await SmolVM.createUnpooled(c);
        // a restored guest's first command is slow (under TCG nothing of the exec path is translated yet), the next
        // ones a little: those are the pool's, not the caller's
        for (let i = 0; i < 3; i++) await vm.run(["true"]);
        await vm.pauseForHandOut();
        return vm;
      },
      handOut,
    },
    poolSizeFromEnv(),
  );
  return pool;
}

/** This paused pool VM becomes the one `requested` asked for: its name, env, labels, lifetime, owner; then it runs. */
async function handOut(vm: SmolVM, requested: ResolvedVMConfig): Promise<void> {
  trace("pool: hand out");
  const { [POOL_LABEL]: _pool, ...labels } = labelsOf(vm.config);
  const config: ResolvedVMConfig = {
    ...vm.config,
    name: requested.name,
    env: { ...vm.config.env, ...requested.env },
    labels: { ...labels, ...labelsOf(requested) },
    timeoutMs: requested.timeoutMs,
    onTimeout: requested.onTimeout,
    keep: requested.keep,
  };
  const rec = StateStore.open().getById(vm.vmId);
  if (!rec) throw new VMStateError(`pool VM ${vm.vmId} is gone`);
  handOverLease(config, rec.vmDir);
  trace("pool: lease handed over");
  // a new hostname and the host's clock, then it runs; its record says so only once it does
  await vm.resumeAs(requested.name ?? vm.vmId, { config, name: requested.name });
  (vm as { config: ResolvedVMConfig }).config = config;
  trace("pool: resumed and resynced");
}

export function takePooled(requested: VMConfig, resolved: ResolvedVMConfig, backend: BackendKind) {
  return thePool().take(requested, resolved, backend);
}

export function configurePool(size: number): void {
  if (!Number.isInteger(size) || size < 0 || size > 64)
    throw new ConfigError("size", "must be a whole number from 0 to 64");
  thePool().reopen(size);
}

export const poolStats = (): PoolStats => thePool().stats();

export const closePool = (): Promise<void> => thePool().close();
