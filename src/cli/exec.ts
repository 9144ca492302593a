/** run (ephemeral VM) and exec (in an existing VM): stream output, exit with the command's code. */
import type { Command } from "commander";
import { ConfigError } from "../errors.js";
import type { CommandResult } from "../sandbox/commands.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { onInterrupt } from "./cleanup.js";
import { addVmOptions, type VmOptions, vmConfigFrom } from "./lifecycle.js";
import { int, MAX_TIMER_MS, parseEnv, printJson, progress, toCommand } from "./output.js";
import { guestTextSink } from "./terminal-filter.js";

/**
 * Guest output to one of our streams: control sequences that could act on the user's terminal are removed when it
 * is a terminal, and when the stream's buffer is full the returned promise holds the guest back (backpressure all
 * the way to the command in the guest: `smolvm exec ... | slow-reader` never grows in memory).
 */
export function guestOutput(stream: NodeJS.WriteStream): (b: Buffer) => undefined | Promise<void> {
  const sink = guestTextSink(stream, "interactive");
  let drained: Promise<void> | null = null; // one wait for all the chunks written while the buffer is full
  return (b) => {
    if (sink(b)) return undefined;
    drained ??= new Promise<void>((resolve) =>
      stream.once("drain", () => {
        drained = null;
        resolve();
      }),
    );
    return drained;
  };
}

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
  asArgv = false,
): Promise<CommandResult> {
  const attach = o.interactive || !process.stdin.isTTY;
  try {
    return await vm.run(asArgv ? args : toCommand(args), {
      timeoutMs: int("timeoutMs", o.timeout, { min: 1, max: MAX_TIMER_MS, unit: "milliseconds" }),
      cwd: o.cwd,
      env,
      user: o.user,
      stdin: attach ? process.stdin : undefined,
      onStdout: o.json ? undefined : guestOutput(process.stdout),
      onStderr: o.json ? undefined : guestOutput(process.stderr),
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
    .argument("[cmd...]", "command (one argument: a shell command line; several: an argv); default: the image's")
    .option("--timeout <ms>", "kill the command after this many ms")
    .option("--cwd <dir>", "working directory in the guest")
    .option("-u, --user <user>", "guest user (name or uid)")
    .option("-i, --interactive", "pass stdin through even when it is a terminal")
    .option("--json", "print the result as JSON instead of streaming")
    .action(async (args: string[], o: VmOptions & ExecOptions) => {
      const vm = new SmolVM(vmConfigFrom(o));
      int("timeoutMs", o.timeout, { min: 1, max: MAX_TIMER_MS, unit: "milliseconds" }); // before anything boots
      if (args.length === 0 && !o.image) {
        throw new ConfigError("cmd", "give a command to run (only an image with Entrypoint/Cmd has a default)");
      }
      const cancel = onInterrupt(() => vm.delete()); // Ctrl-C, a closed terminal, a reader that went away
      try {
        await vm.start({ onProgress: progress });
        // with no command, the image's own (Entrypoint then Cmd, as `docker run IMAGE` runs)
        const d = vm.config.imageInfo;
        const argv = args.length ? args : [...(d?.entrypoint ?? []), ...(d?.cmd ?? [])];
        if (argv.length === 0) {
          throw new ConfigError("cmd", `image ${o.image} has no Entrypoint or Cmd: give a command to run`);
        }
        // the image's own command is an argv even when it is one word
        finish(await runStreaming(vm, argv, o, undefined, args.length === 0), o.json);
      } finally {
        await vm.delete();
        cancel();
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
      int("timeoutMs", o.timeout, { min: 1, max: MAX_TIMER_MS, unit: "milliseconds" });
      const vm = await SmolVM.fromId(id);
      try {
        finish(await runStreaming(vm, args, o, parseEnv(o.env)), o.json);
      } finally {
        vm.close();
      }
    });
}
