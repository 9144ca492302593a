/** smolvm shell: an interactive terminal in a VM. */
import type { Command } from "commander";
import { SmolVM } from "../sandbox/smolvm.js";
import { guestOutput } from "./exec.js";

export function registerShell(program: Command): void {
  program
    .command("shell <id>")
    .description("interactive shell in a running VM (raw terminal, follows resizes, exits with the shell's code)")
    .option("-u, --user <user>", "guest user (name or uid)")
    .option("--cwd <dir>", "working directory")
    .argument("[cmd...]", "program to run instead of /bin/sh -l")
    .action(async (id: string, cmd: string[], o: { user?: string; cwd?: string }) => {
      const vm = await SmolVM.fromId(id);
      const out = process.stdout;
      const size = () => ({ cols: out.columns || 80, rows: out.rows || 24 });
      const t = await vm.pty.create({
        ...size(),
        cmd: cmd.length ? cmd : undefined,
        user: o.user,
        cwd: o.cwd,
        onData: guestOutput(out),
      });
      const stdin = process.stdin;
      const raw = stdin.isTTY;
      if (raw) stdin.setRawMode(true);
      // typing or pasting faster than the guest reads: stop reading our stdin until the write went through
      const onInput = (b: Buffer) => {
        stdin.pause();
        t.write(b)
          .catch(() => {})
          .finally(() => stdin.resume());
      };
      const onResize = () => {
        t.resize(size()).catch(() => {});
      };
      stdin.on("data", onInput);
      out.on("resize", onResize);
      try {
        const exit = await t.wait();
        process.exitCode = exit.exitCode ?? 128 + (exit.signal ?? 0);
      } finally {
        stdin.off("data", onInput);
        out.off("resize", onResize);
        if (raw) stdin.setRawMode(false);
        stdin.destroy();
        vm.close();
      }
    });
}
