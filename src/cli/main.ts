/** The `smolvm` command line. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { packageRoot } from "../paths.js";
import { exitNow, installSignalHandlers } from "./cleanup.js";
import { EXIT, reportError } from "./output.js";

type Register = (program: Command) => void;

/**
 * Which module defines which commands. Only the module of the command being run is loaded (the SDK behind most of
 * them takes a few hundred ms to load): `smolvm --version` loads none. Help, or a command not listed here, loads all.
 */
const MODULES: [string[], () => Promise<Register>][] = [
  [["run", "exec"], async () => (await import("./exec.js")).registerExec],
  [["ps", "attach", "kill"], async () => (await import("./processes.js")).registerProcesses],
  [
    ["create", "list", "ls", "status", "set-timeout", "start", "stop", "rm"],
    async () => (await import("./lifecycle.js")).registerLifecycle,
  ],
  [["logs"], async () => (await import("./logs.js")).registerLogs],
  [["doctor", "setup"], async () => (await import("./host.js")).registerHost],
  [["cp", "env"], async () => (await import("./files.js")).registerFiles],
  [["shell"], async () => (await import("./shell.js")).registerShell],
  [["snapshot", "fork", "pause", "resume"], async () => (await import("./snapshots.js")).registerSnapshots],
  [["pack"], async () => (await import("./pack.js")).registerPack],
  [["port", "network"], async () => (await import("./network.js")).registerNetwork],
  [["image"], async () => (await import("./images.js")).registerImages],
  [["browser"], async () => (await import("./browser.js")).registerBrowser],
  [["system"], async () => (await import("./system.js")).registerSystem],
  [["serve"], async () => (await import("./serve.js")).registerServe],
  [["mcp"], async () => (await import("./mcp.js")).registerMcp],
  [["_expire"], async () => (await import("./expire.js")).registerExpire],
];

/** The first argument that is not an option: the command's name (or undefined). */
const commandName = process.argv.slice(2).find((a) => !a.startsWith("-"));

/**
 * A reader that goes away early (`smolvm status x | head -2`) closes our stdout: writing then fails with EPIPE
 * (Node ignores SIGPIPE), which would be an unhandled 'error' event and a stack trace. Exit quietly instead, with
 * the exit code set so far. Other stream errors keep their default behaviour.
 */
function exitOnClosedPipe(err: NodeJS.ErrnoException): void {
  if (err.code === "EPIPE" || err.code === "ERR_STREAM_DESTROYED") {
    void exitNow(typeof process.exitCode === "number" ? process.exitCode : 0); // after `run` deleted its VM
    return;
  }
  throw err;
}
// `smolvm --version` answers before anything else is loaded
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === "--version" || args[0] === "-V")) {
  process.stdout.write(`${readVersion()}\n`);
  process.exit(0);
}
const { Command: CommandClass, CommanderError } = await import("commander");

process.stdout.on("error", exitOnClosedPipe);
process.stderr.on("error", exitOnClosedPipe);
installSignalHandlers();

function readVersion(): string {
  return (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;
}

const program = new CommandClass()
  .name("smolvm")
  .description("Hardware-isolated Linux microVM sandboxes")
  .version(readVersion())
  .enablePositionalOptions()
  .passThroughOptions()
  .exitOverride();

const versionOnly = commandName === undefined && process.argv.some((a) => a === "--version" || a === "-V");
const wanted = MODULES.filter(([names]) => commandName !== undefined && names.includes(commandName));
for (const [, load] of versionOnly ? [] : wanted.length ? wanted : MODULES) (await load())(program);

/** Commands that run a guest command and exit with its code: their own failures exit 125, not 1 (as `docker run`). */
const RUNS_COMMAND = new Set(["run", "exec", "attach", "shell"]); // `run` is also `pack run`
let runsCommand = false;
program.hook("preAction", (_cmd, action) => {
  runsCommand = RUNS_COMMAND.has(action.name());
});

try {
  await program.parseAsync(process.argv);
} catch (e) {
  // commander's own errors (unknown option, missing argument, bad value, no subcommand) are usage errors; help and
  // --version exit 0
  if (e instanceof CommanderError) process.exitCode = e.exitCode === 0 ? 0 : EXIT.USAGE;
  else process.exitCode = reportError(e, process.argv.includes("--json"), runsCommand);
}
