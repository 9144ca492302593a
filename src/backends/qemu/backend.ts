import {
  closeSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import type { AccelName } from "../../config.js";
import { SmolVMError } from "../../errors.js";
import { agentPath } from "../../images/agent-build.js";
import { checkPrivateDir, dataDir, ensurePrivateDir, runtimeDir } from "../../paths.js";
import { killAndWait, processAlive, sleep } from "../../util/proc.js";
import { mustRun, runHost, runWithFds, which } from "../../util/run.js";
import { trace } from "../../util/trace.js";
import { createVmCgroups, limitsFor, removeCgroups } from "../cgroups.js";
import { readExitInfo } from "../exit-info.js";
import type { Backend, BootSpec, DiskSpec, ExitInfo, SnapshotResult, SplitInfo, VMHandle } from "../types.js";
import { endVmmProcesses, readPid } from "../vmm-process.js";
import { resolveAccel } from "./accel.js";
import { buildQemuArgs, idleTuning, NIC_FD, qemuPaths } from "./args.js";
import { qemuFeatures, requireQemu } from "./binary.js";
import { migrateTo, newLayerNode } from "./migrate.js";
import { createOverlay } from "./overlay.js";
import { contReleasing, QmpClient, qmpOnce, releaseHeld, stopAndHold } from "./qmp.js";
import { inWorker, type RamJoinPoint, UnsupportedStreamError } from "./ram-split.js";
import { vmmIdentity } from "./vmm-user.js";

/** An empty folder nobody can write: the root directory of every confined VMM once it has initialized. */
function emptyRoot(): string {
  const dir = join(runtimeDir(), ".empty");
  try {
    mkdirSync(dir, { mode: 0o500 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.uid !== 0 || (st.mode & 0o222) !== 0 || readdirSync(dir).length) {
    throw new SmolVMError(`${dir} must be an empty folder owned by root that nobody can write`);
  }
  return dir;
}

/**
 * The kernel a restoring QEMU is given instead of the guest's. QEMU reads the `-kernel` file into its heap at start and
 * keeps it there for the firmware to load at a reset, but a restored guest is already running and never boots (a
 * reset ends the VM: -no-reboot): for Debian's kernel that was 13.5 MiB of private memory in every restored VM, a
 * third of an idle VM's own memory (docs/DENSITY.md). The kernel is not in the saved state (fw_cfg's data is not
 * migrated), so any file QEMU accepts loads the same state: 8 KiB of zeros, which QEMU takes for an ancient zImage
 * (no header, no initrd), with the same option ROM (linuxboot_dma.bin) as a real kernel.
 */
export function restoreKernel(): string {
  const file = join(dataDir(), "restore-kernel.bin");
  try {
    if (statSync(file).size === RESTORE_KERNEL_BYTES) return file;
  } catch {
    // not written yet
  }
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, Buffer.alloc(RESTORE_KERNEL_BYTES), { mode: 0o644 });
  renameSync(tmp, file);
  return file;
}
const RESTORE_KERNEL_BYTES = 8192;

/** What held a restored guest's start failed (not the restore itself). */
class GateError extends Error {
  constructor(override readonly cause: unknown) {
    super("the guest's start was held, then refused");
  }
}

/** Console log size at which the proxy keeps only the newest half. */
const CONSOLE_MAX_BYTES = 1 << 20;

export class QemuBackend implements Backend {
  readonly kind = "qemu" as const;
  readonly restoresDirectly = false;

  async prepareDisk(spec: DiskSpec): Promise<{ path: string; format: "raw" | "qcow2" }> {
    mkdirSync(spec.vmDir, { recursive: true, mode: 0o700 });
    if (spec.mode === "shared") return { path: spec.base, format: spec.baseFormat ?? "raw" };
    const overlay = join(spec.vmDir, "disk.qcow2");
    if (existsSync(overlay)) return { path: overlay, format: "qcow2" }; // a stopped VM keeps its layer
    await createOverlay(spec.base, spec.baseFormat ?? "raw", overlay);
    return { path: overlay, format: "qcow2" };
  }

  identity(): string {
    const q = requireQemu();
    const st = statSync(q);
    return `qemu:${q}:${st.size}:${st.mtimeMs}${idleTuning() ? "" : ":idle-legacy"}`;
  }

  resolveAccel(requested: AccelName, image: { kernelPath: string; initrdPath: string }): Promise<AccelName> {
    return resolveAccel(requested, requireQemu(), image);
  }

  async boot(spec: BootSpec): Promise<VMHandle> {
    const qemu = requireQemu();
    const accel = await resolveAccel(spec.accel, qemu, spec);
    ensurePrivateDir(spec.runDir);
    const paths = qemuPaths(spec.runDir);
    const agentSocket = join(spec.runDir, "agent.sock");
    for (const f of [...Object.values(paths), agentSocket, join(spec.runDir, "proxy.pid")]) rmSync(f, { force: true });
    if (agentSocket.length > 107)
      throw new SmolVMError(`socket path too long (set SMOLVM_RUNTIME_DIR): ${agentSocket}`);
    const who = vmmIdentity(spec.runDir);
    const features = qemuFeatures(qemu);
    trace("qemu: boot");
    const cg = createVmCgroups(basename(spec.runDir), limitsFor(spec.memSizeMib, spec.vcpuCount)).dirs;
    // the root disk is handed over as descriptors: once QEMU has dropped its privileges it cannot open paths, and a
    // snapshot reopens the layer read-only
    const fds = spec.diskFormat === "qcow2" ? [openSync(spec.diskPath, "r+"), openSync(spec.diskPath, "r")] : [];
    const childFds: (number | "ignore")[] = [...fds];
    // a restore's state file goes in the same way, at start (past the NIC's number, which the launcher fills):
    // `migrate-incoming fd:N` then needs no descriptor passing (a process start) on the monitor
    let stateFd: number | null = null;
    if (spec.incoming) {
      try {
        const fd = openSync(spec.incoming, "r");
        fds.push(fd);
        while (3 + childFds.length <= NIC_FD) childFds.push("ignore");
        stateFd = 3 + childFds.length;
        childFds.push(fd);
      } catch (e) {
        for (const fd of fds) closeSync(fd);
        removeCgroups(cg);
        throw new SmolVMError(`cannot restore from ${spec.incoming}: ${(e as Error).message}`, { cause: e });
      }
    }
    // passt's socket pair is made by the launcher: QEMU would connect a stream netdev only after it has chrooted
    const tap = spec.nic?.kind === "tap" ? spec.nic : null;
    // a restore gets a placeholder kernel and no initrd: QEMU keeps both in memory for a boot that never comes
    const bootFiles = spec.incoming && idleTuning() ? { kernelPath: restoreKernel(), initrdPath: "" } : {};
    const args = buildQemuArgs({ ...spec, ...bootFiles }, accel, paths, {
      runas: who,
      runWith: features.runWith,
      chroot: who ? emptyRoot() : undefined,
      diskFds: spec.diskFormat === "qcow2",
      ramReadonly: features.rom,
    });
    if (spec.incoming) args.push("-incoming", "defer");
    const peer = spec.nic?.kind === "stream" ? spec.nic.peer : null;
    let r: Awaited<ReturnType<typeof runWithFds>>;
    trace("qemu: launcher spawn");
    try {
      const launching = runWithFds(
        spec.agentBinary,
        [
          "launch",
          ...["--log", paths.logFile, "--qmp", paths.qmpSocket, "--pidfile", paths.pidFile, "--timeout", "30000"],
          ...["--status-file", join(dirname(spec.logPath), "vmm-status.json")],
          ...(spec.lease
            ? ["--lease", spec.lease.path, "--on-expire", String(spec.lease.onExpire.length), ...spec.lease.onExpire]
            : []),
          ...childFds.flatMap((fd, i) => (fd === "ignore" ? [] : ["--keep-fd", String(3 + i)])),
          ...(peer
            ? [
                ...["--peer", String(NIC_FD), "--peer-err", peer.errPath, "--peer-pidfile", peer.pidPath],
                ...["--peer-exec", String(peer.argv.length), ...peer.argv],
              ]
            : []),
          ...cg.flatMap((d) => ["--cgroup", d]),
          ...(tap && !tap.create ? ["--tap", `${tap.tap}:${NIC_FD}`] : []),
          ...(tap?.create
            ? [
                ...["--new-tap", `${tap.tap}:${NIC_FD}`, "--tap-mac", tap.create.mac],
                ...["--tap-addr", tap.create.address],
                ...["--tap-neigh", `${tap.create.neighbor.ip}=${tap.create.neighbor.mac}`],
              ]
            : []),
          ...(who ? ["--isolate"] : []),
          "--",
          qemu,
          ...args,
        ],
        childFds,
        { timeoutMs: 40_000 },
      );
      r = await launching;
    } finally {
      for (const fd of fds) closeSync(fd);
    }
    trace("qemu: launcher returned");
    const pid = readPid(paths.pidFile);
    if (r.code !== 0 || !pid) {
      if (pid) await killAndWait(pid, `smolvm-${spec.vmId}`);
      removeCgroups(cg);
      rmSync(spec.runDir, { recursive: true, force: true });
      const why = r.stderr.trim() || `exit ${r.code}`;
      if (spec.incoming) {
        throw new SmolVMError(
          `cannot restore from ${spec.incoming}: the state file is corrupt or does not match (${why})`,
        );
      }
      throw new SmolVMError(`QEMU failed to start VM ${spec.vmId}: ${why}`);
    }
    spec.onStarted?.();
    const handle: VMHandle = {
      vmId: spec.vmId,
      pid,
      proxyPid: null,
      accel,
      agentSocket,
      controlSocket: paths.qmpSocket,
      ctlSocket: paths.ctlSocket,
      runDir: spec.runDir,
      boot: {
        kernelPath: spec.kernelPath,
        initrdPath: spec.initrdPath,
        hostname: spec.hostname,
        bootArgs: spec.bootArgs,
      },
      agentBinary: spec.agentBinary,
      ...(who ? { uid: who.uid, gid: who.gid } : {}),
      cgroups: cg,
      diskFds: spec.diskFormat === "qcow2",
      consoleLog: spec.logPath,
      exitPath: spec.exitPath ?? join(dirname(spec.logPath), "exit.json"),
      statusPath: join(dirname(spec.logPath), "vmm-status.json"),
    };
    if (spec.incoming && stateFd !== null) await this.waitIncoming(handle, spec, stateFd);
    try {
      const h = await this.startProxy(handle, !!spec.incoming);
      trace("qemu: proxy started");
      return h;
    } catch (e) {
      await this.kill(handle);
      throw e;
    }
  }

  /** Start the per-VM proxy (daemonized); it runs as the VM's identity once its sockets are open. */
  private async startProxy(h: VMHandle, releaseAll: boolean): Promise<VMHandle> {
    const paths = qemuPaths(h.runDir);
    const proxyPidFile = join(h.runDir, "proxy.pid");
    rmSync(proxyPidFile, { force: true });
    const p = await runHost(
      h.agentBinary ?? agentPath(),
      [
        "proxy",
        ...["--upstream", paths.channelSocket, "--listen", h.agentSocket, "--pidfile", proxyPidFile],
        ...["--log", join(h.runDir, "proxy.log"), "--daemon"],
        ...(h.consoleLog
          ? [
              "--console",
              paths.consoleSocket,
              "--console-log",
              h.consoleLog,
              "--console-max",
              String(CONSOLE_MAX_BYTES),
            ]
          : []),
        ...(h.exitPath ? ["--events", paths.eventsSocket, "--exit-file", h.exitPath] : []),
        ...(h.uid !== undefined && h.gid !== undefined ? ["--runas", `${h.uid}:${h.gid}`] : []),
        ...(releaseAll ? ["--release-all"] : []),
        // the guest's clock is set to the host's this often (SMOLVM_CLOCK_SYNC_MS; the proxy's default is 30 s)
        ...(process.env.SMOLVM_CLOCK_SYNC_MS ? ["--clock-sync", process.env.SMOLVM_CLOCK_SYNC_MS] : []),
      ],
      { timeoutMs: 15_000 },
    );
    const proxyPid = readPid(proxyPidFile); // written before the daemon's parent exits
    if (p.code !== 0 || !proxyPid) {
      throw new SmolVMError(`the agent proxy failed to start for VM ${h.vmId}: ${p.stderr.trim()}`);
    }
    return { ...h, proxyPid };
  }

  proxyAlive(h: VMHandle): boolean {
    return processAlive(h.proxyPid, h.agentSocket);
  }

  async restartProxy(h: VMHandle): Promise<VMHandle> {
    await killAndWait(h.proxyPid, h.agentSocket);
    return this.startProxy(h, true);
  }

  exitInfo(h: VMHandle): ExitInfo | null {
    return readExitInfo(h);
  }

  /** Load the incoming state and start the guest (unless startPaused); a bad state file fails here, naming it. */
  private async waitIncoming(h: VMHandle, spec: BootSpec, stateFd: number): Promise<void> {
    const file = spec.incoming as string;
    const deadline = Date.now() + 60_000;
    let q: QmpClient | null = null;
    try {
      q = await QmpClient.connect(h.controlSocket);
      trace("qemu: qmp connected");
      if (spec.ignoreShared) {
        await q.execute("migrate-set-capabilities", {
          capabilities: [{ capability: "x-ignore-shared", state: true }],
        });
      }
      // the descriptor QEMU was started with (a number: QEMU takes it as is, no `getfd`)
      await q.execute("migrate-incoming", { uri: `fd:${stateFd}` });
      trace("qemu: migration started");
      for (;;) {
        const mig = (await q.execute("query-migrate")) as { status?: string; "error-desc"?: string };
        if (mig.status === "failed")
          throw new SmolVMError(`restoring ${file} failed: ${mig["error-desc"] ?? "failed"}`);
        if (mig.status === "completed") {
          const st = (await q.execute("query-status")) as { status: string };
          trace("qemu: state loaded");
          if (spec.startPaused) return;
          if (spec.beforeRun) await spec.beforeRun().catch((e) => Promise.reject(new GateError(e)));
          trace("qemu: rules in place");
          if (st.status !== "running") await q.execute("cont");
          trace("qemu: cont");
          return;
        }
        if (Date.now() > deadline) throw new SmolVMError(`restoring ${file} did not finish within 60 s`);
        await sleep(2);
      }
    } catch (e) {
      if (e instanceof GateError) {
        await this.kill(h);
        throw e.cause;
      }
      // QEMU says why on its stderr (a device that does not match, a truncated stream): keep its last line
      let said = "";
      try {
        said = readFileSync(qemuPaths(h.runDir).logFile, "utf8").trim().split("\n").slice(-2).join("; ").slice(-400);
      } catch {
        // no log
      }
      await this.kill(h);
      if (e instanceof SmolVMError && e.message.startsWith("restoring")) throw e;
      throw new SmolVMError(
        `cannot restore from ${file}: the state file is corrupt or does not match this VM (${(e as Error).message}` +
          `${said ? `; QEMU: ${said}` : ""})`,
      );
    } finally {
      q?.close();
    }
  }

  async saveState(h: VMHandle, file: string, ramInFile: boolean): Promise<void> {
    const q = await QmpClient.connect(h.controlSocket);
    try {
      await q.execute("stop");
      await q.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: ramInFile }],
      });
      await migrateTo(q, h, file);
    } finally {
      q.close();
    }
  }

  async snapshot(
    h: VMHandle,
    disk: { path: string; vmDir: string },
    dir: string,
    leavePaused: boolean,
    onSwitched: (newDiskPath: string) => void,
  ): Promise<SnapshotResult> {
    const qemuImg = which("qemu-img");
    if (!qemuImg) throw new SmolVMError("qemu-img not found; run 'npx smolvm setup'");
    const q = await QmpClient.connect(h.controlSocket);
    const diskFile = join(dir, "disk.qcow2");
    const memFile = join(dir, "mem.bin");
    let moved = false;
    let switched = false;
    let next = "";
    let wasRunning = false;
    try {
      // (this process is QEMU's only QMP client until it is done: nothing changes the block graph meanwhile)
      const blocks = (await q.execute("query-block")) as {
        device: string;
        inserted?: { "node-name": string; image: { "virtual-size": number } };
      }[];
      const root = blocks.find((b) => b.device === "root")?.inserted;
      if (!root) throw new SmolVMError("the VM has no root disk to snapshot");
      // The current top layer becomes the snapshot's: a hard link, not a move (QEMU reopens it read-only by its
      // path below). The new top layer names the snapshot's link as its backing file, so every layer's header
      // points into snapshot folders and deleting the source VM breaks no chain. Both are made while the VM still
      // runs (the new layer is empty and not opened yet): its pause is shorter by a process start.
      linkSync(disk.path, diskFile);
      moved = true;
      next = join(disk.vmDir, `disk-${Date.now()}.qcow2`);
      await mustRun(qemuImg, [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "qcow2",
        "-b",
        diskFile,
        next,
        String(root.image["virtual-size"]),
      ]);
      wasRunning = ((await q.execute("query-status")) as { status: string }).status === "running";
      if (wasRunning) await q.execute("stop");
      trace("snapshot: stopped");
      const node = `top${Date.now()}`;
      await q.execute("blockdev-add", {
        driver: "qcow2",
        "node-name": node,
        file: await newLayerNode(q, h, next),
        backing: null,
      });
      await q.execute("blockdev-snapshot", { node: root["node-name"], overlay: node });
      switched = true; // the VM now writes to `next`
      onSwitched(next);
      // a VM restored from a fast image still has x-ignore-shared on, which would change the stream's format
      await q.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: false }],
      });
      trace("snapshot: new layer on");
      await migrateTo(q, h, memFile);
      trace("snapshot: state written");
      return { diskFile, memFile, newDiskPath: next };
    } catch (e) {
      if (moved && !switched) {
        rmSync(diskFile, { force: true }); // nothing changed for the VM
        if (next) rmSync(next, { force: true });
      }
      throw e;
    } finally {
      try {
        if (wasRunning && !leavePaused) await q.execute("cont");
      } finally {
        q.close();
      }
    }
  }

  async splitState(
    stateFile: string,
    out: { ramPath: string; ramBytes: number; restPath: string },
  ): Promise<SplitInfo | null> {
    try {
      const r = await inWorker({
        op: "split",
        streamPath: stateFile,
        out: { block: "ram0", ramPath: out.ramPath, ramBytes: out.ramBytes, strippedPath: out.restPath },
      });
      return { ...r.join };
    } catch (e) {
      if (e instanceof UnsupportedStreamError) return null;
      throw e;
    }
  }

  async joinState(
    split: { ramPath: string; ramBytes: number; restPath: string; info: SplitInfo },
    outFile: string,
  ): Promise<void> {
    const at = split.info as unknown as RamJoinPoint;
    if (!Number.isInteger(at.offset) || !Number.isInteger(at.sectionId) || typeof at.footers !== "boolean") {
      throw new SmolVMError(`cannot rebuild the state from ${split.restPath}: its split record is damaged`);
    }
    await inWorker({
      op: "join",
      strippedPath: split.restPath,
      ram: { block: "ram0", path: split.ramPath, bytes: split.ramBytes },
      at: { offset: at.offset, sectionId: at.sectionId, footers: at.footers },
      outPath: outFile,
    });
  }

  async pause(h: VMHandle, opts: { resumeSoon?: boolean } = {}): Promise<void> {
    if (opts.resumeSoon) await stopAndHold(h.controlSocket);
    else await qmpOnce(h.controlSocket, "stop");
  }

  async resume(h: VMHandle): Promise<void> {
    await contReleasing(h.controlSocket);
  }

  async kill(h: VMHandle): Promise<void> {
    releaseHeld(h.controlSocket);
    await endVmmProcesses(h, `smolvm-${h.vmId}`, this.isAlive(h));
    rmSync(h.runDir, { recursive: true, force: true });
  }

  isAlive(h: VMHandle): boolean {
    return processAlive(h.pid, `smolvm-${h.vmId}`);
  }

  agentChannel(h: VMHandle): string {
    checkPrivateDir(dirname(h.agentSocket)); // nobody else may have swapped the socket
    return h.agentSocket;
  }
}
