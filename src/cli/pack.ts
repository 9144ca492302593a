/** pack create|inspect|run: the .smolmachine file */
import type { Command } from "commander";
import { networkFrom, type VmOptions } from "./lifecycle.js";

type NetFlags = Pick<VmOptions, "net" | "internet" | "allowCidr" | "allowDomain">;

import { readPackManifest, verifyPack } from "../images/pack.js";
import { hostSignature } from "../images/pack-key.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { printJson, progress, toCommand } from "./output.js";

export function registerPack(program: Command): void {
  const pack = program.command("pack").description(".smolmachine files: a whole sandbox in one file");
  pack
    .command("create <id>")
    .description("write a VM to one file (kernel, initramfs, disk; memory with --with-memory)")
    .requiredOption("-o, --output <file>", "the .smolmachine file to write")
    .option("--with-memory", "include the running state (restored where the VMM matches)")
    .option("--json", "print the manifest as JSON")
    .action(async (id: string, o: { output: string; withMemory?: boolean; json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const m = await vm.pack(o.output, { withMemory: o.withMemory, onProgress: progress });
      vm.close();
      if (o.json) printJson(m);
      else process.stdout.write(`${o.output}\n`);
    });
  pack
    .command("inspect <file>")
    .description("show a file's manifest (--verify also checks every section's checksum)")
    .option("--verify", "check every section's checksum")
    .option("--json", "print JSON")
    .action(async (file: string, o: { verify?: boolean; json?: boolean }) => {
      const m = o.verify ? await verifyPack(file) : readPackManifest(file).manifest;
      const sig = hostSignature(m);
      if (o.json) printJson({ ...m, signedByThisHost: sig.signed });
      else {
        process.stdout.write(`format ${m.formatVersion}, ${m.backend} (${m.vmm}), created ${m.createdAt}\n`);
        process.stdout.write(`config: ${m.config.vcpuCount} vCPUs, ${m.config.memSizeMib} MiB\n`);
        process.stdout.write(
          sig.signed
            ? "signature: signed by this host\n"
            : `signature: not signed by this host: ${sig.why} (its memory is only restored with --trust)\n`,
        );
        for (const s of m.sections) {
          process.stdout.write(`  ${s.name.padEnd(7)} ${String(s.size).padStart(12)} bytes, ${s.length} stored\n`);
        }
      }
    });
  pack
    .command("run <file>")
    .description("start a VM from a file; with a command, run it, stream its output and delete the VM")
    .argument("[cmd...]", "command (one argument: a shell command line; several: an argv)")
    .option("--name <name>", "unique name (without a command)")
    .option("--trust", "restore its memory state even if this host did not sign the file (trusted sources only)")
    .option("--json", "print JSON")
    .option("--net <mode>", "none (default) | user | tap")
    .option("--internet <policy>", "open (default with --net) | off")
    .option("--allow-cidr <cidr...>", "allow only these IPv4 CIDRs")
    .option("--allow-domain <name...>", "allow only these names (tap mode)")
    .action(async (file: string, cmd: string[], o: { name?: string; trust?: boolean; json?: boolean } & NetFlags) => {
      const vm = await SmolVM.fromPack(file, {
        name: o.name,
        trust: o.trust === true,
        network: networkFrom(o),
        keep: cmd.length === 0, // a VM made to run one command lives only as long as this process
      });
      if (!cmd.length) {
        vm.close();
        if (o.json) printJson(vm.info());
        else process.stdout.write(`${vm.vmId}\n`);
        return;
      }
      try {
        const r = await vm.run(toCommand(cmd), {
          onStdout: o.json ? undefined : (b) => process.stdout.write(b),
          onStderr: o.json ? undefined : (b) => process.stderr.write(b),
        });
        if (o.json) printJson(r);
        process.exitCode = r.exitCode;
      } finally {
        await vm.delete();
      }
    });
}
