/**
 * The Firecracker backend: one `firecracker` process per VM (under the `jailer` when its binary is present and
 * SmolVM runs as root), configured over its API socket (api.ts, with the request sequences of sequence.ts), the
 * guest agent reached over vsock by the same proxy QEMU VMs use (`smolvm-agent proxy --vsock-port`), the serial
 * console read from Firecracker's stdout through a FIFO into the same capped log.
 *
 * Disks: Firecracker reads raw files only, so an isolated VM gets a sparse (reflinked where the file system can)
 * raw copy of its base, converted from qcow2 when the base is a QEMU snapshot's or a pack's layer; a snapshot copies
 * the paused VM's disk beside its memory. docs/FIRECRACKER.md says what this costs against QEMU's qcow2 layers.
 */
import {
  accessSync,
  chmodSync,
  chownSync,
  constants,
  existsSync,
  linkSync,
  mkdirSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { copyFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import type { AccelName } from "../../config.js";
import { BackendUnavailableError, ConfigError, SmolVMError } from "../../errors.js";
import { ensureVmlinux } from "../../images/vmlinux.js";
import { checkPrivateDir, ensurePrivateDir } from "../../paths.js";
import { killAndWait, processAlive, sleep } from "../../util/proc.js";
import { mustRun, runHost, which } from "../../util/run.js";
import { trace } from "../../util/trace.js";
import { createVmCgroups, limitsFor, removeCgroups } from "../cgroups.js";
import { readExitInfo } from "../exit-info.js";
import { idleArgs } from "../qemu/args.js";
import { vmmIdentity } from "../qemu/vmm-user.js";
import type { Backend, BootSpec, DiskSpec, ExitInfo, SnapshotResult, SplitInfo, VMHandle } from "../types.js";
import { endVmmProcesses, readPid } from "../vmm-process.js";
import { FirecrackerClient } from "./api.js";
import {
  checkFirecrackerVersion,
  compareSemver,
  firecrackerBinary,
  firecrackerVersion,
  jailerBinary,
} from "./binary.js";
import { AGENT_VSOCK_PORT, bootSequence, JAIL_NAMES, restoreSequence, snapshotSequence } from "./sequence.js";
import { createPersistentTap, removeTap } from "./tap.js";
import { connectVsock } from "./vsock.js";

/** Console log size at which the proxy keeps only the newest half (as on QEMU). */
const CONSOLE_MAX_BYTES = 1 << 20;
/** Where a snapshot's device state goes: beside its memory file. */
export const stateFileOf = (memFile: string) => `${memFile}.vmstate`;
/** Names of a snapshot being written or loaded, inside the VM's folder. */
const SNAP = { state: "snap.vmstate", mem: "snap.mem" };

/** Firecracker's `--id` (and the jailer's): letters, digits and '-', at most 64. */
export const fcId = (vmId: string) => `smolvm-${vmId.replace(/[^A-Za-z0-9-]/g, "-")}`.slice(0, 64);
/** What its process's command line holds, whole (`--id X` must not match `--id X2`): the liveness marker. */
const marker = (vmId: string) => `--id\0${fcId(vmId)}\0`;
/** The MMIO address of Firecracker's boot timer device (x86_64): moved in v1.13.0. */
export const bootTimerAddress = (version: string) =>
  compareSemver(version, "1.13.0") >= 0 ? "0xc0000000" : "0xd0000000";

/** Kernel command line: what Firecracker's guests need (no PCI, its i8042 for reboot), then ours, then the user's. */
export function fcCmdline(spec: Pick<BootSpec, "hostname" | "bootArgs">, bootTimer: string | null = null): string {
  return [
    "console=ttyS0",
    "quiet",
    "reboot=k",
    "panic=1",
    "pci=off",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.dumbkbd",
    // what an idle guest stops doing (docs/DENSITY.md), as on QEMU under KVM
    ...idleArgs("kvm"),
    "smolvm.channel=vsock",
    `smolvm.hostname=${spec.hostname}`,
    ...(bootTimer ? [`smolvm.boot_timer=${bootTimer}`] : []),
    spec.bootArgs,
  ]
    .filter(Boolean)
    .join(" ");
}

/** The binary to run, checked: present and of a release this client speaks to. */
export function requireFirecracker(): { bin: string; version: string } {
  const bin = firecrackerBinary();
  if (!bin) {
    throw new BackendUnavailableError(
      "firecracker",
      "no firecracker binary (SMOLVM_FIRECRACKER_BIN, PATH, ~/.local/bin); install one with 'smolvm setup --firecracker PATH'",
    );
  }
  const version = firecrackerVersion(bin);
  const bad = version ? checkFirecrackerVersion(version) : `${bin} --version did not say its version`;
  if (bad || !version) throw new BackendUnavailableError("firecracker", bad ?? "unknown version");
  return { bin, version };
}

/** Copy a disk as a sparse raw file (reflinked where the file system can), converting a qcow2 chain. */
async function rawCopy(base: string, format: "raw" | "qcow2", out: string): Promise<void> {
  const tmp = `${out}.tmp-${process.pid}`;
  rmSync(tmp, { force: true });
  try {
    if (format === "qcow2") {
      const qemuImg = which("qemu-img");
      if (!qemuImg) throw new SmolVMError("qemu-img not found (package qemu-utils): it converts qcow2 disks to raw");
      await mustRun(qemuImg, ["convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k", base, tmp], {
        timeoutMs: 1_800_000,
      });
    } else {
      await mustRun("cp", ["--reflink=auto", "--sparse=always", base, tmp], { timeoutMs: 1_800_000 });
    }
    renameSync(tmp, out);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Put `file` into the VM's folder under `name`: a symlink when Firecracker is not chrooted (it resolves it itself);
 * under the jailer a hard link (same file system), else a copy, readable by the VM's identity (0644: the folders
 * above are SmolVM's alone). Only read-only files are staged so: a copy of a disk would lose the guest's writes.
 */
async function stage(file: string, dir: string, name: string, jailed: boolean): Promise<void> {
  const to = join(dir, name);
  rmSync(to, { force: true });
  if (!jailed) {
    symlinkSync(file, to);
    return;
  }
  try {
    linkSync(file, to);
  } catch {
    await copyFile(file, to);
  }
  chmodSync(to, 0o644);
}

export class FirecrackerBackend implements Backend {
  readonly kind = "firecracker" as const;
  readonly restoresDirectly = true;

  async prepareDisk(spec: DiskSpec): Promise<{ path: string; format: "raw" | "qcow2" }> {
    mkdirSync(spec.vmDir, { recursive: true, mode: 0o700 });
    const format = spec.baseFormat ?? "raw";
    if (spec.mode === "shared") {
      if (format !== "raw") {
        throw new ConfigError("diskMode", 'Firecracker reads raw disks only: "shared" needs a raw image, not a layer');
      }
      return { path: spec.base, format: "raw" };
    }
    const out = join(spec.vmDir, "disk.raw");
    if (existsSync(out)) return { path: out, format: "raw" }; // a stopped VM keeps its disk
    await rawCopy(spec.base, format, out);
    return { path: out, format: "raw" };
  }

  identity(): string {
    const { bin, version } = requireFirecracker();
    const st = statSync(bin);
    return `firecracker:${version}:${bin}:${st.size}:${st.mtimeMs}`;
  }

  /** KVM, always; fails when this host cannot run Firecracker at all (no binary, no usable /dev/kvm). */
  async resolveAccel(requested: AccelName): Promise<AccelName> {
    requireFirecracker();
    if (requested !== "auto" && requested !== "kvm") {
      throw new ConfigError("accel", `Firecracker runs on KVM only, not ${requested}`);
    }
    try {
      accessSync("/dev/kvm", constants.R_OK | constants.W_OK);
    } catch {
      throw new BackendUnavailableError("firecracker", "/dev/kvm is missing or not usable by this user");
    }
    return "kvm";
  }

  async boot(spec: BootSpec): Promise<VMHandle> {
    const { bin: found, version } = requireFirecracker();
    // the jailer names the chroot after the binary's real file name (a symlink is resolved)
    const bin = realpathSync(found);
    // Guest RAM in a file: Firecracker has none while running (its memory is anonymous), so a capture's RAM file
    // (`ram.share`) is written when the state is saved, and a restore maps a RAM file privately (copy-on-write).
    // A restore without one loads a snapshot as `snapshot()` wrote it: memory in `incoming`, state beside it.
    const restoreFiles = spec.incoming
      ? spec.ram && !spec.ram.share
        ? { mem: spec.ram.path, state: spec.incoming }
        : { mem: spec.incoming, state: stateFileOf(spec.incoming) }
      : null;
    const ramPath = spec.ram?.share ? spec.ram.path : undefined;
    if (spec.nic?.kind === "stream") {
      throw new ConfigError("network", 'Firecracker has TAP networking only: use network "tap" (or "none")');
    }
    const accel = await this.resolveAccel(spec.accel);
    const vmlinux = await ensureVmlinux(spec.kernelPath);
    ensurePrivateDir(spec.runDir);
    const vmDir = dirname(spec.logPath);
    const id = fcId(spec.vmId);
    const who = vmmIdentity(spec.runDir);
    const jailer = who ? jailerBinary(found) : null;
    if (jailer && dirname(spec.diskPath) !== vmDir) {
      // the disk must be linked into the chroot; the image itself (diskMode "shared") is not SmolVM's to hand over
      throw new ConfigError("diskMode", 'Firecracker under the jailer runs isolated disks only, not "shared"');
    }
    if (jailer && compareSemver(version, "1.13.0") < 0 && !basename(bin).includes("firecracker")) {
      throw new SmolVMError(`the jailer of Firecracker ${version} runs only a binary named *firecracker*, not ${bin}`);
    }
    const bootTimer = process.env.SMOLVM_FC_BOOT_TIMER === "1" ? bootTimerAddress(version) : null;
    const jailBase = jailer ? join(vmDir, "jail") : undefined;
    const dir = jailBase ? join(jailBase, basename(bin), id, "root") : join(vmDir, "fc");
    if (jailBase) rmSync(jailBase, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    if (!jailBase) mkdirSync(dir, { recursive: true, mode: 0o700 });
    const agentSocket = join(spec.runDir, "agent.sock");
    const api = join(spec.runDir, JAIL_NAMES.api);
    const vsock = join(spec.runDir, JAIL_NAMES.vsock);
    const fifo = join(spec.runDir, "console.fifo");
    const pidFile = join(spec.runDir, "firecracker.pid");
    for (const f of [agentSocket, api, vsock, fifo, pidFile, join(spec.runDir, "proxy.pid")])
      rmSync(f, { force: true });
    if (agentSocket.length > 107)
      throw new SmolVMError(`socket path too long (set SMOLVM_RUNTIME_DIR): ${agentSocket}`);
    // the sockets Firecracker makes in its folder, reached from the run dir by links (short paths for the host)
    symlinkSync(join(dir, JAIL_NAMES.api), api);
    symlinkSync(join(dir, JAIL_NAMES.vsock), vsock);
    let tap: string | undefined;
    const cg = createVmCgroups(basename(spec.runDir), limitsFor(spec.memSizeMib, spec.vcpuCount)).dirs;
    const statusPath = join(vmDir, "vmm-status.json");
    let pid: number | null = null;
    const fail = async (e: unknown): Promise<never> => {
      if (pid) await killAndWait(pid, marker(spec.vmId));
      removeCgroups(cg);
      if (tap) await removeTap(tap).catch(() => {});
      rmSync(spec.runDir, { recursive: true, force: true });
      rmSync(jailBase ?? dir, { recursive: true, force: true });
      throw e;
    };
    try {
      if (spec.nic?.kind === "tap") {
        if (spec.nic.create) {
          await createPersistentTap(spec.nic.tap, jailer ? who : null, spec.nic.create);
          tap = spec.nic.tap;
        }
      } else if (spec.nic?.kind === "dummy") {
        // state saved with a NIC loads only into a VM with one: a TAP connected to nothing
        tap = `smvd${id.slice(-10)}`.slice(0, 15);
        await createPersistentTap(tap, jailer ? who : null, null);
      }
      if (!jailBase) {
        await stage(vmlinux, dir, JAIL_NAMES.kernel, false);
        await stage(spec.initrdPath, dir, JAIL_NAMES.initrd, false);
        await stage(spec.diskPath, dir, JAIL_NAMES.disk, false);
      }
      // its log goes to its stdout, the console FIFO (Info: the boot timer's line is an Info one)
      const fcArgs = ["--api-sock", JAIL_NAMES.api, "--level", bootTimer ? "Info" : "Warning"];
      if (bootTimer) fcArgs.push("--boot-timer");
      const prog =
        jailer && who && jailBase
          ? [
              jailer,
              ...["--id", id, "--exec-file", bin, "--uid", String(who.uid), "--gid", String(who.gid)],
              ...["--chroot-base-dir", jailBase],
              "--",
              ...fcArgs,
            ]
          : [bin, "--id", id, ...fcArgs];
      if (jailBase) mkdirSync(jailBase, { recursive: true, mode: 0o711 });
      trace("firecracker: launcher spawn");
      const r = await runHost(
        spec.agentBinary,
        [
          "launch",
          ...["--log", join(spec.runDir, "vmm.log"), "--ready-connect", api, "--pidfile", pidFile],
          ...["--status-file", statusPath, "--timeout", "30000", "--stdout-fifo", fifo],
          ...(jailBase ? [] : ["--chdir", dir]),
          ...(spec.lease
            ? ["--lease", spec.lease.path, "--on-expire", String(spec.lease.onExpire.length), ...spec.lease.onExpire]
            : []),
          ...cg.flatMap((d) => ["--cgroup", d]),
          // without a NIC it needs no network: a namespace of its own (with one, its TAP is in the host's)
          ...(!spec.nic && !jailBase && process.getuid?.() === 0 ? ["--isolate"] : []),
          "--",
          ...prog,
        ],
        { timeoutMs: 40_000 },
      );
      pid = readPid(pidFile);
      if (r.code !== 0 || !pid)
        throw new SmolVMError(`Firecracker failed to start VM ${spec.vmId}: ${r.stderr.trim()}`);
      trace("firecracker: up");
      if (jailBase && who) {
        // the jailer made the chroot; Firecracker (as the VM's identity) opens what it is given there
        await stage(vmlinux, dir, JAIL_NAMES.kernel, true);
        await stage(spec.initrdPath, dir, JAIL_NAMES.initrd, true);
        // the VM's own disk (checked above): a hard link, never a copy, writable by the VM's identity
        linkSync(spec.diskPath, join(dir, JAIL_NAMES.disk));
        chownSync(join(dir, JAIL_NAMES.disk), who.uid, who.gid);
        chownSync(dir, who.uid, who.gid);
      }
      const fc = new FirecrackerClient(api);
      if (restoreFiles) {
        // under the jailer, links into the chroot; else symlinks (a template's RAM file in the data dir is then
        // mapped where it is, shared by every clone, whatever the file systems)
        await stage(restoreFiles.mem, dir, SNAP.mem, !!jailBase);
        await stage(restoreFiles.state, dir, SNAP.state, !!jailBase);
        spec.onStarted?.();
        await restoreSequence(fc, { statePath: SNAP.state, memPath: SNAP.mem, tap });
        rmSync(join(dir, SNAP.state), { force: true }); // read; the memory file stays mapped
        trace("firecracker: state loaded");
        if (!spec.startPaused) {
          if (spec.beforeRun) await spec.beforeRun();
          await fc.resumeVm();
        }
      } else {
        spec.onStarted?.();
        await bootSequence(fc, {
          vcpuCount: spec.vcpuCount,
          memSizeMib: spec.memSizeMib,
          bootArgs: fcCmdline(spec, bootTimer),
          readOnly: false,
          ...(tap && spec.nic ? { tap: { name: tap, mac: spec.nic.mac } } : {}),
        });
      }
      // the proxy drops to the VM's identity and may have to connect again (after a snapshot): the socket is its
      if (who && !jailBase) chownSync(join(dir, JAIL_NAMES.vsock), who.uid, who.gid);
      trace("firecracker: started");
    } catch (e) {
      return fail(e);
    }
    const handle: VMHandle = {
      vmId: spec.vmId,
      pid,
      proxyPid: null,
      accel,
      agentSocket,
      controlSocket: api,
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
      consoleLog: spec.logPath,
      exitPath: spec.exitPath ?? join(vmDir, "exit.json"),
      statusPath,
      fc: { dir, ...(jailBase ? { jailBase } : {}), ...(tap ? { tap } : {}), ...(ramPath ? { ramPath } : {}) },
    };
    try {
      if (!spec.startPaused) await this.waitAgent(handle);
      return await this.startProxy(handle, !!spec.incoming);
    } catch (e) {
      await this.kill(handle);
      throw e;
    }
  }

  /**
   * Wait until the guest agent listens on its vsock port (the guest has booted), so the proxy connects at once.
   * Firecracker closes a host-initiated connection to a port nothing listens on; that is retried.
   */
  private async waitAgent(h: VMHandle): Promise<void> {
    const timeoutMs = Number(process.env.SMOLVM_BOOT_TIMEOUT_MS ?? 60_000);
    const deadline = Date.now() + timeoutMs;
    let last = "";
    while (Date.now() < deadline) {
      if (!this.isAlive(h)) throw new SmolVMError(`Firecracker ended while VM ${h.vmId} booted`);
      try {
        const s = await connectVsock(join(h.runDir, JAIL_NAMES.vsock), AGENT_VSOCK_PORT, { timeoutMs: 2000 });
        s.socket.destroy();
        return;
      } catch (e) {
        last = (e as Error).message;
        await sleep(10);
      }
    }
    throw new SmolVMError(`the guest agent of VM ${h.vmId} did not listen on vsock within ${timeoutMs} ms (${last})`);
  }

  /** The per-VM proxy (daemonized), connected to the agent over Firecracker's vsock socket. */
  private async startProxy(h: VMHandle, releaseAll: boolean): Promise<VMHandle> {
    const proxyPidFile = join(h.runDir, "proxy.pid");
    rmSync(proxyPidFile, { force: true });
    const p = await runHost(
      h.agentBinary as string,
      [
        "proxy",
        ...["--upstream", join(h.runDir, JAIL_NAMES.vsock), "--vsock-port", String(AGENT_VSOCK_PORT)],
        ...["--listen", h.agentSocket, "--pidfile", proxyPidFile, "--log", join(h.runDir, "proxy.log"), "--daemon"],
        ...(h.consoleLog ? ["--console-fifo", join(h.runDir, "console.fifo"), "--console-log", h.consoleLog] : []),
        ...["--console-max", String(CONSOLE_MAX_BYTES)],
        ...(h.exitPath ? ["--exit-file", h.exitPath] : []),
        ...(h.uid !== undefined && h.gid !== undefined ? ["--runas", `${h.uid}:${h.gid}`] : []),
        ...(releaseAll ? ["--release-all"] : []),
        ...(process.env.SMOLVM_CLOCK_SYNC_MS ? ["--clock-sync", process.env.SMOLVM_CLOCK_SYNC_MS] : []),
      ],
      { timeoutMs: 15_000 },
    );
    const proxyPid = readPid(proxyPidFile);
    if (p.code !== 0 || !proxyPid) {
      throw new SmolVMError(`the agent proxy failed to start for VM ${h.vmId}: ${p.stderr.trim()}`);
    }
    return { ...h, proxyPid };
  }

  private client(h: VMHandle): FirecrackerClient {
    return new FirecrackerClient(h.controlSocket);
  }

  async pause(h: VMHandle): Promise<void> {
    await this.client(h).pauseVm();
  }

  async resume(h: VMHandle): Promise<void> {
    await this.client(h).resumeVm();
  }

  /** Write a snapshot inside the VM's folder, then move its memory to `memFile` and its state to `stateFile`. */
  private async snapshotTo(
    h: VMHandle,
    memFile: string,
    running: boolean,
    stateFile = stateFileOf(memFile),
  ): Promise<void> {
    const dir = (h.fc as { dir: string }).dir;
    for (const f of Object.values(SNAP)) rmSync(join(dir, f), { force: true });
    await snapshotSequence(this.client(h), { statePath: SNAP.state, memPath: SNAP.mem, running });
    renameSync(join(dir, SNAP.mem), memFile);
    renameSync(join(dir, SNAP.state), stateFile);
    // SmolVM's from now on: under the jailer, clones (each its own identity) read them through hard links in their
    // chroots, and the identity that wrote them must not keep a hold on what every clone maps (the files stay in
    // SmolVM's private folders, so no one else reaches them)
    for (const f of [memFile, stateFile]) {
      if (process.getuid?.() === 0) chownSync(f, 0, 0);
      chmodSync(f, 0o644);
    }
  }

  async saveState(h: VMHandle, file: string, ramInFile: boolean): Promise<void> {
    const running = (await this.client(h).describeInstance()).state === "Running";
    if (!ramInFile) return this.snapshotTo(h, file, running);
    // a capture: the RAM goes to the file the VM was booted with as its RAM file, the device state to `file`
    const ram = h.fc?.ramPath;
    if (!ram) throw new SmolVMError(`VM ${h.vmId} was not booted with a RAM file to save its memory to`);
    await this.snapshotTo(h, ram, running, file);
  }

  async snapshot(
    h: VMHandle,
    disk: { path: string; vmDir: string },
    dir: string,
    leavePaused: boolean,
  ): Promise<SnapshotResult> {
    const fc = this.client(h);
    const running = (await fc.describeInstance()).state === "Running";
    const memFile = join(dir, "mem.bin");
    const diskFile = join(dir, "disk.raw");
    try {
      await this.snapshotTo(h, memFile, running);
      // the guest is paused: its disk is consistent with the memory just written
      await rawCopy(disk.path, "raw", diskFile);
      return { diskFile, memFile, newDiskPath: disk.path };
    } catch (e) {
      for (const f of [memFile, stateFileOf(memFile), diskFile]) rmSync(f, { force: true });
      throw e;
    } finally {
      if (running && !leavePaused) await fc.resumeVm();
    }
  }

  async splitState(): Promise<SplitInfo | null> {
    return null; // a Firecracker memory file is loaded as it is (mapped copy-on-write)
  }

  async joinState(): Promise<void> {
    throw new SmolVMError("Firecracker snapshots are never split");
  }

  async kill(h: VMHandle): Promise<void> {
    await endVmmProcesses(h, marker(h.vmId), this.isAlive(h));
    if (h.fc?.tap) await removeTap(h.fc.tap).catch(() => {});
    rmSync(h.runDir, { recursive: true, force: true });
    if (h.fc) rmSync(h.fc.jailBase ?? h.fc.dir, { recursive: true, force: true });
  }

  isAlive(h: VMHandle): boolean {
    return processAlive(h.pid, marker(h.vmId));
  }

  agentChannel(h: VMHandle): string {
    checkPrivateDir(dirname(h.agentSocket));
    return h.agentSocket;
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
}
