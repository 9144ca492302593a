/**
 * Starting a VM, in one place: the plan (a cold boot of the image, or a restore of its warm template), the record,
 * the disk layer, the VMM, the agent's first answer, and the resync a restored guest needs. Journaled: a start
 * interrupted by a kill leaves nothing (see recover.ts).
 */
import { appendFileSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { AgentClient } from "../agent/client.js";
import type { Backend, BackendKind, VMHandle } from "../backends/types.js";
import { networkOf, type ResolvedVMConfig } from "../config.js";
import { SmolVMError } from "../errors.js";
import { ensureAgent } from "../images/agent-build.js";
import { ensureDefaultImage } from "../images/store.js";
import { registerStateDir } from "../images/usage.js";
import { type AttachedNetwork, attachNetwork, configureGuest, detachNetwork } from "../network/index.js";
import { vmRunDir } from "../paths.js";
import { BROWSER_LAUNCHER_VERSION, DEFAULT_VIEWPORT, minMemoryMib, warmupBrowser } from "../sandbox/browser-guest.js";
import { CONSOLE_CARRIED, tailFile } from "../sandbox/console-log.js";
import { type LaunchPlan, resyncGuest } from "../sandbox/snapshots.js";
import { type WarmInputs, warmPlan } from "../sandbox/templates.js";
import { beginOp, endOp } from "../state/journal.js";
import type { StateStore, VMRecord } from "../state/store.js";
import type { Progress } from "../util/run.js";
import { trace } from "../util/trace.js";
import { startLease } from "./lease.js";

export interface StartOptions {
  /** Progress lines for slow first-time steps (building the image). */
  onProgress?: Progress;
  /** Give up if the guest agent has not answered after this long (default 60 s, or SMOLVM_BOOT_TIMEOUT_MS). */
  bootTimeoutMs?: number;
}

/** Where the time of the last `start()` went, in ms. */
export interface StartTimings {
  /** Kernel, initramfs and image lookup (or build, the first time). */
  imageMs: number;
  /** The VM's private disk layer. */
  diskMs: number;
  /** The VM's network set up on the host (TAP, rules, resolver or passt); 0 without one. */
  networkMs: number;
  /** VMM process started and its agent socket listening. */
  bootMs: number;
  /** From VMM start until the guest agent answered (and, after a restore, resynced its clock and entropy). */
  agentReadyMs: number;
  /** The guest told its address, route and resolver; 0 without a network. */
  guestNetworkMs: number;
  totalMs: number;
  /** How the guest got there: a kernel boot, the image's warm-start snapshot, or a snapshot. */
  from: "boot" | "warm" | "snapshot";
}

/** How to start a VM with this config: its image booted, or (a new isolated VM) its warm template restored. */
export async function startPlan(
  backend: Backend,
  c: ResolvedVMConfig,
  isNew: boolean,
  progress: Progress,
): Promise<LaunchPlan> {
  if (isNew && c.rootfsPath === null) await applyImage(c, progress);
  const needDefault = !c.kernelPath || !c.initrdPath || !c.rootfsPath;
  const image = needDefault ? await ensureDefaultImage(progress) : null;
  const boot: LaunchPlan = {
    kernelPath: c.kernelPath ?? (image?.kernelPath as string),
    initrdPath: c.initrdPath ?? (image?.initrdPath as string),
    hostname: c.name ?? c.vmId,
    bootArgs: c.bootArgs,
    diskBase: c.rootfsPath ?? (image?.rootfsPath as string),
    diskBaseFormat: "raw",
    accel: c.accel,
    agentBinary: image?.agentPath ?? (await ensureAgent(progress)),
    from: "boot",
  };
  // whether this backend can run here at all (Firecracker: its binary, KVM), before any disk is made; the
  // accelerator it resolves to is what a warm template is keyed by
  const accel = await backend.resolveAccel(c.accel, boot);
  // a new isolated VM restores its image's warm-start snapshot instead of booting (a restart boots its own disk)
  let plan = boot;
  if (isNew && !c.coldBoot && c.diskMode === "isolated") {
    try {
      plan = await warmPlan(
        backend,
        {
          config: c,
          kernelPath: boot.kernelPath,
          initrdPath: boot.initrdPath,
          rootfsPath: boot.diskBase,
          agentBinary: boot.agentBinary,
          accel,
          warmup: warmupOf(c),
        },
        backend.identity(),
        progress,
      );
    } catch (e) {
      progress(`warm start unavailable, booting instead: ${(e as Error).message}`);
    }
  }
  return plan;
}

/** The browser image's warm template runs Chromium, so a VM restored from it has a live browser (src/sandbox/browser.ts). */
function warmupOf(c: ResolvedVMConfig): WarmInputs["warmup"] {
  // a VM too small for Chromium gets a template without it (and a clear error from browser.start())
  if (c.image !== "browser" || c.memSizeMib < minMemoryMib(DEFAULT_VIEWPORT)) return undefined;
  return {
    key: `browser-${BROWSER_LAUNCHER_VERSION}`,
    run: (agent) => warmupBrowser(agent, c.memSizeMib),
  };
}

/**
 * Resolve a new VM's image once, at its first start (a preset is built and an OCI image pulled the first time): its
 * file system becomes the VM's `rootfsPath`, its config the defaults of commands, its Env under the VM's own env.
 */
async function applyImage(c: ResolvedVMConfig, progress: Progress): Promise<void> {
  if (c.image === null && c.diskSizeMib === null) return; // the built-in image, as it is
  // loaded here: most commands never resolve an image (and with it the OCI client)
  const { resolveImage } = await import("../images/resolve.js");
  const img = await resolveImage(c.image, c.diskSizeMib, progress);
  c.rootfsPath = img.rootfsPath;
  if (img.defaults) {
    c.imageInfo = img.defaults;
    c.env = { ...img.env, ...c.env };
  }
}

/**
 * A restored guest prints nothing of its boot: its console log starts with the console of the guest it was saved
 * from (the warm template's boot, or the snapshotted VM's console), then a line saying where it was restored.
 */
function consoleHeader(logPath: string, plan: LaunchPlan): void {
  const before = plan.consoleFrom ? tailFile(plan.consoleFrom, CONSOLE_CARRIED) : "";
  const what =
    plan.from === "warm"
      ? "restored from the image's warm-start snapshot (the boot above is that snapshot's)"
      : `restored from ${plan.snapshotId ? `snapshot ${plan.snapshotId}` : "a saved state"}`;
  const sep = before && !before.endsWith("\n") ? "\n" : "";
  appendFileSync(logPath, `${before}${sep}--- smolvm: ${what}, at ${new Date().toISOString()} ---\n`, { mode: 0o600 });
}

/** Launch `plan` for the VM of `config` (`existing`: its record, for a restart). */
export async function launchVm(
  store: StateStore,
  backend: Backend,
  kind: BackendKind,
  c: ResolvedVMConfig,
  existing: VMRecord | null,
  plan: LaunchPlan,
  opts: StartOptions,
  t0: number,
  onRecord: (rec: VMRecord) => void,
): Promise<{ client: AgentClient; timings: StartTimings }> {
  const tImage = performance.now();
  registerStateDir(store.dir); // so `image rm`/`prune` from any state dir see this VM on its image
  const op = beginOp(store, "create", { vmId: c.vmId, data: { newRecord: !existing } });
  let rec = existing;
  if (!rec) {
    rec = store.insert({
      id: c.vmId,
      name: c.name,
      backend: kind,
      status: "created",
      config: c,
      handle: null,
      diskPath: null,
      diskFormat: null,
      vmDir: join(store.vmsDir(), c.vmId),
      error: null,
      snapshotId: plan.snapshotId ?? null,
    });
  }
  onRecord(rec);
  let handle: VMHandle | null = null;
  let client: AgentClient | null = null;
  let net: AttachedNetwork | null = null;
  const runDir = vmRunDir(c.vmId, store.dir);
  const logPath = join(rec.vmDir, "console.log");
  try {
    mkdirSync(rec.vmDir, { recursive: true, mode: 0o700 }); // the console log lives here, whatever the disk mode
    if (plan.incoming && !plan.nicInState && networkOf(c).mode !== "none") {
      throw new SmolVMError(
        `the state restored here was saved without a network device, so network "${networkOf(c).mode}" cannot be ` +
          "added to it: take the snapshot from a VM created with a network, or cold-boot",
      );
    }
    // the disk layer and the network are independent: set up side by side (both are mostly process starts)
    trace("launch: start");
    const netting = attachNetwork(store, c, runDir, plan.nicInState === true).then((n) => {
      trace("launch: network attached");
      // a cold boot's firewall rules (an nft process) go on while the disk layer is made; a restore's once its VMM
      // is up, while it loads the guest's state (process starts here would delay the VMM's)
      if (!plan.incoming) n.rules().catch(() => {});
      return { n, at: performance.now() };
    });
    // a VM that ran before keeps its own top disk layer (after a snapshot it is no longer disk.qcow2)
    const preparing =
      rec.diskPath && rec.diskFormat && existsSync(rec.diskPath)
        ? Promise.resolve({ path: rec.diskPath, format: rec.diskFormat })
        : backend.prepareDisk({
            base: plan.diskBase,
            baseFormat: plan.diskBaseFormat,
            mode: plan.incoming ? "isolated" : c.diskMode,
            vmDir: rec.vmDir,
          });
    const [d, n] = await Promise.allSettled([preparing, netting]);
    if (n.status === "fulfilled") net = n.value.n; // before any throw: the catch below removes it again
    if (d.status === "rejected") throw d.reason;
    if (n.status === "rejected") throw n.reason;
    const disk = d.value;
    const tNet = n.value.at;
    net = n.value.n; // (narrowed to non-null for the code below)
    store.update(rec.id, { diskPath: disk.path, diskFormat: disk.format });
    const tDisk = performance.now();
    trace("launch: disk and network ready");
    // a restore starts its vCPUs only once the VM's firewall rules are in place; a cold boot waits for them here
    if (!plan.incoming) await net.rules();
    if (plan.incoming) consoleHeader(logPath, plan);
    const lease = startLease(c, rec.vmDir, store.dir); // its lifetime counts from now
    handle = await backend.boot({
      lease,
      vmId: c.vmId,
      vcpuCount: c.vcpuCount,
      memSizeMib: c.memSizeMib,
      kernelPath: plan.kernelPath,
      initrdPath: plan.initrdPath,
      diskPath: disk.path,
      diskFormat: disk.format,
      bootArgs: plan.bootArgs,
      hostname: plan.hostname,
      runDir,
      logPath,
      nic: net.nic,
      beforeRun: plan.incoming ? net.rules : undefined,
      onStarted: () => {
        if (plan.incoming) net?.rules().catch(() => {});
        net?.vmmStarted(true);
      },
      agentBinary: plan.agentBinary,
      accel: plan.accel,
      incoming: plan.incoming,
      ram: plan.ram ? { path: plan.ram, share: false } : undefined,
      ignoreShared: !!plan.ram && plan.ignoreShared === true,
    });
    store.update(rec.id, { status: "running", handle, error: null });
    const tBoot = performance.now();
    const timeout = opts.bootTimeoutMs ?? Number(process.env.SMOLVM_BOOT_TIMEOUT_MS ?? 60_000);
    client = await AgentClient.connect(handle.agentSocket);
    if (plan.incoming) {
      await restoredReady(client, c.name ?? c.vmId, timeout);
      trace("launch: agent ready");
    } else {
      await client.waitReady(timeout, 25);
      trace("launch: agent ready");
    }
    const tAgent = performance.now();
    trace("launch: resynced");
    await net.ready();
    await configureGuest(client, net.info, plan.guestNet);
    const tReady = performance.now();
    trace("launch: guest network configured");
    return {
      client,
      timings: {
        imageMs: tImage - t0,
        diskMs: tDisk - tImage,
        networkMs: tNet - tImage,
        bootMs: tBoot - tDisk,
        agentReadyMs: tAgent - tBoot,
        guestNetworkMs: tReady - tAgent,
        totalMs: tReady - t0,
        from: plan.from ?? "boot",
      },
    };
  } catch (e) {
    client?.close();
    if (handle) await backend.kill(handle);
    await net?.idle(); // rules or a resolver still on their way are removed too
    await detachNetwork(store, c.vmId, runDir).catch(() => {});
    const msg = (e as Error).message;
    store.update(rec.id, { status: "error", handle: null, error: msg });
    const tail = tailFile(logPath, 1500).trim();
    throw new SmolVMError(
      `VM ${c.vmId} failed to start: ${msg}${tail ? `\n--- console (last lines) ---\n${tail}` : ""}`,
      { cause: e },
    );
  } finally {
    endOp(store, op);
  }
}

/**
 * A restored guest's agent was serving when its state was saved, so its resync (clock, entropy, hostname) is sent at
 * once and its answer is the sign that it runs: one round trip, not a ping and then the resync. Frames sent before
 * the guest runs wait in the channel (QEMU's chardev, the proxy's queue under Firecracker), so it is not lost; should
 * it still get no answer soon, the agent is pinged until it answers, and resynced again unless the first answer came
 * meanwhile (the agent answers in order).
 */
async function restoredReady(client: AgentClient, hostname: string, timeoutMs: number): Promise<void> {
  let answered = false;
  const synced = resyncGuest(client, hostname).then(() => {
    answered = true;
  });
  synced.catch(() => {}); // raced below; a closed channel fails the ping loop too
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    synced,
    new Promise<void>((r) => {
      timer = setTimeout(r, RESYNC_FIRST_WAIT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
  if (answered) return;
  await client.waitReady(timeoutMs, 5);
  if (!answered) await resyncGuest(client, hostname);
}

/** How long a restored guest's first resync is awaited before the agent is pinged as well. */
const RESYNC_FIRST_WAIT_MS = 3000;
