/** A writer of "newc" cpio archives, the format the Linux kernel unpacks as an initramfs. */

export interface CpioEntry {
  path: string; // without a leading slash
  mode: number; // including the file type bits
  data?: Buffer;
  rdev?: [major: number, minor: number];
}

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;

const hex = (n: number) => n.toString(16).padStart(8, "0");
const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);

function header(ino: number, e: CpioEntry, size: number, nameLen: number): Buffer {
  const [maj, min] = e.rdev ?? [0, 0];
  const fields = [ino, e.mode, 0, 0, e.mode & S_IFDIR ? 2 : 1, 0, size, 0, 0, maj, min, nameLen, 0];
  return Buffer.from(`070701${fields.map(hex).join("")}`, "ascii");
}

export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let off = 0;
  const push = (b: Buffer) => {
    parts.push(b);
    off += b.length;
  };
  const all = [...entries, { path: "TRAILER!!!", mode: 0 }];
  all.forEach((e, i) => {
    const name = Buffer.from(`${e.path}\0`, "utf8");
    const data = e.data ?? Buffer.alloc(0);
    push(header(e.path === "TRAILER!!!" ? 0 : i + 1, e, data.length, name.length));
    push(name);
    push(pad4(off));
    push(data);
    push(pad4(off));
  });
  return Buffer.concat(parts);
}
