import { existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { SmolVMError } from "../../errors.js";
import { ensurePrivateDir } from "../../paths.js";
import { killAndWait, processAlive, waitFor } from "../../util/proc.js";
import { mustRun, runHost, which } from "../../util/run.js";
import type { Backend, BootSpec, DiskSpec, VMHandle } from "../types.js";
import { resolveAccel } from "./accel.js";
import { buildQemuArgs } from "./args.js";
import { requireQemu } from "./binary.js";
import { qmpOnce } from "./qmp.js";

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
    if (spec.mode === "shared") return { path: spec.base, format: "raw" };
    const overlay = join(spec.vmDir, "disk.qcow2");
    if (existsSync(overlay)) return { path: overlay, format: "qcow2" }; // a stopped VM keeps its layer
    const qemuImg = which("qemu-img");
    if (!qemuImg) throw new SmolVMError("qemu-img not found; run 'npx smolvm setup' (package qemu-utils)");
    mkdirSync(spec.vmDir, { recursive: true });
    await mustRun(qemuImg, ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", spec.base, overlay]);
    return { path: overlay, format: "qcow2" };
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
    const r = await runHost(qemu, buildQemuArgs(spec, accel, paths), { timeoutMs: 30_000 });
    const pid = readPid(paths.pidFile);
    if (r.code !== 0 || !pid) {
      throw new SmolVMError(`QEMU failed to start VM ${spec.vmId}: ${r.stderr.trim() || `exit ${r.code}`}`);
    }
    const handle: VMHandle = {
      vmId: spec.vmId,
      pid,
      proxyPid: null,
      accel,
      agentSocket,
      controlSocket: paths.qmpSocket,
      runDir: spec.runDir,
    };
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
      ],
      { timeoutMs: 10_000 },
    );
    await waitFor(() => existsSync(proxyPidFile), 2000, 2);
    handle.proxyPid = readPid(proxyPidFile);
    if (p.code !== 0 || !handle.proxyPid) {
      await this.kill(handle);
      throw new SmolVMError(`the agent proxy failed to start for VM ${spec.vmId}: ${p.stderr.trim()}`);
    }
    return handle;
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
