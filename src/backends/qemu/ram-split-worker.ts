/** Runs `splitRam` / `joinRam` off the main thread (they read and write hundreds of MiB synchronously). */
import { parentPort, workerData } from "node:worker_threads";
import { joinRam, type RamJoinPoint, splitRam, UnsupportedStreamError } from "./ram-split.js";

export type RamJob =
  | { op: "split"; streamPath: string; out: { block: string; ramPath: string; ramBytes: number; strippedPath: string } }
  | {
      op: "join";
      strippedPath: string;
      ram: { block: string; path: string; bytes: number };
      at: RamJoinPoint;
      outPath: string;
    };

const job = workerData as RamJob;
try {
  const result =
    job.op === "split" ? splitRam(job.streamPath, job.out) : joinRam(job.strippedPath, job.ram, job.at, job.outPath);
  parentPort?.postMessage({ ok: true, result });
} catch (e) {
  const err = e as NodeJS.ErrnoException;
  parentPort?.postMessage({
    ok: false,
    unsupported: e instanceof UnsupportedStreamError,
    message: err.message,
    code: err.code,
  });
}
