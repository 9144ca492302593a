/**
 * Background processes the server is attached to. The agent lets one client attach to a process at a time, so the
 * server attaches once per process and shares it: any number of HTTP readers follow its output (each starting with
 * the latest 64 KiB), stdin and signals go through the same attachment, and the exit is kept for late readers.
 * Memory per process is bounded (two 64 KiB rings); a reader that cannot keep up is cut off, not buffered for.
 */
import type { Process } from "../sandbox/commands.js";
import type { SmolVM } from "../sandbox/smolvm.js";

const RING = 64 << 10;
/** A reader whose socket holds this much unsent output is too slow: it is disconnected. */
export const SLOW_READER_BYTES = 4 << 20;

export type Chunk = { stream: "stdout" | "stderr"; data: Buffer };
export interface ExitInfo {
  exitCode: number;
  signal: number | null;
}

export interface Reader {
  chunk(c: Chunk): void;
  exit(e: ExitInfo | { error: string }): void;
}

class Ring {
  private parts: Buffer[] = [];
  private size = 0;
  push(b: Buffer): void {
    this.parts.push(b);
    this.size += b.length;
    while (this.size > RING && this.parts.length > 1) this.size -= (this.parts.shift() as Buffer).length;
    if (this.size > RING) {
      const only = this.parts[0] as Buffer;
      this.parts = [only.subarray(only.length - RING)];
      this.size = RING;
    }
  }
  get(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export class Attached {
  private readonly rings = { stdout: new Ring(), stderr: new Ring() };
  private readonly readers = new Set<Reader>();
  result: ExitInfo | { error: string } | null = null;

  constructor(
    readonly pid: number,
    private readonly proc: Process,
    onEnd: () => void,
  ) {
    for (const stream of ["stdout", "stderr"] as const) {
      proc[stream].on("data", (data: Buffer) => {
        this.rings[stream].push(data);
        for (const r of this.readers) r.chunk({ stream, data });
      });
    }
    proc.wait().then(
      (r) => this.finish({ exitCode: r.exitCode, signal: r.signal }),
      (e: unknown) => this.finish({ error: e instanceof Error ? e.message : String(e) }),
    );
    this.onEnd = onEnd;
  }
  private readonly onEnd: () => void;

  private finish(r: ExitInfo | { error: string }): void {
    this.result = r;
    for (const reader of this.readers) reader.exit(r);
    this.readers.clear();
    this.onEnd();
  }

  /** Follow: replays the kept output, then live chunks, then the exit. Returns a function that stops following. */
  follow(reader: Reader): () => void {
    for (const stream of ["stdout", "stderr"] as const) {
      const kept = this.rings[stream].get();
      if (kept.length) reader.chunk({ stream, data: kept });
    }
    if (this.result) {
      reader.exit(this.result);
      return () => {};
    }
    this.readers.add(reader);
    return () => this.readers.delete(reader);
  }

  write(data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.proc.stdin.write(data, (e) => (e ? reject(e) : resolve())));
  }

  closeStdin(): void {
    this.proc.stdin.end();
  }

  kill(signal: number): Promise<void> {
    return this.proc.kill(signal);
  }
}

/** The server's attachments, by VM and pid. A finished process is dropped a minute after it ends. */
export class Attachments {
  private readonly map = new Map<string, Promise<Attached>>();

  async get(vm: SmolVM, pid: number): Promise<Attached> {
    const key = `${vm.vmId}/${pid}`;
    let a = this.map.get(key);
    if (!a) {
      a = vm.processes.connect(pid, { maxOutputBytes: RING }).then(
        (proc) =>
          new Attached(pid, proc, () => {
            setTimeout(() => this.map.delete(key), 60_000).unref();
          }),
      );
      this.map.set(key, a);
      a.catch(() => this.map.delete(key));
    }
    return a;
  }

  /** Forget every attachment of a VM (it was deleted). */
  dropVm(vmId: string): void {
    for (const k of this.map.keys()) if (k.startsWith(`${vmId}/`)) this.map.delete(k);
  }
}
