/** Zod schemas shared by the MCP tools (arguments and structured results), and the sandbox summary they return. */
import { z } from "zod";
import type { SmolVM, VMInfo } from "../../sandbox/smolvm.js";

export const SandboxId = z
  .string()
  .min(1)
  .max(128)
  .describe("The sandbox's id, as create_sandbox, fork_sandbox or list_sandboxes returned it");

export const GuestPath = z
  .string()
  .min(1)
  .max(4095)
  .describe("Absolute path in the sandbox, e.g. /root/main.py (a relative path is taken from /)");

export const LifetimeSeconds = z
  .number()
  .int()
  .min(1)
  .max(366 * 86_400)
  .describe(
    "Seconds until the sandbox is deleted automatically (default: the server's, usually 15-30 minutes). It is also deleted when this MCP session ends",
  );

export const SandboxSummary = z.object({
  sandbox_id: z.string(),
  status: z.string().describe("running, paused, stopped, crashed, ..."),
  image: z.string(),
  memory_mib: z.number(),
  vcpu_count: z.number(),
  labels: z.record(z.string(), z.string()),
  created_at: z.string(),
  expires_at: z.string().nullable().describe("When its lifetime ends and it is deleted (ISO time)"),
  network: z.string().optional().describe("none, user or tap"),
  internet: z.unknown().optional().describe("open, off, or the allow lists"),
});
export type SandboxSummary = z.infer<typeof SandboxSummary>;

export function summary(info: VMInfo, vm?: SmolVM): SandboxSummary {
  const out: SandboxSummary = {
    sandbox_id: info.vmId,
    status: info.status,
    image: info.image,
    memory_mib: info.memSizeMib,
    vcpu_count: info.vcpuCount,
    labels: info.labels,
    created_at: info.createdAt,
    expires_at: info.expiresAt,
  };
  if (vm) {
    out.network = vm.config.network.mode;
    out.internet = vm.config.network.internet;
  }
  return out;
}

export function summaryLine(s: SandboxSummary): string {
  const net = s.network
    ? `, network ${s.network}${s.network === "none" ? "" : ` (internet: ${JSON.stringify(s.internet)})`}`
    : "";
  return `${s.sandbox_id}: ${s.status}, image ${s.image}, ${s.memory_mib} MiB, ${s.vcpu_count} vCPU${net}, expires ${s.expires_at ?? "never"}`;
}
