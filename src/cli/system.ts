/** `smolvm system df|prune`: where disk space goes, and removing what nothing needs. */
import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { ConfigError } from "../errors.js";
import { diskUsage } from "../lifecycle/disk-usage.js";
import { systemPrune } from "../lifecycle/prune.js";
import { reconcile } from "../state/reconcile.js";
import { StateStore } from "../state/store.js";
import { printJson, table } from "./output.js";

/** Bytes for people: 1000-based like `image list` and `docker system df`. */
export function human(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n / 1000;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

const pct = (part: number, whole: number) => (whole > 0 ? ` (${Math.round((100 * part) / whole)}%)` : "");

async function confirm(all: boolean): Promise<void> {
  if (!process.stdin.isTTY) {
    throw new ConfigError("force", "not asking for confirmation without a terminal: pass --force (-f) to prune");
  }
  const what = all
    ? "unused temporary snapshots, every warm template, image and unpacked pack no VM or snapshot uses, the layer " +
      "blob cache, and leftovers of killed processes"
    : "unused temporary snapshots, stale warm templates, layer blobs no image needs, and leftovers of killed processes";
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const a = await rl.question(`This removes ${what} (never a VM, nor anything one uses). Continue? [y/N] `);
    if (!/^y(es)?$/i.test(a.trim())) throw new ConfigError("force", "not confirmed: nothing was removed");
  } finally {
    rl.close();
  }
}

export function registerSystem(program: Command): void {
  const system = program.command("system").description("disk usage and clean-up");

  system
    .command("df")
    .description("disk space used by images, warm templates, snapshots, VMs and caches, and what prune --all frees")
    .option("-v, --verbose", "list every item")
    .option("--json", "print JSON (always with the items)")
    .action(async (o: { verbose?: boolean; json?: boolean }) => {
      const store = StateStore.open();
      await reconcile(store);
      const u = diskUsage(store);
      if (o.json) {
        printJson(u);
        return;
      }
      const rows = u.kinds.map((k) => ({
        type: k.kind,
        count: k.count,
        size: human(k.bytes),
        reclaimable: `${human(k.reclaimable)}${pct(k.reclaimable, k.bytes)}`,
      }));
      const total = { type: "total", count: "", size: human(u.bytes), reclaimable: human(u.reclaimable) };
      process.stdout.write(`${table([...rows, total], ["type", "count", "size", "reclaimable"])}\n`);
      if (!o.verbose) return;
      for (const k of u.kinds) {
        if (!k.items.length) continue;
        const items = k.items.map((i) => ({ ...i, size: human(i.bytes), free: human(i.reclaimable) }));
        process.stdout.write(
          `\n${k.kind}:\n${table(items, ["id", "name", "size", ["free", "RECLAIMABLE"], "note", "path"])}\n`,
        );
      }
    });

  system
    .command("prune")
    .description("remove unused temporary snapshots, stale warm templates, unused layers, leftovers (never a VM)")
    .option("--all", "also unused warm templates, images and unpacked packs, the layer blob cache, kept empty layers")
    .option("-f, --force", "do not ask for confirmation")
    .option("--json", "print what was removed as JSON")
    .action(async (o: { all?: boolean; force?: boolean; json?: boolean }) => {
      if (!o.force) await confirm(o.all === true);
      const store = StateStore.open();
      await reconcile(store);
      const r = systemPrune(store, { all: o.all === true });
      if (o.json) {
        printJson(r);
        return;
      }
      const lines: [string, string[]][] = [
        ["temporary snapshot", r.snapshots],
        ["memory of temporary snapshot", r.snapshotMemory],
        ["image", r.images],
        ["warm template", r.templates],
        ["unpacked pack", r.packs],
        ["leftover", r.leftovers],
        ["kept empty disk layer", r.overlays],
      ];
      for (const [what, list] of lines) for (const x of list) process.stdout.write(`removed ${what} ${x}\n`);
      process.stdout.write(`removed ${r.blobs.length} layer blobs\nreclaimed ${human(r.bytes)}\n`);
    });
}
