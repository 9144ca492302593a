/** doctor and setup */
import type { Command } from "commander";
import type { BackendName } from "../config.js";
import { doctor } from "../doctor.js";
import { setup } from "../setup.js";
import { printJson, progress } from "./output.js";

const MARK = { ok: "ok  ", warn: "warn", fail: "FAIL", skip: "skip" } as const;

export function registerHost(program: Command): void {
  program
    .command("doctor")
    .description("check that this host can run VMs (KVM usable, QEMU, kernel, image)")
    .option("--backend <name>", "check for this backend: auto | firecracker | qemu")
    .option("--json", "print JSON")
    .option("--strict", "exit non-zero on any check that is not ok")
    .option("--probe", "re-run the KVM probe boot instead of using the cached verdict")
    .action(async (o: { backend?: string; json?: boolean; strict?: boolean; probe?: boolean }) => {
      const r = await doctor({ backend: o.backend as BackendName | undefined, probe: o.probe });
      if (o.json) printJson(r);
      else {
        for (const c of r.checks) process.stdout.write(`[${MARK[c.status]}] ${c.name.padEnd(20)} ${c.detail}\n`);
        process.stdout.write(`backend ${r.backend}, accelerator ${r.accel} (${r.durationMs} ms)\n`);
      }
      const bad = r.checks.some((c) => c.status === "fail" || (o.strict && c.status === "warn"));
      if (bad) process.exitCode = 1;
    });

  program
    .command("setup")
    .description("install host packages (as root), fetch the guest kernel, build the agent and default image")
    .option("--json", "print the result as JSON")
    .option("--with-test-tools", "also install what the test suite and benchmarks use (tmux, dropbear, ssh)")
    .option(
      "--firecracker <path>",
      "only install this Firecracker binary (and the jailer beside it) into ~/.local/bin, after checking its version",
    )
    .action(async (o: { json?: boolean; withTestTools?: boolean; firecracker?: string }) => {
      if (o.firecracker !== undefined) {
        const { installFirecracker } = await import("../backends/firecracker/install.js");
        const r = installFirecracker(o.firecracker);
        if (o.json) printJson(r);
        else {
          const jailer = r.jailer ? `, jailer ${r.jailer}` : " (no jailer beside it)";
          process.stdout.write(`installed Firecracker v${r.version}: ${r.firecracker}${jailer}\n`);
        }
        return;
      }
      const r = await setup(progress, { testTools: o.withTestTools });
      if (o.json) printJson(r);
      else process.stdout.write(`ready: kernel ${r.image.kernelVersion}, image ${r.image.rootfsPath}\n`);
    });
}
