/** run (ephemeral VM) and exec (in an existing VM): stream output, exit with the command's code. */
import type { Command } from "commander";
import type { CommandResult } from "../sandbox/commands.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { addVmOptions, type VmOptions, vmConfigFrom } from "./lifecycle.js";
import { num, parseEnv, printJson, progress, toCommand } from "./output.js";

interface ExecOptions {
  interactive?: boolean;
  user?: string;
  timeout?: string;
  cwd?: string;
  env?: string[];
  json?: boolean;
}

/**
 * Run and stream output live (or collect it for --json). `env` is per-command environment. Our stdin is passed
 * through when it is not a terminal (a pipe or a file), or with -i.
 */
async function runStreaming(
  vm: SmolVM,
  args: string[],
  o: ExecOptions,
  env?: Record<string, string>,
): Promise<CommandResult> {
  const attach = o.interactive || !process.stdin.isTTY;
  try {
    return await vm.run(toCommand(args), {
      timeoutMs: num("timeoutMs", o.timeout),
      cwd: o.cwd,
      env,
      user: o.user,
      stdin: attach ? process.stdin : undefined,
      onStdout: o.json ? undefined : (b) => process.stdout.write(b),
      onStderr: o.json ? undefined : (b) => process.stderr.write(b),
    });
  } finally {
    if (attach) process.stdin.destroy(); // the command is done: stop waiting for input
  }
}

function finish(r: CommandResult, json?: boolean): void {
  if (json) printJson(r);
  process.exitCode = r.exitCode;
}

export function registerExec(program: Command): void {
  addVmOptions(program.command("run").description("run a command in a new VM, then delete it"))
    .argument("<cmd...>", "command (one argument: a shell command line; several: an argv)")
    .option("--timeout <ms>", "kill the command after this many ms")
    .option("--cwd <dir>", "working directory in the guest")
    .option("-u, --user <user>", "guest user (name or uid)")
    .option("-i, --interactive", "pass stdin through even when it is a terminal")
    .option("--json", "print the result as JSON instead of streaming")
    .action(async (args: string[], o: VmOptions & ExecOptions) => {
      const vm = new SmolVM(vmConfigFrom(o));
      const cleanup = () => {
        vm.delete().finally(() => process.exit(130));
      };
      process.once("SIGINT", cleanup);
      process.once("SIGTERM", cleanup);
      try {
        await vm.start({ onProgress: progress });
        finish(await runStreaming(vm, args, o), o.json);
      } finally {
        await vm.delete();
        process.off("SIGINT", cleanup);
        process.off("SIGTERM", cleanup);
      }
    });

  program
    .command("exec <id>")
    .description("run a command in a running VM")
    .argument("<cmd...>", "command (one argument: a shell command line; several: an argv)")
    .option("--timeout <ms>", "kill the command after this many ms")
    .option("--cwd <dir>", "working directory in the guest")
    .option("-e, --env <KEY=VALUE...>", "extra environment")
    .option("-u, --user <user>", "guest user (name or uid)")
    .option("-i, --interactive", "pass stdin through even when it is a terminal")
    .option("--json", "print the result as JSON instead of streaming")
    .action(async (id: string, args: string[], o: ExecOptions) => {
      const vm = await SmolVM.fromId(id);
      try {
        finish(await runStreaming(vm, args, o, parseEnv(o.env)), o.json);
      } finally {
        vm.close();
      }
    });
}
