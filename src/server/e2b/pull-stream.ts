/**
 * A Readable fed by a producer that honours backpressure: `offer` returns a promise while the reader is behind
 * (settled when it reads again), and rejects once the stream is destroyed (the client went away), so the producer
 * stops instead of queueing.
 */
import { Readable } from "node:stream";

export class PullStream extends Readable {
  private waiting: { resolve: () => void; reject: (e: Error) => void } | null = null;

  constructor(highWaterMark = 1 << 20) {
    super({ highWaterMark });
  }

  override _read(): void {
    const w = this.waiting;
    this.waiting = null;
    w?.resolve();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    const w = this.waiting;
    this.waiting = null;
    w?.reject(err ?? new Error("the client went away"));
    cb(err);
  }

  /** Hand on a chunk; a returned promise means "wait until the reader wants more". */
  offer(chunk: Buffer): Promise<void> | undefined {
    if (this.destroyed) return Promise.reject(new Error("the client went away"));
    if (this.push(chunk)) return undefined;
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }
}
