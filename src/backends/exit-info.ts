import { readFileSync } from "node:fs";
import type { ExitInfo, VMHandle } from "./types.js";

/**
 * Why a VM ended, from what its proxy wrote (`exitPath`: a JSON line with the reason and the last VMM event) and what
 * the VMM's supervisor wrote (`statusPath`: exit code or signal). Both files are the host's own, but their text
 * passed through processes that parse guest input, so every field is checked and trimmed.
 */
export function readExitInfo(h: Pick<VMHandle, "exitPath" | "statusPath">): ExitInfo | null {
  const read = (file: string | undefined): Record<string, unknown> | null => {
    try {
      const text = file ? readFileSync(file, "utf8").slice(0, 4096).trim() : "";
      return text ? (JSON.parse(text) as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  };
  const proxy = read(h.exitPath);
  const vmm = read(h.statusPath);
  if (!proxy && !vmm) return null;
  const str = (v: unknown) => (typeof v === "string" ? v.replace(/[^\w .:-]/g, "").slice(0, 100) : "");
  const int = (v: unknown) => (typeof v === "number" && Number.isInteger(v) ? v : null);
  return {
    reason: str(proxy?.reason) || (vmm ? "vmm-exited" : "unknown"),
    event: str(proxy?.event),
    at: int(vmm?.at) ?? int(proxy?.at),
    code: int(vmm?.code),
    signal: int(vmm?.signal) || null,
  };
}
