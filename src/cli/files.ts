/** cp (host <-> guest, files and folders) and env set|unset|list */
import { statSync } from "node:fs";
import type { Command } from "commander";
import { ConfigError } from "../errors.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { parseEnv, printJson } from "./output.js";

/** A byte count: digits with an optional K/M/G/T suffix (powers of 1024), e.g. `512M`. */
export function parseSize(field: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const m = /^([0-9]+)([KMGT]?)(?:i?B)?$/i.exec(v);
  const n = m ? Number(m[1]) * 1024 ** "_KMGT".indexOf((m[2] || "_").toUpperCase()) : Number.NaN;
  if (!m || !Number.isSafeInteger(n)) {
    throw new ConfigError(
      field,
      `must be a size in bytes with an optional K, M, G or T suffix, got ${JSON.stringify(v)}`,
    );
  }
  return n;
}

/** `ID:/path` names a guest path; anything else is a host path. */
export function parseCpPath(arg: string): { vm: string | null; path: string } {
  const m = /^([a-z0-9][a-z0-9-]{0,62}):(\/.*)$/.exec(arg);
  return m ? { vm: m[1] as string, path: m[2] as string } : { vm: null, path: arg };
}

export function registerFiles(program: Command): void {
  program
    .command("cp <src> <dst>")
    .description("copy files or folders between host and guest; write a guest path as ID:/path")
    .option(
      "--max-size <bytes>",
      "stop a copy from the guest past this size (K, M, G, T suffixes; default: what the destination can take, keeping a margin free)",
    )
    .option("--allow-special", "also copy a guest device or fifo (which may never end)")
    .option("--json", "print JSON")
    .action(async (srcArg: string, dstArg: string, o: { json?: boolean; maxSize?: string; allowSpecial?: boolean }) => {
      const src = parseCpPath(srcArg);
      const dst = parseCpPath(dstArg);
      if (!!src.vm === !!dst.vm) {
        throw new ConfigError("cp", "exactly one side must be a guest path written as ID:/absolute/path");
      }
      const maxBytes = parseSize("maxBytes", o.maxSize);
      const vm = await SmolVM.fromId((src.vm ?? dst.vm) as string);
      try {
        let result: unknown;
        if (dst.vm) {
          const isDir = statSync(src.path).isDirectory();
          result = isDir ? await vm.uploadDir(src.path, dst.path) : await vm.uploadFile(src.path, dst.path);
        } else {
          const st = await vm.files.stat(src.path);
          result =
            st.type === "dir"
              ? await vm.downloadDir(src.path, dst.path, { maxBytes })
              : await vm.downloadFile(src.path, dst.path, { maxBytes, allowSpecial: o.allowSpecial });
        }
        if (o.json) printJson(result);
      } finally {
        vm.close();
      }
    });

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
