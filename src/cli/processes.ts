/** Background processes: `exec --detach` starts them (exec.ts); `ps`, `attach` and `kill` here. */
import type { Command } from "commander";
import type { ProcessInfo } from "../sandbox/processes.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { parseSignal, signalName } from "../util/signals.js";
import { finish, follow } from "./exec.js";
import { int, printJson, table } from "./output.js";

export { parseSignal, signalName };

const parsePid = (v: string) => int("pid", v, { min: 1, max: 4_294_967_295 });

/** running / exited N / killed by SIGNAME (finished background processes are kept until someone attaches). */
function statusOf(p: ProcessInfo): string {
  if (p.running) return "running";
  if (p.signal) return `killed by ${signalName(p.signal)}`;
  return typeof p.exitCode === "number" ? `exited ${p.exitCode}` : "exited";
}

export function registerProcesses(program: Command): void {
  program
    .command("ps <id>")
    .description("processes started through the agent (running, and finished background ones not yet attached)")
    .option("--json", "print JSON: [{pid, command, status, running, attached, background, exitCode, signal}]")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      try {
        const rows = (await vm.processes.list()).map((p) => ({
          pid: p.pid,
          command: p.command,
          status: statusOf(p),
          running: p.running,
          attached: p.attached,
          background: p.background,
          exitCode: p.exitCode ?? null,
          signal: p.signal ?? null,
        }));
        if (o.json) printJson(rows);
        else {
          const text = rows.map((r) => ({ ...r, attached: r.attached ? "yes" : "no" }));
          process.stdout.write(`${table(text, ["pid", "command", "status", "attached"])}\n`);
        }
      } finally {
        vm.close();
      }
    });

  program
    .command("attach <id> <pid>")
    .description(
      "reattach to a background process: replay its recent output (up to 64 KiB per stream), stream it live and " +
        "exit with its code; piped stdin passes through (-i for a terminal). Ctrl-C detaches and leaves it running",
    )
    .option("-i, --interactive", "pass stdin through even when it is a terminal")
    .option("--json", "print the result as JSON instead of streaming")
    .action(async (id: string, pidArg: string, o: { interactive?: boolean; json?: boolean }) => {
      const pid = parsePid(pidArg);
      const vm = await SmolVM.fromId(id);
      try {
        finish(await follow((opts) => vm.processes.follow(pid, opts), o), o.json);
      } finally {
        vm.close();
      }
    });

  program
    .command("kill <id> <pid>")
    .argument("[signal]", "a name (TERM, SIGTERM, KILL, ...) or a number", "TERM")
    .description("send a signal to a process started through the agent (and its process group)")
    .action(async (id: string, pidArg: string, sig: string) => {
      const pid = parsePid(pidArg);
      const signal = parseSignal(sig);
      const vm = await SmolVM.fromId(id);
      try {
        await vm.processes.kill(pid, signal);
      } finally {
        vm.close();
      }
    });
}
