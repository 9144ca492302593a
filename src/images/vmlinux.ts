/**
 * The uncompressed ELF `vmlinux` inside an x86 bzImage, for VMMs that load ELF kernels only (Firecracker on x86_64).
 *
 * A bzImage is a real-mode setup part (`setup_sects` + 1 sectors) followed by the protected-mode part; from boot
 * protocol 2.08 its header gives the compressed kernel's place in the latter (`payload_offset` at 0x248,
 * `payload_length` at 0x24c). The payload's format is told by its magic. Every format but gzip has its uncompressed
 * size appended as a little-endian u32 (the kernel's `size_append`), which the result is checked against.
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  copyFileSync,
  createReadStream,
  existsSync,
  mkdirSync,
  openSync,
  readSync,
  statSync,
} from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { ImageError } from "../errors.js";
import { dataDir } from "../paths.js";
import { which } from "../util/run.js";
import { decodeLz4Legacy } from "./lz4.js";

export type PayloadFormat = "gzip" | "xz" | "zstd" | "lzma" | "lz4" | "bzip2" | "lzo";

export type KernelImage =
  | { kind: "elf"; problem: string | null }
  | {
      kind: "bzimage";
      protocol: string;
      format: PayloadFormat | null;
      /** Byte offset of the payload in the file, and its length. */
      offset: number;
      length: number;
    }
  | { kind: "unknown"; problem: string };

/** Out of a decompressor: a vmlinux bigger than this is not a kernel. */
const OUTPUT_MAX = 1 << 30;
const TOOL_TIMEOUT_MS = 180_000;

const MAGICS: [PayloadFormat, number[]][] = [
  ["gzip", [0x1f, 0x8b, 0x08]],
  ["xz", [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ["zstd", [0x28, 0xb5, 0x2f, 0xfd]],
  ["lz4", [0x02, 0x21, 0x4c, 0x18]],
  ["bzip2", [0x42, 0x5a, 0x68]],
  ["lzo", [0x89, 0x4c, 0x5a, 0x4f]],
  ["lzma", [0x5d, 0x00, 0x00]],
];

export function payloadFormat(head: Buffer): PayloadFormat | null {
  return MAGICS.find(([, m]) => m.every((b, i) => head[i] === b))?.[0] ?? null;
}

/** Null if `head` (the first 64 bytes) starts an ELF64 little-endian x86-64 executable, else what it is instead. */
export function elfProblem(head: Buffer): string | null {
  if (head.length < 64 || head.readUInt32BE(0) !== 0x7f454c46) return "not an ELF file";
  if (head[4] !== 2) return "a 32-bit ELF, not ELF64";
  if (head[5] !== 1) return "a big-endian ELF";
  const type = head.readUInt16LE(16);
  if (type !== 2) return `an ELF of type ${type}, not an executable (ET_EXEC)`;
  const machine = head.readUInt16LE(18);
  if (machine !== 62) return `an ELF for machine ${machine}, not x86-64 (62)`;
  return null;
}

function readAt(fd: number, at: number, n: number): Buffer {
  const buf = Buffer.alloc(n);
  const got = readSync(fd, buf, 0, n, at);
  return buf.subarray(0, got);
}

/** What kind of kernel image `path` is (reads its headers only). Throws ImageError if it cannot be read. */
export function inspectKernelImage(path: string): KernelImage {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new ImageError(`cannot read kernel ${path}: ${(e as Error).message}`);
  }
  try {
    const size = statSync(path).size;
    const head = readAt(fd, 0, 0x268);
    if (head.length >= 4 && head.readUInt32BE(0) === 0x7f454c46) return { kind: "elf", problem: elfProblem(head) };
    if (head.length < 0x268 || head.toString("latin1", 0x202, 0x206) !== "HdrS") {
      return { kind: "unknown", problem: "neither an ELF vmlinux nor an x86 bzImage (no HdrS boot header)" };
    }
    const ver = head.readUInt16LE(0x206);
    const protocol = `${ver >> 8}.${String(ver & 0xff).padStart(2, "0")}`;
    if (ver < 0x208)
      return { kind: "unknown", problem: `bzImage boot protocol ${protocol} predates 2.08 (no payload)` };
    const setupSects = head[0x1f1] || 4;
    const offset = (setupSects + 1) * 512 + head.readUInt32LE(0x248);
    const length = head.readUInt32LE(0x24c);
    if (length < 8 || offset + length > size) {
      return { kind: "unknown", problem: `bzImage payload (${length} bytes at ${offset}) lies outside the file` };
    }
    return { kind: "bzimage", protocol, format: payloadFormat(readAt(fd, offset, 8)), offset, length };
  } finally {
    closeSync(fd);
  }
}

const TOOLS: Record<Exclude<PayloadFormat, "lz4">, [string, string[], string]> = {
  gzip: ["gzip", ["-dc"], "gzip"],
  xz: ["xz", ["-dc"], "xz-utils"],
  lzma: ["xz", ["--format=lzma", "-dc"], "xz-utils"],
  zstd: ["zstd", ["-dc"], "zstd"],
  bzip2: ["bzip2", ["-dc"], "bzip2"],
  lzo: ["lzop", ["-dc"], "lzop"],
};

/** Pipe `length` bytes at `offset` of `input` through a host decompressor into `out`, bounded in size and time. */
async function viaTool(
  format: Exclude<PayloadFormat, "lz4">,
  input: string,
  offset: number,
  length: number,
  write: (b: Buffer) => Promise<void>,
): Promise<number> {
  const [name, args, pkg] = TOOLS[format];
  const tool = which(name);
  if (!tool)
    throw new ImageError(
      `${basename(input)}: its kernel is ${format}-compressed and ${name} is missing (apt-get install ${pkg})`,
    );
  const child = spawn(tool, args, { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    if (stderr.length < 4096) stderr += d.toString("utf8");
  });
  child.stdin.on("error", () => {}); // EPIPE when the tool stops early; its exit status says why
  const exited = new Promise<number | null>((res) => child.on("close", (code) => res(code)));
  const timer = setTimeout(() => child.kill("SIGKILL"), TOOL_TIMEOUT_MS);
  createReadStream(input, { start: offset, end: offset + length - 1 }).pipe(child.stdin);
  let total = 0;
  try {
    for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
      total += chunk.length;
      if (total > OUTPUT_MAX) {
        child.kill("SIGKILL");
        throw new ImageError(`${input}: decompressed kernel exceeds ${OUTPUT_MAX >> 20} MiB`);
      }
      await write(chunk);
    }
    const code = await exited;
    if (code !== 0) {
      const why = code === null ? `killed (timeout ${TOOL_TIMEOUT_MS / 1000} s)` : `exit ${code}`;
      throw new ImageError(
        `${input}: ${name} ${args.join(" ")} failed on its ${format} payload (${why}): ${stderr.trim().slice(0, 500)}`,
      );
    }
    return total;
  } finally {
    clearTimeout(timer);
    child.kill("SIGKILL");
  }
}

/**
 * Write the ELF vmlinux inside `bzImage` to `out` (through a temporary file beside it, renamed into place). An
 * input that already is an ELF vmlinux is copied. Throws ImageError naming the file on anything else.
 */
export async function extractVmlinux(bzImage: string, out: string): Promise<void> {
  const img = inspectKernelImage(bzImage);
  if (img.kind === "unknown") throw new ImageError(`${bzImage}: ${img.problem}`);
  if (img.kind === "elf" && img.problem) throw new ImageError(`${bzImage}: ${img.problem}`);
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    if (img.kind === "elf") copyFileSync(bzImage, tmp);
    else await decompress(bzImage, img, tmp);
    const fd = openSync(tmp, "r");
    let problem: string | null;
    try {
      problem = elfProblem(readAt(fd, 0, 64));
    } finally {
      closeSync(fd);
    }
    if (problem) throw new ImageError(`${bzImage}: the decompressed kernel is ${problem}`);
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
}

async function decompress(bzImage: string, img: Extract<KernelImage, { kind: "bzimage" }>, tmp: string): Promise<void> {
  if (!img.format) throw new ImageError(`${bzImage}: unknown compression of its kernel payload`);
  // every format but gzip carries the uncompressed size as its last 4 bytes, outside the compressed stream
  let expect: number | null = null;
  let length = img.length;
  if (img.format !== "gzip") {
    const fd = openSync(bzImage, "r");
    try {
      expect = readAt(fd, img.offset + img.length - 4, 4).readUInt32LE(0);
    } finally {
      closeSync(fd);
    }
    length -= 4;
  }
  const fh = await open(tmp, "wx", 0o644);
  let total: number;
  try {
    const write = async (b: Buffer) => {
      await fh.write(b);
    };
    if (img.format === "lz4") {
      total = await decodeLz4Legacy(bzImage, img.offset, length, write).catch((e: Error) => {
        throw e instanceof ImageError ? e : new ImageError(`${bzImage}: bad lz4 payload: ${e.message}`);
      });
    } else total = await viaTool(img.format, bzImage, img.offset, length, write);
  } finally {
    await fh.close();
  }
  if (expect !== null && total !== expect) {
    throw new ImageError(
      `${bzImage}: ${img.format} payload decompressed to ${total} bytes, its trailer says ${expect}`,
    );
  }
}

/** Null if `path` is an ELF64 x86-64 executable, else what it is. */
export function vmlinuxProblem(path: string): string | null {
  const img = inspectKernelImage(path);
  return img.kind === "elf" ? img.problem : img.kind === "bzimage" ? "a bzImage, not an ELF vmlinux" : img.problem;
}

/** Where the vmlinux of `kernelPath` is cached: beside a kernel SmolVM fetched, else in the data dir. */
export function vmlinuxCachePath(kernelPath: string): string {
  const abs = resolve(kernelPath);
  const kernels = join(dataDir(), "kernels");
  if (dirname(dirname(abs)) === kernels) return join(dirname(abs), "vmlinux");
  const s = statSync(abs);
  const id = createHash("sha256").update(`${abs}\0${s.size}\0${s.mtimeMs}`).digest("hex").slice(0, 16);
  return join(dataDir(), "vmlinux", `${basename(abs)}-${id}`);
}

/**
 * An ELF vmlinux for `kernelPath`: the kernel itself when it is one, else extracted once and cached (atomically)
 * by `vmlinuxCachePath`.
 */
export async function ensureVmlinux(kernelPath: string): Promise<string> {
  const img = inspectKernelImage(kernelPath);
  if (img.kind === "elf") {
    if (img.problem) throw new ImageError(`${kernelPath}: ${img.problem}`);
    return kernelPath;
  }
  const out = vmlinuxCachePath(kernelPath);
  if (existsSync(out) && vmlinuxProblem(out) === null && statSync(out).mtimeMs >= statSync(kernelPath).mtimeMs) {
    return out;
  }
  await extractVmlinux(kernelPath, out);
  return out;
}
