/**
 * Guest-to-host transfers, bounded whatever the guest sends: every one has a byte limit (by default what the
 * destination's file system can take while keeping a safety margin free), copies regular files only unless asked
 * (a link to /dev/zero never ends), keeps runs of zeros as holes, stops at the limit with `TransferLimitError`, and
 * leaves nothing behind when it fails or the process is killed (the temporary name is in the journal).
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statfsSync } from "node:fs";
import { dirname } from "node:path";
import type { AgentClient, OpHandle } from "../agent/client.js";
import { FF, type Field, FL, fieldString, ST, T, u32 } from "../agent/codec.js";
import { ConfigError, FileSystemError } from "../errors.js";
import { tempPath } from "../state/journal.js";
import { StateStore } from "../state/store.js";
import { SparseWriter } from "../util/sparse.js";
import { type ExtractStats, extractTar, TransferLimitError } from "./tar.js";

export interface TransferOptions {
  /**
   * Stop, keeping nothing, once the guest has sent more than this many bytes. Default: the free space of the
   * destination's file system less a margin (512 MiB or 5% of its size, whichever is larger).
   */
  maxBytes?: number;
  /** Also copy what is not a regular file (a device or fifo may never end): off by default. */
  allowSpecial?: boolean;
  /** Called as data arrives with the bytes received so far (for a folder: of the archive, headers included). */
  onProgress?: (bytes: number) => void;
}

/** What the destination can take while keeping a margin free. */
export function defaultTransferLimit(dest: string): number {
  const fs = statfsSync(dirname(dest));
  const free = fs.bavail * fs.bsize;
  const margin = Math.max(512 << 20, Math.floor(fs.blocks * fs.bsize * 0.05));
  return Math.max(0, free - margin);
}

export function transferLimit(dest: string, maxBytes: number | undefined): number {
  if (maxBytes === undefined) return defaultTransferLimit(dest);
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) {
    throw new ConfigError("maxBytes", `must be a whole number of bytes >= 0, got ${maxBytes}`);
  }
  return maxBytes;
}

/** Stop a file read in the guest (the agent closes the file) and stop listening to it. */
function cancelRead(client: AgentClient, h: OpHandle, e: Error): void {
  client.send(T.SIGNAL, h.streamId, u32(9)).catch(() => {});
  client.abandon(h.streamId, e);
}

/**
 * Read a guest file through `onData` with a byte limit: past `max` bytes (the first `max` delivered) the read is
 * cancelled in the guest and the promise rejects with `onOver()`'s error. Only regular files unless `allowSpecial`.
 */
export async function readBounded(
  client: AgentClient,
  path: string,
  max: number,
  /** `onData` may return a promise: the guest is held back until it settles (backpressure). */
  opts: { allowSpecial?: boolean; onData: (b: Buffer) => unknown; onOver: () => Error },
): Promise<Field[]> {
  let total = 0;
  let h: OpHandle | null = null;
  const flags = opts.allowSpecial ? 0 : FL.REGULAR;
  h = client.op(
    T.FREAD,
    [
      [FF.PATH, path],
      [FF.FLAGS, u32(flags)],
    ],
    (b) => {
      total += b.length;
      if (total > max) {
        const room = max - (total - b.length);
        if (room > 0) opts.onData(b.subarray(0, room)); // exactly `max` bytes were delivered
        cancelRead(client, h as OpHandle, opts.onOver());
        return;
      }
      return opts.onData(b);
    },
  );
  const started = await h.started;
  // an agent without FL_REGULAR says what it opened: refuse it here too
  const type = fieldString(started, ST.TYPE);
  if (!opts.allowSpecial && type !== undefined && type !== "f") {
    const e = new FileSystemError(path, "EINVAL", `${path}: not a regular file (pass allowSpecial to copy it)`);
    cancelRead(client, h, e);
    throw e;
  }
  return h.done;
}

/**
 * Copy a guest file to `localPath`: written as it arrives, holes kept, into a temporary file renamed into place
 * only when complete.
 */
export async function downloadFile(
  client: AgentClient,
  guestPath: string,
  localPath: string,
  opts: TransferOptions = {},
): Promise<{ path: string; bytes: number }> {
  const max = transferLimit(localPath, opts.maxBytes);
  const tmp = tempPath(StateStore.open(), `${localPath}.smolvm-${process.pid}-${Date.now()}.tmp`);
  const fd = openSync(tmp.path, "wx", 0o600);
  const out = new SparseWriter(fd);
  let closed = false;
  try {
    await readBounded(client, guestPath, max, {
      allowSpecial: opts.allowSpecial,
      onData: (b) => {
        out.write(b);
        opts.onProgress?.(out.position);
      },
      onOver: () => new TransferLimitError(max, guestPath),
    });
    out.finish();
    fsyncSync(fd);
    closeSync(fd);
    closed = true;
    renameSync(tmp.path, localPath);
    tmp.done();
    return { path: localPath, bytes: out.position };
  } catch (e) {
    if (!closed) closeSync(fd);
    tmp.discard();
    throw e;
  }
}

/**
 * An async-iterable queue of chunks with backpressure: `push` returns a promise while more than `high` bytes wait,
 * which the agent client takes as "not consumed yet", so the guest is slowed instead of the queue growing.
 */
export class ChunkQueue implements AsyncIterable<Buffer> {
  private chunks: Buffer[] = [];
  private size = 0;
  private done = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;
  private drained: Array<() => void> = [];
  constructor(private readonly high = 8 << 20) {}
  push(b: Buffer): Promise<void> | undefined {
    if (this.error) return; // failed: drop, never grow
    this.chunks.push(b);
    this.size += b.length;
    this.wake?.();
    if (this.size <= this.high) return;
    return new Promise((r) => this.drained.push(r));
  }
  end(): void {
    this.done = true;
    this.wake?.();
  }
  fail(e: Error): void {
    this.error ??= e;
    this.wake?.();
    for (const r of this.drained.splice(0)) r();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      if (this.error) throw this.error;
      const b = this.chunks.shift();
      if (b) {
        this.size -= b.length;
        if (this.size <= this.high / 2) for (const r of this.drained.splice(0)) r();
        yield b;
        continue;
      }
      if (this.done) return;
      await new Promise<void>((r) => {
        this.wake = r;
      });
      this.wake = null;
    }
  }
}

/** The chunks of `source`, reporting the running total to `onProgress`. */
export async function* counted(
  source: AsyncIterable<Buffer>,
  onProgress?: (bytes: number) => void,
): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const b of source) {
    n += b.length;
    onProgress?.(n);
    yield b;
  }
}

/**
 * Copy a guest folder to `localDir` (which must not exist) from the guest's `tar`, treated as hostile (see
 * `extractTar`), with a byte limit; extracted into a temporary folder renamed into place only on success.
 */
export async function downloadFolder(
  client: AgentClient,
  guestDir: string,
  localDir: string,
  opts: Omit<TransferOptions, "allowSpecial"> = {},
): Promise<{ path: string } & ExtractStats> {
  const max = transferLimit(localDir, opts.maxBytes);
  const tmp = tempPath(StateStore.open(), `${localDir}.smolvm-${process.pid}-${Date.now()}.tmp`);
  mkdirSync(tmp.path, { mode: 0o700 });
  const queue = new ChunkQueue();
  let stderr = "";
  const h = client.exec(
    { argv: ["tar", "-c", "-f", "-", "-C", guestDir, "."] },
    {
      onStdout: (b) => queue.push(b),
      onStderr: (b) => {
        stderr = (stderr + b.toString()).slice(-2000);
      },
    },
  );
  h.exited.then(
    () => queue.end(),
    (e) => queue.fail(e),
  );
  try {
    const stats = await extractTar(counted(queue, opts.onProgress), tmp.path, { maxBytes: max });
    const exit = await h.exited;
    if (exit.exitCode !== 0) throw new FileSystemError(guestDir, "ETAR", `guest tar failed: ${stderr.trim()}`);
    renameSync(tmp.path, localDir);
    tmp.done();
    return { path: localDir, ...stats };
  } catch (e) {
    queue.fail(e as Error);
    h.kill(9).catch(() => {});
    client.abandon(h.streamId, e as Error); // whatever the guest still sends on it is dropped
    tmp.discard();
    rmSync(tmp.path, { recursive: true, force: true });
    throw e;
  }
}
