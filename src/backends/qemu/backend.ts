import { existsSync, linkSync, mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { AccelName } from "../../config.js";
import { SmolVMError } from "../../errors.js";
import { ensurePrivateDir } from "../../paths.js";
import { killAndWait, processAlive, sleep } from "../../util/proc.js";
import { mustRun, runHost, which } from "../../util/run.js";
import type { Backend, BootSpec, DiskSpec, SnapshotResult, SplitInfo, VMHandle } from "../types.js";
import { resolveAccel } from "./accel.js";
import { buildQemuArgs } from "./args.js";
import { requireQemu } from "./binary.js";
import { QmpClient, qmpOnce } from "./qmp.js";
import { inWorker, type RamJoinPoint, UnsupportedStreamError } from "./ram-split.js";

const shellQuote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

function readPid(file: string): number | null {
  try {
    const n = Number.parseInt(readFileSync(file, "utf8").trim(), 10);
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

export class QemuBackend implements Backend {
  readonly kind = "qemu" as const;

  async prepareDisk(spec: DiskSpec): Promise<{ path: string; format: "raw" | "qcow2" }> {
    if (spec.mode === "shared") return { path: spec.base, format: spec.baseFormat ?? "raw" };
    const overlay = join(spec.vmDir, "disk.qcow2");
    if (existsSync(overlay)) return { path: overlay, format: "qcow2" }; // a stopped VM keeps its layer
    const qemuImg = which("qemu-img");
    if (!qemuImg) throw new SmolVMError("qemu-img not found; run 'npx smolvm setup' (package qemu-utils)");
    mkdirSync(spec.vmDir, { recursive: true });
    await mustRun(qemuImg, ["create", "-q", "-f", "qcow2", "-F", spec.baseFormat ?? "raw", "-b", spec.base, overlay]);
    return { path: overlay, format: "qcow2" };
  }

  identity(): string {
    const q = requireQemu();
    const st = statSync(q);
    return `qemu:${q}:${st.size}:${st.mtimeMs}`;
  }

  resolveAccel(requested: AccelName, image: { kernelPath: string; initrdPath: string }): Promise<AccelName> {
    return resolveAccel(requested, requireQemu(), image);
  }

  async boot(spec: BootSpec): Promise<VMHandle> {
    const qemu = requireQemu();
    const accel = await resolveAccel(spec.accel, qemu, spec);
    ensurePrivateDir(spec.runDir);
    const paths = {
      qmpSocket: join(spec.runDir, "qmp.sock"),
      channelSocket: join(spec.runDir, "channel.sock"),
      pidFile: join(spec.runDir, "qemu.pid"),
    };
    const agentSocket = join(spec.runDir, "agent.sock");
    const proxyPidFile = join(spec.runDir, "proxy.pid");
    for (const f of [...Object.values(paths), agentSocket, proxyPidFile]) rmSync(f, { force: true });
    if (agentSocket.length > 107)
      throw new SmolVMError(`socket path too long (set SMOLVM_RUNTIME_DIR): ${agentSocket}`);
    const args = buildQemuArgs(spec, accel, paths);
    if (spec.incoming) args.push("-incoming", "defer");
    const r = await runHost(qemu, args, { timeoutMs: 30_000 });
    const pid = readPid(paths.pidFile);
    if (r.code !== 0 || !pid) {
      if (pid) await killAndWait(pid, `smolvm-${spec.vmId}`);
      rmSync(spec.runDir, { recursive: true, force: true });
      const why = r.stderr.trim() || `exit ${r.code}`;
      if (spec.incoming) {
        throw new SmolVMError(
          `cannot restore from ${spec.incoming}: the state file is corrupt or does not match (${why})`,
        );
      }
      throw new SmolVMError(`QEMU failed to start VM ${spec.vmId}: ${why}`);
    }
    const handle: VMHandle = {
      vmId: spec.vmId,
      pid,
      proxyPid: null,
      accel,
      agentSocket,
      controlSocket: paths.qmpSocket,
      runDir: spec.runDir,
      boot: {
        kernelPath: spec.kernelPath,
        initrdPath: spec.initrdPath,
        hostname: spec.hostname,
        bootArgs: spec.bootArgs,
      },
    };
    if (spec.incoming) await this.waitIncoming(handle, spec);
    const p = await runHost(
      spec.agentBinary,
      [
        "proxy",
        "--upstream",
        paths.channelSocket,
        "--listen",
        agentSocket,
        "--pidfile",
        proxyPidFile,
        "--log",
        join(spec.runDir, "proxy.log"),
        "--daemon",
        ...(spec.incoming ? ["--release-all"] : []),
      ],
      { timeoutMs: 10_000 },
    );
    handle.proxyPid = readPid(proxyPidFile); // written before the daemon's parent exits
    if (p.code !== 0 || !handle.proxyPid) {
      await this.kill(handle);
      throw new SmolVMError(`the agent proxy failed to start for VM ${spec.vmId}: ${p.stderr.trim()}`);
    }
    return handle;
  }

  /** Load the incoming state and start the guest (unless startPaused); a bad state file fails here, naming it. */
  private async waitIncoming(h: VMHandle, spec: BootSpec): Promise<void> {
    const file = spec.incoming as string;
    const deadline = Date.now() + 60_000;
    let q: QmpClient | null = null;
    try {
      q = await QmpClient.connect(h.controlSocket);
      if (spec.ignoreShared) {
        await q.execute("migrate-set-capabilities", {
          capabilities: [{ capability: "x-ignore-shared", state: true }],
        });
      }
      await q.execute("migrate-incoming", { uri: `exec:cat ${shellQuote(file)}` });
      for (;;) {
        const mig = (await q.execute("query-migrate")) as { status?: string; "error-desc"?: string };
        if (mig.status === "failed")
          throw new SmolVMError(`restoring ${file} failed: ${mig["error-desc"] ?? "failed"}`);
        if (mig.status === "completed") {
          const st = (await q.execute("query-status")) as { status: string };
          if (spec.startPaused) return;
          if (st.status !== "running") await q.execute("cont");
          return;
        }
        if (Date.now() > deadline) throw new SmolVMError(`restoring ${file} did not finish within 60 s`);
        await sleep(2);
      }
    } catch (e) {
      await this.kill(h);
      if (e instanceof SmolVMError && e.message.startsWith("restoring")) throw e;
      throw new SmolVMError(
        `cannot restore from ${file}: the state file is corrupt or does not match this VM (${(e as Error).message})`,
      );
    } finally {
      q?.close();
    }
  }

  /** Migrate to a file and wait for the end. */
  private async migrateTo(q: QmpClient, file: string): Promise<void> {
    // QEMU caps migration at 128 MiB/s by default, meant for a live guest on a network; this is a stopped guest
    // going to a local file
    await q.execute("migrate-set-parameters", { "max-bandwidth": 64 * 1024 ** 3 });
    await q.execute("migrate", { uri: `exec:cat > ${shellQuote(file)}` });
    for (const deadline = Date.now() + 120_000; ; ) {
      const mig = (await q.execute("query-migrate")) as { status?: string; "error-desc"?: string };
      if (mig.status === "completed") {
        // "completed" is reported a moment before the VM leaves finish-migrate, and until then it refuses `cont`
        while (((await q.execute("query-status")) as { status: string }).status === "finish-migrate") {
          if (Date.now() > deadline) throw new SmolVMError("the VM did not leave finish-migrate after saving");
          await sleep(1);
        }
        return;
      }
      if (mig.status === "failed" || mig.status === "cancelled") {
        throw new SmolVMError(`saving the VM's state failed: ${mig["error-desc"] ?? mig.status}`);
      }
      if (Date.now() > deadline) throw new SmolVMError("saving the VM's state took over 120 s");
      await sleep(2);
    }
  }

  async saveState(h: VMHandle, file: string, ramInFile: boolean): Promise<void> {
    const q = await QmpClient.connect(h.controlSocket);
    try {
      await q.execute("stop");
      await q.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: ramInFile }],
      });
      await this.migrateTo(q, file);
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
      wasRunning = ((await q.execute("query-status")) as { status: string }).status === "running";
      if (wasRunning) await q.execute("stop");
      const blocks = (await q.execute("query-block")) as {
        device: string;
        inserted?: { "node-name": string; image: { "virtual-size": number } };
      }[];
      const root = blocks.find((b) => b.device === "root")?.inserted;
      if (!root) throw new SmolVMError("the VM has no root disk to snapshot");
      // The current top layer becomes the snapshot's: a hard link, not a move (QEMU reopens it read-only by its
      // path below). The new top layer names the snapshot's link as its backing file, so every layer's header
      // points into snapshot folders and deleting the source VM breaks no chain.
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
      const node = `top${Date.now()}`;
      await q.execute("blockdev-add", {
        driver: "qcow2",
        "node-name": node,
        file: { driver: "file", filename: next },
        backing: null,
      });
      await q.execute("blockdev-snapshot", { node: root["node-name"], overlay: node });
      switched = true; // the VM now writes to `next`
      onSwitched(next);
      // a VM restored from a fast image still has x-ignore-shared on, which would change the stream's format
      await q.execute("migrate-set-capabilities", {
        capabilities: [{ capability: "x-ignore-shared", state: false }],
      });
      await this.migrateTo(q, memFile);
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

  async pause(h: VMHandle): Promise<void> {
    await qmpOnce(h.controlSocket, "stop");
  }

  async resume(h: VMHandle): Promise<void> {
    await qmpOnce(h.controlSocket, "cont");
  }

  async kill(h: VMHandle): Promise<void> {
    await killAndWait(h.pid, `smolvm-${h.vmId}`);
    await killAndWait(h.proxyPid, h.agentSocket);
    rmSync(h.runDir, { recursive: true, force: true });
  }

  isAlive(h: VMHandle): boolean {
    return processAlive(h.pid, `smolvm-${h.vmId}`);
  }

  agentChannel(h: VMHandle): string {
    return h.agentSocket;
  }
}
