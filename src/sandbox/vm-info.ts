/** What `list` and `status` show about a VM. */
import type { BackendKind } from "../backends/types.js";
import type { VMRecord, VMStatus } from "../state/store.js";

/** A summary of a VM, as `list` and `status` show it. */
export interface VMInfo {
  vmId: string;
  name: string | null;
  status: VMStatus;
  backend: BackendKind;
  accel: string | null;
  pid: number | null;
  vcpuCount: number;
  memSizeMib: number;
  diskMode: string;
  createdAt: string;
  error: string | null;
}

export function info(rec: VMRecord): VMInfo {
  return {
    vmId: rec.id,
    name: rec.name,
    status: rec.status,
    backend: rec.backend,
    accel: rec.handle?.accel ?? null,
    pid: rec.handle?.pid ?? null,
    vcpuCount: rec.config.vcpuCount,
    memSizeMib: rec.config.memSizeMib,
    diskMode: rec.config.diskMode,
    createdAt: rec.createdAt,
    error: rec.error,
  };
}
