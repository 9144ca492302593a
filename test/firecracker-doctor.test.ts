/** `doctor --backend firecracker --json` says exactly why Firecracker is unavailable on this host. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cli } from "./helpers.js";

interface Report {
  ok: boolean;
  kvm: { usable: boolean; reason: string };
  checks: { name: string; status: string; detail: string }[];
}

async function doctor(env: Record<string, string>): Promise<{ report: Report; fc: Report["checks"][number] }> {
  const r = await cli(["doctor", "--backend", "firecracker", "--json"], { env, timeoutMs: 120_000 });
  const report = JSON.parse(r.stdout) as Report;
  const fc = report.checks.find((c) => c.name === "firecracker");
  assert.ok(fc, "a firecracker check");
  return { report, fc };
}

describe("doctor --backend firecracker", () => {
  it("names each reason: the binary (and where it looked), KVM, and this release", async () => {
    const { report, fc } = await doctor({ SMOLVM_FIRECRACKER_BIN: "/nonexistent/firecracker" });
    assert.equal(report.ok, false);
    assert.equal(fc.status, "fail");
    assert.match(fc.detail, /SMOLVM_FIRECRACKER_BIN=\/nonexistent\/firecracker does not exist/);
    assert.match(fc.detail, /not yet its backend/);
    if (report.kvm.usable) assert.doesNotMatch(fc.detail, /KVM cannot run/);
    else assert.ok(fc.detail.includes(`KVM cannot run a guest here (${report.kvm.reason})`), fc.detail);
  });

  it("with a binary present, the binary is no longer a reason", async () => {
    const { fc } = await doctor({ SMOLVM_FIRECRACKER_BIN: process.execPath });
    assert.doesNotMatch(fc.detail, /binary|SMOLVM_FIRECRACKER_BIN/);
    assert.match(fc.detail, /not yet its backend/);
  });
});
