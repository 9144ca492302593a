/**
 * `smolvm _expire`: run by a VM's supervisor when its lease ends (src/lifecycle/lease.ts), not by people. Ends the VM
 * cleanly (network, ports, disk layer and record too) if its lease, read again here, still says so.
 */
import type { Command } from "commander";
import { ConfigError } from "../errors.js";
import { expireVm } from "../lifecycle/lifetime.js";
import { StateStore } from "../state/store.js";

export function registerExpire(program: Command): void {
  program
    .command("_expire <id> <reason>", { hidden: true })
    .description("end a VM whose lease ended (run by the VM's supervisor)")
    .requiredOption("--state-dir <dir>", "the VM's state folder")
    .action(async (id: string, reason: string, o: { stateDir: string }) => {
      if (reason !== "timeout" && reason !== "owner") {
        throw new ConfigError("reason", `must be timeout or owner, got ${JSON.stringify(reason)}`);
      }
      process.env.SMOLVM_STATE_DIR = o.stateDir;
      const outcome = await expireVm(StateStore.open(), id, reason);
      process.stderr.write(`smolvm: lease of ${id} ended (${reason}): ${outcome}\n`);
    });
}
