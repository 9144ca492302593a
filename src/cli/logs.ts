/** `smolvm logs`: a VM's serial console, whole, its last lines, or followed as it grows. */
import { once } from "node:events";
import { closeSync, createReadStream, existsSync, fstatSync, openSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { VMNotFoundError } from "../errors.js";
import { tailLines } from "../sandbox/console-log.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { StateStore } from "../state/store.js";
import { readAt } from "../util/fs.js";
import { int } from "./output.js";
import { guestTextSink } from "./terminal-filter.js";

/** What a follower remembers of what it printed, to find its place again after the log was trimmed. */
const MARK_BYTES = 256;

/**
 * Print what is added to `path` from `pos` on, until the VM stops running (or this process is interrupted). The
 * proxy trims a full log to its newest half: the follower then finds the last bytes it printed in the new file and
 * goes on after them (or from the start, saying so, when they are gone).
 */
async function follow(path: string, pos: number, out: (b: Buffer) => boolean, running: () => boolean): Promise<void> {
  let mark = Buffer.alloc(0);
  let idle = 0;
  for (;;) {
    let size = 0;
    let chunk: Buffer | null = null;
    try {
      const fd = openSync(path, "r");
      try {
        size = fstatSync(fd).size;
        if (size < pos) {
          // trimmed: the newest half was kept, then more may have come
          const all = readAt(fd, 0, size);
          const at = mark.length ? all.lastIndexOf(mark) : -1;
          pos = at >= 0 ? at + mark.length : 0;
          if (at < 0) out(Buffer.from("--- smolvm: the console log was trimmed; from its start now ---\n"));
        }
        if (size > pos) chunk = readAt(fd, pos, Math.min(size - pos, 1 << 20));
      } finally {
        closeSync(fd);
      }
    } catch {
      // no log yet (a VM starting) or gone with its VM
    }
    if (chunk?.length) {
      pos += chunk.length;
      mark = Buffer.concat([mark, chunk]).subarray(-MARK_BYTES);
      if (!out(chunk)) await once(process.stdout, "drain");
      idle = 0;
      continue;
    }
    // once a second: does the VM still run? (the last lines it wrote before it ended were read above)
    if (++idle % 4 === 0 && !running()) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

export function registerLogs(program: Command): void {
  program
    .command("logs <id>")
    .description(
      "print a VM's serial console log (the newest 1 MiB or so is kept; a restored VM's starts with its source's)",
    )
    .option("-n, --lines <n>", "only the last n lines")
    .option("-f, --follow", "keep printing what the guest writes, until the VM stops (or Ctrl-C)")
    .action(async (id: string, o: { lines?: string; follow?: boolean }) => {
      const n = int("lines", o.lines, { min: 0, max: 10_000_000 });
      const rec = StateStore.open().get(id);
      if (!rec) throw new VMNotFoundError(id);
      const path = join(rec.vmDir, "console.log");
      // guest text: on a terminal every control character is shown, never acted on
      const out = guestTextSink(process.stdout, "log");
      let pos = 0;
      if (n !== undefined) {
        pos = sizeOf(path);
        out(tailLines(path, n));
      } else if (existsSync(path)) {
        const end = sizeOf(path);
        for await (const chunk of createReadStream(path, { end: Math.max(0, end - 1) })) {
          if (!out(chunk as Buffer)) await once(process.stdout, "drain");
        }
        pos = end;
      }
      if (!o.follow) return;
      const vm = await SmolVM.fromId(rec.id);
      await follow(path, pos, out, () => {
        try {
          return vm.status === "running" || vm.status === "paused";
        } catch {
          return false; // deleted
        }
      });
    });
}

/** The file's size now (0 if there is none yet). */
function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}
