/** The SmolVM facade: lifecycle of one sandbox, whatever backend drives it. */

import type { AgentClient } from "../agent/client.js";
import { T } from "../agent/codec.js";
import { getBackend, resolveBackendName } from "../backends/resolve.js";
import type { Backend, BackendKind } from "../backends/types.js";
import { type InternetPolicy, labelsOf, type ResolvedVMConfig, resolveConfig, type VMConfig } from "../config.js";
import { ConfigError, VMNotFoundError, VMStateError } from "../errors.js";
import type { PackManifest } from "../images/pack.js";
import { describeEnd } from "../lifecycle/exit-reason.js";
import { launchVm, type StartOptions, type StartTimings, startPlan } from "../lifecycle/launch.js";
import { setLifetime } from "../lifecycle/lifetime.js";
import { POOL_LABEL, type PoolStats } from "../lifecycle/pool.js";
import { takeSnapshot } from "../lifecycle/snapshot.js";
import { deleteVm, stopVm } from "../lifecycle/teardown.js";
import { tempSnapshot } from "../lifecycle/temp-snapshot.js";
import type { NetworkInfo } from "../network/index.js";
import type { ExposedPort } from "../network/ports.js";
import { backendFor, reconcile, reconcileVm } from "../state/reconcile.js";
import { StateStore, type VMRecord, type VMStatus } from "../state/store.js";
import { type Progress, silent } from "../util/run.js";
import { trace } from "../util/trace.js";
import { Browser } from "./browser.js";
import {
  type CommandResult,
  type Process,
  type RunOptions,
  runCommand,
  type SpawnOptions,
  spawnCommand,
} from "./commands.js";
import {
  type FromPackOptions,
  type FromSnapshotOptions,
  forkClones,
  type Lifetime,
  lifetimeFrom,
  restorePack,
  restoreSnapshot,
} from "./copies.js";
import { Env } from "./env.js";
import { Files, type WriteResult } from "./files.js";
import { VmNetwork } from "./network.js";
import { packSnapshot } from "./packs.js";
import { openAgent, pauseVm, resumeAs, resumeVm, type VmControl } from "./pausing.js";
import { closePool, configurePool, poolStats, takePooled } from "./pooling.js";
import { Processes } from "./processes.js";
import { Pty } from "./pty.js";
import { deleteSnapshot, type LaunchPlan, type SnapshotInfo, snapshotInfo } from "./snapshots.js";
import type { TransferOptions } from "./transfers.js";
import { info, type VMInfo } from "./vm-info.js";

export type {
  ExposedPort,
  FromPackOptions,
  FromSnapshotOptions,
  Lifetime,
  NetworkInfo,
  StartOptions,
  StartTimings,
  VMInfo,
  VMStatus,
};

export class SmolVM implements AsyncDisposable {
  readonly config: ResolvedVMConfig;
  /** The backend that drives this VM. */
  readonly backend: BackendKind;
  private rec: VMRecord | null = null;
  /** Timing breakdown of the last successful `start()` in this process, or null. */
  startTimings: StartTimings | null = null;
  private client: AgentClient | null = null;
  /** Created by this object: `await using` / dispose deletes it. */
  private owned = true;
  private readonly store = StateStore.open();

  /** Validate the configuration (throws `ConfigError`); nothing starts until `start()`. */
  constructor(config: VMConfig = {}) {
    this.config = resolveConfig(config);
    this.backend = resolveBackendName(this.config.backend);
  }

  /** Construct and start a VM: one from the pool when there is one of its shape waiting (`configurePool`). */
  static async create(config: VMConfig = {}, opts: StartOptions = {}): Promise<SmolVM> {
    const vm = new SmolVM(config);
    trace("create: config resolved");
    // a name already taken fails the usual way, below
    if (!vm.config.name || !vm.store.getByName(vm.config.name)) {
      const pooled = await takePooled(config, vm.config, vm.backend);
      if (pooled) return pooled;
    }
    return SmolVM.startOwned(vm, opts);
  }

  /** @internal Construct and start a VM, never from the pool (the pool's own VMs). */
  static createUnpooled(config: VMConfig = {}, opts: StartOptions = {}): Promise<SmolVM> {
    return SmolVM.startOwned(new SmolVM(config), opts);
  }

  private static async startOwned(vm: SmolVM, opts: StartOptions): Promise<SmolVM> {
    try {
      await vm.start(opts);
    } catch (e) {
      await vm.delete(); // the caller never gets the object, so nothing may be left behind
      throw e;
    }
    return vm;
  }

  /** Attach to an existing VM by id or name (created by this or another process). Throws `VMNotFoundError`. */
  static async fromId(idOrName: string): Promise<SmolVM> {
    const store = StateStore.open();
    const rec = store.get(idOrName);
    if (!rec) throw new VMNotFoundError(idOrName);
    const vm = Object.create(SmolVM.prototype) as SmolVM;
    Object.assign(vm, {
      config: rec.config,
      backend: rec.backend,
      rec: await reconcileVm(store, rec),
      client: null,
      owned: false,
      store,
      startTimings: null,
    });
    return vm;
  }

  /** Every VM in the state store, after reconciling dead ones (not the ones waiting in a pool). */
  static async list(): Promise<VMInfo[]> {
    const store = StateStore.open();
    await reconcile(store);
    return store
      .list()
      .filter((r) => !labelsOf(r.config)[POOL_LABEL])
      .map(info);
  }

  /**
   * Keep `size` VMs of each shape `create()` is asked for ready (0: no pool; default `SMOLVM_POOL`). See
   * src/lifecycle/pool.ts.
   */
  static configurePool(opts: { size: number }): void {
    configurePool(opts.size);
  }

  /** How the pool has done: hits, misses and bypasses, counted apart. */
  static poolStats(): PoolStats {
    return poolStats();
  }

  /** Delete every VM waiting in the pool and stop refilling it (VMs handed out stay their callers'). */
  static closePool(): Promise<void> {
    return closePool();
  }

  /** @internal the agent connection (for the modules that drive a VM from outside: pooling.ts) */
  agentClient(): Promise<AgentClient> {
    return this.agent();
  }

  get vmId(): string {
    return this.config.vmId;
  }

  get name(): string | null {
    return this.config.name;
  }

  /**
   * created | running | paused | stopped | crashed | error (a start failed). A VM whose VMM died reads as stopped if
   * the guest powered itself off, else crashed (`info().error` says why: a kill, a kernel panic, an exit status);
   * `list()` and `fromId()` record it.
   */
  get status(): VMStatus {
    if (!this.rec) return "created";
    const rec = this.store.getById(this.vmId) ?? this.rec; // another process may have paused or stopped it
    this.rec = rec;
    if ((rec.status === "running" || rec.status === "paused") && rec.handle) {
      const backend = backendFor(rec.backend);
      if (!backend.isAlive(rec.handle)) return describeEnd(backend.exitInfo(rec.handle), rec.handle.consoleLog).status;
    }
    return rec.status;
  }

  info(): VMInfo {
    return info(this.refresh() ?? (this.rec as VMRecord));
  }

  /** @internal the backend driving this VM (for the modules that start it: copies.ts) */
  driver(): Backend {
    return getBackend(this.backend);
  }

  /** Re-read this VM's record (another process may have changed it). */
  private refresh(): VMRecord | null {
    const rec = this.store.getById(this.vmId);
    if (rec) this.rec = rec;
    return rec;
  }

  /** Boot the VM and wait until its agent answers. A stopped VM boots again from its own disk. */
  async start(opts: StartOptions = {}): Promise<void> {
    const progress = opts.onProgress ?? silent;
    const t0 = performance.now();
    if (this.rec && this.refresh() === null) throw new VMNotFoundError(this.vmId);
    if (this.status === "running" || this.status === "paused") return;
    // startPlan fails first thing (BackendUnavailableError) on a backend this host cannot run
    const plan = await startPlan(this.driver(), this.config, this.rec === null, progress);
    await this.launch(plan, opts, t0);
  }

  /**
   * @internal Start the VMM (booting, or restoring `plan.incoming`), wait for the agent, resync a restored guest.
   */
  async launch(plan: LaunchPlan, opts: StartOptions, t0: number): Promise<void> {
    const r = await launchVm(this.store, this.driver(), this.backend, this.config, this.rec, plan, opts, t0, (rec) => {
      this.rec = rec;
    });
    this.client = r.client;
    this.startTimings = r.timings;
    this.refresh();
  }

  /**
   * Snapshot memory, device state and disk together (the VM is paused for the duration, then left as it was).
   * The disk is not copied: the VM's current top layer becomes the snapshot's and the VM continues on a new one.
   */
  async snapshot(opts: { name?: string } = {}): Promise<SnapshotInfo> {
    const rec = this.refresh();
    if (!rec?.handle || (this.status !== "running" && this.status !== "paused") || !rec.diskPath) {
      throw new VMStateError(`VM ${this.vmId} is ${this.status}; only a running or paused VM can be snapshotted`);
    }
    try {
      return await takeSnapshot(this.store, this.driver(), rec, opts);
    } finally {
      this.refresh();
    }
  }

  /**
   * A new sandbox whose guest state is exactly the snapshot's (files, running processes, env), with a new identity:
   * new id, own disk layer, its own hostname, the host's clock and fresh entropy. The source may still be running.
   */
  static fromSnapshot(idOrName: string, opts: FromSnapshotOptions = {}): Promise<SmolVM> {
    return restoreSnapshot((c) => new SmolVM(c), idOrName, opts);
  }

  /** `count` new sandboxes, each a copy of this one as it is now (it keeps running). */
  async fork(count: number, opts: { name?: string } & Lifetime = {}): Promise<SmolVM[]> {
    if (!Number.isInteger(count) || count < 1 || count > 64) throw new ConfigError("count", "must be 1 to 64");
    // temporary unless named: its memory goes once the clones have started, its disk layer with its last user
    using temp = await tempSnapshot(this.store, this.driver(), this.refresh(), this.status, "forked", opts);
    this.refresh();
    // awaited here: `temp` is disposed of (its memory deleted) when this block ends
    return await forkClones(this.driver(), temp.snap, count, (id) => SmolVM.fromSnapshot(id, lifetimeFrom(opts)));
  }

  /**
   * Write this VM to a `.smolmachine` file: kernel, initramfs, its disk (flattened, sparse, zstd-compressed) and,
   * with `withMemory`, its running state. Takes a snapshot first, so the file is consistent.
   */
  async pack(out: string, opts: { withMemory?: boolean; onProgress?: Progress } = {}): Promise<PackManifest> {
    // the disk must stand on its own (it is cold-booted where the memory cannot be used): flush the guest's caches
    await (await this.agent()).op(T.SYNC, [[4, Buffer.from([1])]]).done;
    // temporary: its memory goes once the file is written, its disk layer with the VM
    using temp = await tempSnapshot(this.store, this.driver(), this.refresh(), this.status, "packed");
    this.refresh();
    return await packSnapshot(this.driver(), temp.snap, out, opts.withMemory === true, opts.onProgress ?? silent);
  }

  /**
   * A new sandbox from a `.smolmachine` file. The file is checked (every section's checksum) before anything boots;
   * its memory state is restored when this host's VMM matches, otherwise its disk is cold-booted (with a notice).
   */
  static fromPack(file: string, opts: FromPackOptions = {}): Promise<SmolVM> {
    return restorePack((c) => new SmolVM(c), file, opts);
  }

  /** Snapshots in the state store. */
  static listSnapshots(): SnapshotInfo[] {
    return StateStore.open().listSnapshots().map(snapshotInfo);
  }

  /**
   * Delete a snapshot. Refused (SnapshotInUseError) while VMs or other snapshots are layered on its disk, since
   * deleting it would lose their data.
   */
  static deleteSnapshot(idOrName: string): void {
    deleteSnapshot(StateStore.open(), idOrName);
  }

  /** The agent connection, opened on first use. */
  private async agent(): Promise<AgentClient> {
    if (!this.client || this.client.closed) this.client = await openAgent(this.control());
    return this.client;
  }

  /** Why a VM that is no longer running ended (its record updated first, if nobody has yet). */
  private async endReason(): Promise<string | null> {
    const rec = this.refresh();
    return rec ? (await reconcileVm(this.store, rec)).error : null;
  }

  /** Run a command and collect its result: a string runs through `/bin/sh -c`, an array is an argv. */
  async run(cmd: string | string[], opts: RunOptions = {}): Promise<CommandResult> {
    return runCommand(await this.agent(), cmd, this.config.env, this.imageDefaults(opts));
  }

  /**
   * Start a command and return at once with a live handle (streams, stdin, wait, kill). It keeps running when this
   * client goes away unless `background: false`; `vm.processes.connect(pid)` reattaches.
   */
  async spawn(cmd: string | string[], opts: SpawnOptions = {}): Promise<Process> {
    return spawnCommand(await this.agent(), cmd, this.config.env, this.imageDefaults(opts));
  }

  /** A command's options with the image's working directory and user where the caller gave none. */
  private imageDefaults<T extends { cwd?: string; user?: string }>(opts: T): T {
    const d = this.config.imageInfo;
    if (!d) return opts;
    return { ...opts, cwd: opts.cwd ?? d.workingDir, user: opts.user ?? d.user };
  }

  private _files?: Files;
  private _env?: Env;
  private _pty?: Pty;
  private _processes?: Processes;

  /** Commands running in the guest; reattach to background ones. */
  get processes(): Processes {
    this._processes ??= new Processes(
      () => this.agent(),
      () => this.config.env,
      (o) => this.imageDefaults(o),
    );
    return this._processes;
  }

  /** Files in the guest: read, write, list, stat, exists, mkdir, remove, rename, upload, download. */
  get files(): Files {
    this._files ??= new Files(() => this.agent());
    return this._files;
  }

  /** Environment applied to every later command, held by the guest agent in memory. */
  get env(): Env {
    this._env ??= new Env(() => this.agent());
    return this._env;
  }

  /** Interactive terminals. */
  get pty(): Pty {
    this._pty ??= new Pty(
      () => this.agent(),
      () => this.config.env,
      (o) => this.imageDefaults(o),
    );
    return this._pty;
  }

  private _browser?: Browser;

  /** The VM's Chromium (the `browser` image): start, status, stop, screenshot, open, text, click, type. */
  get browser(): Browser {
    this._browser ??= new Browser({
      vmId: this.vmId,
      memSizeMib: () => this.config.memSizeMib,
      run: (cmd, o) => this.run(cmd, o),
      startProcess: (cmd) => this.processes.start(cmd),
      expose: (p) => this.expose(p),
      unexpose: (p) => this.unexpose(p),
      ports: () => this.ports(),
    });
    return this._browser;
  }

  private _net?: VmNetwork;
  private get net(): VmNetwork {
    this._net ??= new VmNetwork(
      this.store,
      () => this.refresh(),
      () => this.agent(),
    );
    return this._net;
  }

  /** `{ mode, guestIp, gatewayIp, macAddress, tapDevice?, dns, internet }` of this VM. */
  get networkConfig(): NetworkInfo {
    return this.net.config();
  }

  /**
   * Make a guest TCP port reachable from the host, in every network mode: returns `{ host, port, url }`, on
   * 127.0.0.1 unless `host` names another address; `hostPort` 0 or absent picks a free port. The listener outlives
   * this process and is closed by `unexpose` or on delete.
   */
  expose(guestPort: number, opts: { hostPort?: number; host?: string } = {}): Promise<ExposedPort> {
    return this.net.expose(guestPort, opts);
  }

  /** Close exposed ports: all, those of one guest port (a number), or `{ hostPort }`. Returns what was closed. */
  unexpose(which?: number | { guestPort?: number; hostPort?: number }): Promise<ExposedPort[]> {
    return this.net.unexpose(which);
  }

  ports(): ExposedPort[] {
    return this.net.ports();
  }

  /** Change where the running VM may connect to (`"open"`, `"off"` or `{ allowCidrs, allowDomains }`). */
  setInternet(policy: InternetPolicy): Promise<NetworkInfo> {
    return this.net.setInternet(policy);
  }

  /** Copy a host file into the guest (streamed). */
  uploadFile(localPath: string, guestPath: string): Promise<WriteResult> {
    return this.files.upload(localPath, guestPath);
  }

  /** Copy a host folder into the guest. */
  uploadDir(localDir: string, guestDir: string): Promise<{ path: string }> {
    return this.files.uploadDir(localDir, guestDir);
  }

  /** Copy a guest folder to the host, refusing unsafe archive entries (see `Files.downloadDir`). */
  downloadDir(guestDir: string, localDir: string, opts: Omit<TransferOptions, "allowSpecial"> = {}) {
    return this.files.downloadDir(guestDir, localDir, opts);
  }

  /** Copy a guest file to the host (streamed; the host file appears only when complete). */
  downloadFile(
    guestPath: string,
    localPath: string,
    opts: TransferOptions = {},
  ): Promise<{ path: string; bytes: number }> {
    return this.files.download(guestPath, localPath, opts);
  }

  /** Freeze the VM's vCPUs. A paused VM stays paused (no error); a VM that is not running is an error saying why. */
  pause(): Promise<void> {
    return pauseVm(this.control());
  }

  /** Continue a paused VM. A running VM is left as it is (no error). */
  resume(): Promise<void> {
    return resumeVm(this.control());
  }

  /** @internal Pause a pool VM: its next step is its hand-out (`resumeAs`), which the backend may prepare for. */
  pauseForHandOut(): Promise<void> {
    return pauseVm(this.control(), { resumeSoon: true });
  }

  /** @internal Resume a paused VM as a new sandbox (the pool's hand-out: src/sandbox/pausing.ts). */
  resumeAs(hostname: string, update: Partial<VMRecord>): Promise<void> {
    return resumeAs(this.control(), hostname, update);
  }

  private control(): VmControl {
    return {
      vmId: this.vmId,
      store: this.store,
      driver: this.driver(),
      refresh: () => this.refresh(),
      status: () => this.status,
      agent: () => this.agent(),
      client: () => this.client,
      setClient: (c) => {
        this.client = c;
      },
      endReason: () => this.endReason(),
    };
  }

  /**
   * A new lifetime for the running (or paused) VM: it ends `ms` from now (null: never), with the end action it was
   * given (`onTimeout`). Works from any process (`fromId`); the VM's supervisor enforces it.
   */
  setTimeout(ms: number | null): void {
    const rec = this.refresh();
    if (!rec) throw new VMNotFoundError(this.vmId);
    setLifetime({ ...rec, status: this.status }, ms);
  }

  /** Shut the guest down cleanly (disks synced), then make sure the VMM is gone. Idempotent. */
  async stop(opts: { timeoutMs?: number } = {}): Promise<void> {
    const rec = this.refresh();
    if (!rec) throw new VMNotFoundError(this.vmId);
    await stopVm(this.store, this.driver(), rec, () => this.agent(), opts.timeoutMs ?? 5000);
    this.client?.close();
    this.client = null;
    this.refresh();
  }

  /** Kill the VM and remove everything it owns: process, sockets, network, ports, disk layer, record. Idempotent. */
  async delete(): Promise<void> {
    this.client?.close();
    this.client = null;
    const rec = this.store.getById(this.vmId);
    if (!rec) return;
    await deleteVm(this.store, rec);
    this.rec = { ...rec, status: "stopped", handle: null };
  }

  /** Drop this object's connection to the agent; the VM keeps running. */
  close(): void {
    this.client?.close();
    this.client = null;
  }

  /** `await using vm = ...`: deletes VMs this object created; only disconnects from ones attached with fromId. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.owned) await this.delete();
    else this.close();
  }
}
