/** pause, resume, snapshot create|list|inspect|rm, fork */
import type { Command } from "commander";
import { SmolVM } from "../sandbox/smolvm.js";
import { deleteSnapshot, SnapshotNotFoundError } from "../sandbox/snapshots.js";
import { StateStore } from "../state/store.js";
import { int, printJson, table } from "./output.js";

export function registerSnapshots(program: Command): void {
  for (const [name, what] of [
    ["pause", "freeze a VM's vCPUs"],
    ["resume", "continue a paused VM"],
  ] as const) {
    program
      .command(`${name} <id>`)
      .description(what)
      .option("--json", "print JSON")
      .action(async (id: string, o: { json?: boolean }) => {
        const vm = await SmolVM.fromId(id);
        await (name === "pause" ? vm.pause() : vm.resume());
        if (o.json) printJson(vm.info());
        else process.stdout.write(`${vm.vmId} ${vm.status}\n`);
        vm.close();
      });
  }

  const snap = program.command("snapshot").description("snapshots: memory, device state and disk of a VM");
  snap
    .command("create <id>")
    .description("snapshot a running or paused VM (it keeps running)")
    .option("--name <name>", "unique name")
    .option("--json", "print JSON")
    .action(async (id: string, o: { name?: string; json?: boolean }) => {
      const vm = await SmolVM.fromId(id);
      const s = await vm.snapshot({ name: o.name });
      vm.close();
      if (o.json) printJson(s);
      else process.stdout.write(`${s.id}\n`);
    });
  snap
    .command("list")
    .alias("ls")
    .description("snapshots (-a: also the temporary ones forks and packs made, kept while VMs sit on them)")
    .option("-a, --all", "include temporary snapshots")
    .option("--json", "print JSON")
    .action((o: { all?: boolean; json?: boolean }) => {
      const list = SmolVM.listSnapshots().filter((s) => o.all || !s.temporary);
      if (o.json) printJson(list);
      else {
        const rows = list.map((s) => ({ ...s, sizeMiB: (s.sizeBytes / 2 ** 20).toFixed(1) }));
        const cols = ["id", "name", "vmId", "sizeMiB", "parentId", "createdAt", ...(o.all ? ["temporary"] : [])];
        process.stdout.write(`${table(rows, cols)}\n`);
      }
    });
  snap
    .command("inspect <snapshot>")
    .option("--json", "print JSON")
    .action((idOrName: string, o: { json?: boolean }) => {
      const store = StateStore.open();
      const s = store.getSnapshot(idOrName);
      if (!s) throw new SnapshotNotFoundError(idOrName);
      const detail = {
        ...SmolVM.listSnapshots().find((x) => x.id === s.id),
        memFile: s.memFile,
        diskFile: s.diskFile,
        memSizeMib: s.config.memSizeMib,
        vcpuCount: s.config.vcpuCount,
        accel: s.accel,
        usedBy: store.snapshotUsers(s.id),
      };
      if (o.json) printJson(detail);
      else for (const [k, v] of Object.entries(detail)) process.stdout.write(`${k.padEnd(11)} ${JSON.stringify(v)}\n`);
    });
  snap
    .command("rm <snapshots...>")
    .description("delete snapshots (refused while VMs or snapshots are layered on them, naming them)")
    .option("-r, --recursive", "also delete the snapshots built on them, depth first (never a VM)")
    .option("--json", "print the ids deleted as JSON")
    .action((ids: string[], o: { recursive?: boolean; json?: boolean }) => {
      const store = StateStore.open();
      const deleted: string[] = [];
      for (const id of ids) {
        const gone = deleteSnapshot(store, id, { recursive: o.recursive === true });
        deleted.push(...gone);
        if (!o.json) process.stdout.write(`${gone.join("\n")}\n`);
      }
      if (o.json) printJson({ deleted });
    });

  program
    .command("fork <id>")
    .description("make N new VMs, each a copy of this one as it is now")
    .option("--count <n>", "how many", "1")
    .option("--json", "print JSON")
    .action(async (id: string, o: { count: string; json?: boolean }) => {
      const count = int("count", o.count, { min: 1, max: 64 });
      const vm = await SmolVM.fromId(id);
      const clones = await vm.fork(count, { keep: true });
      vm.close();
      const infos = clones.map((c) => {
        c.close();
        return c.info();
      });
      if (o.json) printJson(infos);
      else for (const i of infos) process.stdout.write(`${i.vmId}\n`);
    });
}
