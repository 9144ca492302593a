/** cp (host <-> guest, files and folders: see cp.ts) and env set|unset|list */
import type { Command } from "commander";
import { SmolVM } from "../sandbox/smolvm.js";
import { registerCp } from "./cp.js";
import { parseEnv, printJson } from "./output.js";

export function registerFiles(program: Command): void {
  registerCp(program);

  const env = program.command("env").description("environment applied to every later command in a VM");
  env
    .command("set <id> <pairs...>")
    .description("set KEY=VALUE pairs")
    .action(async (id: string, pairs: string[]) => {
      const vm = await SmolVM.fromId(id);
      await vm.env.set(parseEnv(pairs));
      vm.close();
    });
  env.command("unset <id> <names...>").action(async (id: string, names: string[]) => {
    const vm = await SmolVM.fromId(id);
    await vm.env.unset(names);
    vm.close();
  });
  env
    .command("list <id>")
    .option("--json", "print JSON")
    .action(async (id: string, o: { json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const vars = await vm.env.list();
      vm.close();
      if (o.json) printJson(vars);
      else for (const [k, v] of Object.entries(vars)) process.stdout.write(`${k}=${v}\n`);
    });
}
