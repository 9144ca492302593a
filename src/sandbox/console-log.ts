import { closeSync, openSync, readSync, statSync } from "node:fs";

/** The last `bytes` of a VM's serial console log ("" if there is none). */
export function tailFile(path: string, bytes = 4096): string {
  try {
    const size = statSync(path).size;
    const fd = openSync(path, "r");
    try {
      const len = Math.min(size, bytes);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, size - len);
      return buf.toString("utf8");
    } finally {
      closeSync(fd);
    }
  } catch {
    return "";
  }
}
