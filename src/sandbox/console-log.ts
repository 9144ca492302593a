import { closeSync, fstatSync, openSync } from "node:fs";
import { readAt } from "../util/fs.js";

const EMPTY = Buffer.alloc(0);
/** How much of a console a snapshot or a restored VM carries over from the guest it comes from. */
export const CONSOLE_CARRIED = 64 << 10;
const NL = 0x0a;
const BLOCK = 64 << 10;

/** The last `bytes` of a VM's serial console log ("" if there is none). */
export function tailFile(path: string, bytes = 4096): string {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return "";
  }
  try {
    const size = fstatSync(fd).size;
    return readAt(fd, Math.max(0, size - bytes), Math.min(size, bytes)).toString("utf8");
  } catch {
    return "";
  } finally {
    closeSync(fd);
  }
}

/**
 * The last `n` lines of a file, as bytes, read backwards from its end in 64 KiB blocks: memory use is bounded by
 * the size of those lines, whatever the size of the file. Lines are counted as `tail -n` does: a final newline
 * ends the last line, and a last line without one still counts. At most `maxBytes` are read back: if n lines
 * are not found within them, the result starts at the first line boundary inside that window (or at its start
 * if the window holds no line boundary). A missing or unreadable file gives an empty buffer, as does n <= 0.
 */
export function tailLines(path: string, n: number, maxBytes = 8 << 20): Buffer {
  if (!(n > 0) || !(maxBytes > 0)) return EMPTY;
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return EMPTY;
  }
  try {
    const size = fstatSync(fd).size;
    const floor = Math.max(0, size - maxBytes);
    const blocks: Buffer[] = []; // newest first
    let pos = size;
    let found = 0;
    let start = -1; // file offset where the result starts, once known
    while (pos > floor && start < 0) {
      const from = Math.max(floor, pos - BLOCK);
      const block = readAt(fd, from, pos - from);
      if (block.length !== pos - from) throw new Error("file shrank while being read");
      blocks.push(block);
      // The file's last byte, if a newline, ends the last line rather than separating two.
      let i = block.length - 1;
      if (pos === size && block[i] === NL) i--;
      while (i >= 0) {
        const at = block.lastIndexOf(NL, i);
        if (at < 0) break;
        if (++found === n) {
          start = from + at + 1;
          break;
        }
        i = at - 1;
      }
      pos = from;
    }
    const all = Buffer.concat(blocks.reverse());
    if (start >= 0) return all.subarray(start - pos);
    if (floor === 0) return all;
    // The window is full and holds fewer than n lines: skip the partial line it starts with, if it can.
    const nl = all.indexOf(NL);
    return nl >= 0 && nl < all.length - 1 ? all.subarray(nl + 1) : all;
  } catch {
    return EMPTY;
  } finally {
    closeSync(fd);
  }
}
