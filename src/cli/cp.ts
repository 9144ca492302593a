/**
 * `smolvm cp SRC DST` with `cp` / `docker cp` rules (src/sandbox/copy-rules.ts), host to guest or back, and `-` for
 * a tar stream on stdin (extracted into a guest folder) or stdout (of a guest file or folder).
 *
 * Nothing half-written is left: a host destination is written under a temporary name (in the journal) and renamed
 * into place; a guest folder is extracted into a temporary folder next to its destination, then renamed into place
 * or merged into the existing folder, and that temporary folder is removed on failure or Ctrl-C.
 */
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { createReadStream, lstatSync, mkdirSync, statSync } from "node:fs";
import { join, posix, resolve } from "node:path";
import { Readable } from "node:stream";
import type { Command } from "commander";
import { ConfigError, FileNotFoundError, FileSystemError, SmolVMError } from "../errors.js";
import { stateDir } from "../paths.js";
import {
  CopyError,
  type CopyPlan,
  checkStdinDestination,
  endsWithDot,
  type PathKind,
  planCopy,
  stripTrailing,
} from "../sandbox/copy-rules.js";
import { hostTreeOps, mergeTree, type TreeOps } from "../sandbox/merge-tree.js";
import { SmolVM } from "../sandbox/smolvm.js";
import { packDir } from "../sandbox/tar.js";
import { counted } from "../sandbox/transfers.js";
import { tempPath } from "../state/journal.js";
import { StateStore } from "../state/store.js";
import { onInterrupt } from "./cleanup.js";
import { printJson } from "./output.js";
import { ByteProgress } from "./progress.js";

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

/** What `cp --json` prints. */
export interface CpResult {
  /** The source as read: a host path (absolute) or `ID:/path`, or `-` for stdin. */
  source: string;
  /** The final path written: a host path (absolute) or `ID:/path`, or `-` for stdout. */
  destination: string;
  /** Bytes of file data copied (with `-` as the source: the size of the tar stream). */
  bytes: number;
  type: "file" | "dir";
}

interface CpOptions {
  json?: boolean;
  maxSize?: string;
  allowSpecial?: boolean;
}

interface Ctx {
  vm: SmolVM;
  /** The VM as the user wrote it, for messages and output. */
  ref: string;
  progress: ByteProgress;
  maxBytes: number | undefined;
  allowSpecial: boolean | undefined;
}

/** `abs` with the trailing `/` or `/.` of `raw` kept: they change the rules. */
function withSuffix(raw: string, abs: string): string {
  const base = stripTrailing(abs);
  if (endsWithDot(raw)) return base === "/" ? "/." : `${base}/.`;
  return raw.endsWith("/") && base !== "/" ? `${base}/` : base;
}

const hostPath = (raw: string) => withSuffix(raw, resolve(raw));
const guestPath = (raw: string) => withSuffix(raw, posix.normalize(raw));

function hostKind(p: string): PathKind {
  try {
    return statSync(p).isDirectory() ? "dir" : "file";
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" && code !== "ENOTDIR") throw e;
    try {
      lstatSync(p); // a dangling symlink: replaced like a file
      return "file";
    } catch {
      return "missing";
    }
  }
}

async function guestKind(vm: SmolVM, p: string): Promise<PathKind> {
  try {
    const st = await vm.files.stat(p);
    if (st.type === "dir") return "dir";
    if (st.type !== "symlink") return "file";
    try {
      return (await vm.files.stat(p === "/" ? "/." : `${p}/.`)).type === "dir" ? "dir" : "file";
    } catch {
      return "file";
    }
  } catch (e) {
    if (e instanceof FileNotFoundError || (e instanceof FileSystemError && e.code === "ENOTDIR")) return "missing";
    throw e;
  }
}

function guestTreeOps(c: Ctx): TreeOps {
  return {
    entries: async (dir) =>
      new Map((await c.vm.files.list(dir)).map((e) => [e.name, e.type === "dir" ? "dir" : "other"] as const)),
    rename: (from, to) => c.vm.files.rename(from, to),
    show: (p) => `${c.ref}:${p}`,
  };
}

/**
 * Extract `tar` into a temporary guest folder next to `dest` (a new folder, `create`) or inside it (`merge`),
 * then rename it into place or merge its contents in. On failure or Ctrl-C the guest's tar is killed and the
 * temporary folder removed.
 */
async function intoGuestFolder(
  c: Ctx,
  dest: string,
  action: CopyPlan["action"],
  tar: AsyncIterable<Buffer>,
  mode?: number,
): Promise<void> {
  const create = action === "create";
  const tag = `smolvm-cp-${randomBytes(6).toString("hex")}`;
  const tmp = create ? posix.join(posix.dirname(dest), `.${posix.basename(dest)}.${tag}`) : posix.join(dest, `.${tag}`);
  const abort = new AbortController();
  let work: Promise<void> | undefined;
  // registered first: a Ctrl-C while the folder is being made still removes it (the agent keeps the order)
  const cancel = onInterrupt(async () => {
    abort.abort(new SmolVMError("cp: interrupted"));
    if (work) await work.catch(() => {});
    else await c.vm.files.remove(tmp, { recursive: true }).catch(() => {});
  });
  try {
    await c.vm.files.mkdir(tmp, { parents: false, mode: create && mode !== undefined ? mode : 0o700 });
    work = (async () => {
      try {
        await c.vm.files.untar(tmp, tar, { signal: abort.signal });
        if (create) await c.vm.files.rename(tmp, dest);
        else {
          await mergeTree(guestTreeOps(c), tmp, dest);
          await c.vm.files.remove(tmp, { recursive: true });
        }
      } catch (e) {
        await c.vm.files.remove(tmp, { recursive: true }).catch(() => {});
        throw e;
      }
    })();
    await work;
  } finally {
    cancel();
  }
}

async function toGuest(c: Ctx, srcRaw: string, dstRaw: string): Promise<CpResult> {
  const src = hostPath(srcRaw);
  const plan = await planCopy(src, hostKind(stripTrailing(src)), guestPath(dstRaw), (p) => guestKind(c.vm, p), {
    src: (p) => p,
    dst: (p) => `${c.ref}:${p}`,
  });
  const st = statSync(plan.source);
  const destination = `${c.ref}:${plan.destination}`;
  if (plan.type === "file") {
    if (!st.isFile()) throw new CopyError(plan.source, `${plan.source} is not a regular file`);
    const data = Readable.from(counted(createReadStream(plan.source, { highWaterMark: 1 << 16 }), c.progress.update));
    const r = await c.vm.files.write(plan.destination, data, { mode: st.mode & 0o7777 });
    return { source: plan.source, destination, bytes: r.bytesWritten, type: "file" };
  }
  const stats = { files: 0, bytes: 0 };
  await intoGuestFolder(
    c,
    plan.destination,
    plan.action,
    counted(packDir(plan.source, stats), c.progress.update),
    st.mode & 0o7777,
  );
  return { source: plan.source, destination, bytes: stats.bytes, type: "dir" };
}

async function toHost(c: Ctx, srcRaw: string, dstRaw: string): Promise<CpResult> {
  const src = guestPath(srcRaw);
  const plan = await planCopy(
    src,
    await guestKind(c.vm, stripTrailing(src)),
    hostPath(dstRaw),
    async (p) => hostKind(p),
    {
      src: (p) => `${c.ref}:${p}`,
      dst: (p) => p,
    },
  );
  const opts = { maxBytes: c.maxBytes, onProgress: c.progress.update };
  const source = `${c.ref}:${plan.source}`;
  if (plan.type === "file") {
    const r = await c.vm.downloadFile(plan.source, plan.destination, { ...opts, allowSpecial: c.allowSpecial });
    return { source, destination: plan.destination, bytes: r.bytes, type: "file" };
  }
  if (plan.action === "create") {
    const r = await c.vm.downloadDir(plan.source, plan.destination, opts);
    return { source, destination: plan.destination, bytes: r.bytes, type: "dir" };
  }
  // into an existing folder: received whole into a temporary folder inside it, then merged
  const tmp = tempPath(StateStore.open(), join(plan.destination, `.smolvm-cp-${process.pid}-${Date.now()}`));
  try {
    const r = await c.vm.downloadDir(plan.source, tmp.path, opts);
    await mergeTree(hostTreeOps, tmp.path, plan.destination);
    return { source, destination: plan.destination, bytes: r.bytes, type: "dir" };
  } finally {
    tmp.discard();
  }
}

/** `-` as SRC: the tar stream on stdin is extracted into the existing guest folder DST. */
async function fromStdin(c: Ctx, dstRaw: string): Promise<CpResult> {
  if (process.stdin.isTTY) {
    throw new CopyError("-", "- reads a tar stream from stdin, which is a terminal: pipe an archive in");
  }
  const dst = stripTrailing(guestPath(dstRaw));
  checkStdinDestination(dstRaw, await guestKind(c.vm, dst), `${c.ref}:${dstRaw}`);
  let bytes = 0;
  const input = counted(process.stdin as AsyncIterable<Buffer>, (n) => {
    bytes = n;
    c.progress.update(n);
  });
  await intoGuestFolder(c, dst, "merge", input);
  return { source: "-", destination: `${c.ref}:${dst}`, bytes, type: "dir" };
}

/**
 * `-` as DST: the guest's SRC as a tar stream on stdout, its entries named from basename(SRC) (SRC's contents for
 * `SRC/.`). What the guest sends is received like any download (bounded, unsafe entries refused) into a journaled
 * temporary folder of the state dir, then packed from there: a hostile guest's archive never reaches stdout.
 */
async function toStdout(c: Ctx, srcRaw: string): Promise<CpResult> {
  const src = guestPath(srcRaw);
  const source = stripTrailing(src);
  const kind = await guestKind(c.vm, source);
  if (kind === "missing") throw new CopyError(src, `${c.ref}:${src} does not exist`);
  const contents = endsWithDot(src) || source === "/";
  if (kind === "file" && (contents || src.endsWith("/"))) {
    throw new CopyError(src, `${c.ref}:${src} is not a folder: a source ending in / or /. must be a folder`);
  }
  const work = tempPath(StateStore.open(), join(stateDir(), `cp-${process.pid}-${Date.now()}.tmp`));
  try {
    mkdirSync(work.path, { mode: 0o700 });
    const target = join(work.path, contents ? "contents" : posix.basename(source));
    const opts = { maxBytes: c.maxBytes, onProgress: c.progress.update };
    const r =
      kind === "dir"
        ? await c.vm.downloadDir(source, target, opts)
        : await c.vm.downloadFile(source, target, { ...opts, allowSpecial: c.allowSpecial });
    for await (const chunk of packDir(contents ? target : work.path)) {
      if (!process.stdout.write(chunk)) await once(process.stdout, "drain");
    }
    return { source: `${c.ref}:${source}`, destination: "-", bytes: r.bytes, type: kind };
  } finally {
    work.discard();
  }
}

async function cp(srcArg: string, dstArg: string, o: CpOptions): Promise<void> {
  const src = parseCpPath(srcArg);
  const dst = parseCpPath(dstArg);
  if (!!src.vm === !!dst.vm) {
    throw new ConfigError("cp", "exactly one side must be a guest path written as ID:/absolute/path");
  }
  if (!dst.vm && dst.path === "-" && o.json) {
    throw new ConfigError("json", "cannot be used with - as the destination: stdout carries the tar stream");
  }
  const ref = (src.vm ?? dst.vm) as string;
  const c: Ctx = {
    vm: await SmolVM.fromId(ref),
    ref,
    progress: new ByteProgress(!o.json && process.stderr.isTTY === true, "cp"),
    maxBytes: parseSize("maxBytes", o.maxSize),
    allowSpecial: o.allowSpecial,
  };
  try {
    let r: CpResult;
    if (dst.vm) r = src.path === "-" ? await fromStdin(c, dst.path) : await toGuest(c, src.path, dst.path);
    else r = dst.path === "-" ? await toStdout(c, src.path) : await toHost(c, src.path, dst.path);
    c.progress.finish();
    if (o.json) printJson(r);
  } finally {
    c.progress.end();
    c.vm.close();
  }
}

export function registerCp(program: Command): void {
  program
    .command("cp <src> <dst>")
    .description(
      "copy files or folders between host and guest (docker cp rules); a guest path is ID:/path; - is a tar stream on stdin or stdout",
    )
    .option(
      "--max-size <bytes>",
      "stop a copy from the guest past this size (K, M, G, T suffixes; default: what the destination can take, keeping a margin free)",
    )
    .option("--allow-special", "also copy a guest device or fifo (which may never end)")
    .option("--json", "print JSON: {source, destination, bytes, type}")
    .action(cp);
}
