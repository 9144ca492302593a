/**
 * Moving a VM's state in and out of QEMU, and putting a new disk layer under a running VM. QEMU runs unprivileged
 * and cannot spawn (`-sandbox spawn=deny`), so it never opens a path itself: SmolVM opens the file and hands the
 * descriptor over the VM's second monitor (`getfd` + `fd:` migration, `add-fd` + `/dev/fdset/N` for disks), or at
 * the VMM's start (a restore's state file).
 */
import { closeSync, openSync } from "node:fs";
import { SmolVMError } from "../../errors.js";
import { agentPath } from "../../images/agent-build.js";
import { sleep } from "../../util/proc.js";
import type { VMHandle } from "../types.js";
import type { QmpClient } from "./qmp.js";
import { qmpWithFds } from "./qmp-fd.js";

const shellQuote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
const agentOf = (h: VMHandle) => h.agentBinary ?? agentPath();

/**
 * Start migrating out to `file` (created 0600 and new) through a descriptor SmolVM opened. A VM started before
 * confinement opens the path itself through `exec:`. (A restore gets its state file as a descriptor at start:
 * backend.ts.)
 */
async function startMigrationOut(q: QmpClient, h: VMHandle, file: string): Promise<void> {
  if (!h.ctlSocket) {
    await q.execute("migrate", { uri: `exec:cat > ${shellQuote(file)}` });
    return;
  }
  const fd = openSync(file, "wx", 0o600);
  try {
    await qmpWithFds(agentOf(h), h.ctlSocket, [
      { execute: "getfd", arguments: { fdname: "migout" }, fd },
      { execute: "migrate", arguments: { uri: "fd:migout" } },
    ]);
  } finally {
    closeSync(fd);
  }
}

/** Migrate to a file and wait for the end. */
export async function migrateTo(q: QmpClient, h: VMHandle, file: string): Promise<void> {
  // QEMU caps migration at 128 MiB/s by default, meant for a live guest on a network; this is a stopped guest
  // going to a local file
  await q.execute("migrate-set-parameters", { "max-bandwidth": 64 * 1024 ** 3 });
  await startMigrationOut(q, h, file);
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

/** The block node to add for a new top layer `file`: by descriptors when the VM's disk came that way. */
export async function newLayerNode(q: QmpClient, h: VMHandle, file: string): Promise<Record<string, unknown>> {
  if (!h.diskFds || !h.ctlSocket) return { driver: "file", filename: file };
  const sets = (await q.execute("query-fdsets")) as { "fdset-id": number }[];
  const id = Math.max(1, ...sets.map((s) => s["fdset-id"])) + 1;
  const rw = openSync(file, "r+");
  const ro = openSync(file, "r");
  try {
    await qmpWithFds(agentOf(h), h.ctlSocket, [
      { execute: "add-fd", arguments: { "fdset-id": id, opaque: "rw" }, fd: rw },
      { execute: "add-fd", arguments: { "fdset-id": id, opaque: "ro" }, fd: ro },
    ]);
  } finally {
    closeSync(rw);
    closeSync(ro);
  }
  return { driver: "file", filename: `/dev/fdset/${id}`, locking: "off" };
}
