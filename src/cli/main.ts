/** The `smolvm` command line. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, CommanderError } from "commander";
import { packageRoot } from "../paths.js";
import { exitNow, installSignalHandlers } from "./cleanup.js";
import { registerExec } from "./exec.js";
import { registerExpire } from "./expire.js";
import { registerFiles } from "./files.js";
import { registerHost } from "./host.js";
import { registerImages } from "./images.js";
import { registerLifecycle } from "./lifecycle.js";
import { registerLogs } from "./logs.js";
import { registerNetwork } from "./network.js";
import { EXIT, reportError } from "./output.js";
import { registerPack } from "./pack.js";
import { registerProcesses } from "./processes.js";
import { registerShell } from "./shell.js";
import { registerSnapshots } from "./snapshots.js";
import { registerSystem } from "./system.js";

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
process.stdout.on("error", exitOnClosedPipe);
process.stderr.on("error", exitOnClosedPipe);
installSignalHandlers();

const version = (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string }).version;

const program = new Command()
  .name("smolvm")
  .description("Hardware-isolated Linux microVM sandboxes")
  .version(version)
  .enablePositionalOptions()
  .passThroughOptions()
  .exitOverride();

registerExec(program);
registerProcesses(program);
registerLifecycle(program);
registerLogs(program);
registerHost(program);
registerFiles(program);
registerShell(program);
registerSnapshots(program);
registerPack(program);
registerNetwork(program);
registerImages(program);
registerSystem(program);
registerExpire(program);

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
