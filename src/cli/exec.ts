/** run (ephemeral VM) and exec (in an existing VM): stream output, exit with the command's code. */
import type { Command } from "commander";
import { CommandTimeoutError, ConfigError } from "../errors.js";
import type { CommandResult, RunOptions } from "../sandbox/commands.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { onInterrupt } from "./cleanup.js";
import { addVmOptions, type VmOptions, vmConfigFrom } from "./lifecycle.js";
import { EXIT, parseDuration, parseEnv, printJson, progress, toCommand } from "./output.js";
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
  detach?: boolean;
}

/** What `run`, `exec` and `attach` report (`--json`): the command's result, and whether `--timeout` killed it. */
export type CliResult = CommandResult & { timedOut: boolean };

/**
 * Follow a command (`start` gets the run options: output streamed live, or collected for --json; our stdin passed
 * through when it is not a terminal, or with -i) to its result. A timeout is a result too: exit code 124 with the
 * output collected until then.
 */
export async function follow(
  start: (opts: RunOptions) => Promise<CommandResult>,
  o: { interactive?: boolean; json?: boolean; timeout?: string },
): Promise<CliResult> {
  const attach = o.interactive || !process.stdin.isTTY;
  const t0 = performance.now();
  try {
    return {
      ...(await start({
        timeoutMs: parseDuration("--timeout", o.timeout),
        stdin: attach ? process.stdin : undefined,
        onStdout: o.json ? undefined : guestOutput(process.stdout),
        onStderr: o.json ? undefined : guestOutput(process.stderr),
      })),
      timedOut: false,
    };
  } catch (e) {
    if (!(e instanceof CommandTimeoutError)) throw e;
    if (!o.json) progress(e.message);
    const { stdout, stderr, truncated } = e;
    const durationMs = performance.now() - t0;
    return {
      exitCode: EXIT.TIMEOUT,
      signal: 9,
      stdout,
      stderr,
      output: stdout.trim(),
      ok: false,
      durationMs,
      truncated,
      timedOut: true,
    };
  } finally {
    if (attach) process.stdin.destroy(); // the command is done: stop waiting for input
  }
}

/** `env` is per-command environment. */
function runStreaming(
  vm: SmolVM,
  args: string[],
  o: ExecOptions,
  env?: Record<string, string>,
  asArgv = false,
): Promise<CliResult> {
  const cmd = asArgv ? args : toCommand(args);
  return follow((opts) => vm.run(cmd, { ...opts, cwd: o.cwd, env, user: o.user }), o);
}

/** Print the result (--json) and exit with the command's code (124 after a timeout). */
export function finish(r: CliResult, json?: boolean): void {
  if (json) printJson(r);
  process.exitCode = r.exitCode;
}

/** `exec --detach`: start in the background (stdin closed unless -i keeps it for `smolvm attach`), print the pid. */
async function detach(vm: SmolVM, args: string[], o: ExecOptions): Promise<void> {
  if (o.timeout !== undefined) throw new ConfigError("--detach", "cannot be combined with --timeout");
  // detached in the agent at once: even a command that ends before we leave keeps its exit for `smolvm attach`
  const pid = await vm.processes.start(toCommand(args), {
    cwd: o.cwd,
    env: parseEnv(o.env),
    user: o.user,
    stdin: o.interactive === true,
  });
  if (o.json) printJson({ pid });
  else process.stdout.write(`${pid}\n`);
}

export function registerExec(program: Command): void {
  addVmOptions(program.command("run").description("run a command in a new VM, then delete it"))
    .argument("[cmd...]", "command (one argument: a shell command line; several: an argv); default: the image's")
    .option("--timeout <duration>", "kill the command after this long (ms, or 500ms, 30s, 5m, 1h): exit code 124")
    .option("--cwd <dir>", "working directory in the guest")
    .option("-u, --user <user>", "guest user (name or uid)")
    .option("-i, --interactive", "pass stdin through even when it is a terminal")
    .option("--json", "print the result as JSON instead of streaming")
    .action(async (args: string[], o: VmOptions & ExecOptions) => {
      const vm = new SmolVM(vmConfigFrom(o));
      parseDuration("--timeout", o.timeout); // before anything boots
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
    .description("run a command in a running VM; exits with its code (see the README's exit codes)")
    .argument("<cmd...>", "command (one argument: a shell command line; several: an argv)")
    .option("--timeout <duration>", "kill the command after this long (ms, or 500ms, 30s, 5m, 1h): exit code 124")
    .option("--cwd <dir>", "working directory in the guest")
    .option("-e, --env <KEY=VALUE...>", "extra environment")
    .option("-u, --user <user>", "guest user (name or uid)")
    .option("-i, --interactive", "pass stdin through even when it is a terminal (with -d: keep its stdin open)")
    .option("-d, --detach", "start in the background, print its pid and exit (see smolvm ps, attach, kill)")
    .option("--json", "print the result as JSON instead of streaming (with -d: {pid})")
    .action(async (id: string, args: string[], o: ExecOptions) => {
      parseDuration("--timeout", o.timeout);
      const env = parseEnv(o.env);
      const vm = await SmolVM.fromId(id);
      try {
        if (o.detach) await detach(vm, args, o);
        else finish(await runStreaming(vm, args, o, env), o.json);
      } finally {
        vm.close();
      }
    });
}
