/**
 * A small client for Firecracker's REST API on its Unix socket (node:http with `socketPath`, one connection per
 * request). Every request has a deadline; answers are read up to a bound and checked before use: the VMM is a host
 * process, but one running next to a hostile guest. Bodies come from the pure builders in bodies.ts.
 */
import { request } from "node:http";
import { SmolVMError } from "../../errors.js";
import {
  actionBody,
  bootSourceBody,
  checkId,
  driveBody,
  entropyBody,
  type LogLevel,
  loggerBody,
  machineConfigBody,
  metricsBody,
  networkInterfaceBody,
  partialDriveBody,
  type SnapshotType,
  snapshotCreateBody,
  snapshotLoadBody,
  vmStateBody,
  vsockBody,
} from "./bodies.js";

/** Firecracker refused a request (`status` is its HTTP status) or never answered it (`status` null). */
export class FirecrackerApiError extends SmolVMError {
  constructor(
    /** The HTTP status of the answer; null: no answer (connection refused or closed, deadline, answer too large). */
    readonly status: number | null,
    readonly method: string,
    readonly path: string,
    /** Firecracker's `fault_message` (printable, truncated), or what went wrong on the way. */
    readonly faultMessage: string,
    options?: { cause?: unknown },
  ) {
    super(`Firecracker API ${method} ${path}: ${status === null ? "no answer" : status}: ${faultMessage}`, options);
  }
}

export interface InstanceInfo {
  app_name: string;
  id: string;
  state: "Not started" | "Running" | "Paused";
  vmm_version: string;
}

export interface MachineConfigInfo {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: string;
}

/** Answers larger than this are refused: Firecracker's own are a few hundred bytes. */
export const MAX_RESPONSE_BYTES = 64 * 1024;
/** The deadline of a request, unless the call gives its own. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Writing or mapping a snapshot moves the guest's memory through the disk: its own, longer deadline. */
export const SNAPSHOT_TIMEOUT_MS = 300_000;
const MAX_FAULT_CHARS = 1000;

/** A string from the VMM made safe to show: printable ASCII only, at most `max` characters. */
export function printable(s: string, max: number): string {
  const clean = s.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

function faultOf(text: string): string {
  try {
    const v: unknown = JSON.parse(text);
    if (v && typeof v === "object" && typeof (v as { fault_message?: unknown }).fault_message === "string") {
      return printable((v as { fault_message: string }).fault_message, MAX_FAULT_CHARS);
    }
  } catch {
    // not JSON: show the text itself
  }
  return text ? printable(text, MAX_FAULT_CHARS) : "(no fault_message)";
}

export interface RequestOptions {
  timeoutMs?: number;
}

export class FirecrackerClient {
  private readonly timeoutMs: number;

  constructor(
    /** The socket given to `firecracker --api-sock`. */
    readonly socketPath: string,
    options: { timeoutMs?: number } = {},
  ) {
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * One request; resolves with the parsed JSON answer (undefined for an empty one, as Firecracker's 204s are).
   * Rejects with FirecrackerApiError on a non-2xx answer, no answer in time, or an answer out of bounds.
   */
  request(method: "GET" | "PUT" | "PATCH", path: string, body?: unknown, opts: RequestOptions = {}): Promise<unknown> {
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      let settled = false;
      const done = (err: FirecrackerApiError | null, value?: unknown) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          req.destroy();
          reject(err);
        } else resolve(value);
      };
      const noAnswer = (why: string, cause?: unknown) =>
        done(new FirecrackerApiError(null, method, path, why, cause === undefined ? undefined : { cause }));
      const headers: Record<string, string | number> = { Accept: "application/json" };
      if (payload) {
        headers["Content-Type"] = "application/json";
        headers["Content-Length"] = payload.length;
      }
      const req = request({ socketPath: this.socketPath, method, path, headers, agent: false });
      const timer = setTimeout(() => noAnswer(`no answer within ${timeoutMs} ms`), timeoutMs);
      req.on("error", (e) => noAnswer(`${(e as NodeJS.ErrnoException).code ?? e.message} on ${this.socketPath}`, e));
      req.on("response", (res) => {
        const declared = Number(res.headers["content-length"]);
        if (declared > MAX_RESPONSE_BYTES) {
          noAnswer(`answer of ${declared} bytes refused (at most ${MAX_RESPONSE_BYTES})`);
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) noAnswer(`answer refused past ${MAX_RESPONSE_BYTES} bytes`);
          else chunks.push(c);
        });
        res.on("error", (e) => noAnswer(`answer broken off: ${e.message}`, e));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 299) {
            done(new FirecrackerApiError(status, method, path, faultOf(text)));
            return;
          }
          if (!text.trim()) {
            done(null, undefined);
            return;
          }
          try {
            done(null, JSON.parse(text));
          } catch {
            noAnswer(`answer is not JSON: ${printable(text, 80)}`);
          }
        });
      });
      req.end(payload);
    });
  }

  private async put(path: string, body: unknown, opts?: RequestOptions): Promise<void> {
    await this.request("PUT", path, body, opts);
  }

  private async patch(path: string, body: unknown, opts?: RequestOptions): Promise<void> {
    await this.request("PATCH", path, body, opts);
  }

  // pre-boot configuration

  putBootSource(spec: Parameters<typeof bootSourceBody>[0]): Promise<void> {
    return this.put("/boot-source", bootSourceBody(spec));
  }

  putMachineConfig(spec: Parameters<typeof machineConfigBody>[0]): Promise<void> {
    return this.put("/machine-config", machineConfigBody(spec));
  }

  putDrive(id: string, spec: Parameters<typeof driveBody>[1]): Promise<void> {
    return this.put(`/drives/${checkId("drive id", id)}`, driveBody(id, spec));
  }

  putNetworkInterface(id: string, spec: Parameters<typeof networkInterfaceBody>[1]): Promise<void> {
    return this.put(`/network-interfaces/${checkId("interface id", id)}`, networkInterfaceBody(id, spec));
  }

  putVsock(spec: Parameters<typeof vsockBody>[0]): Promise<void> {
    return this.put("/vsock", vsockBody(spec));
  }

  putEntropy(): Promise<void> {
    return this.put("/entropy", entropyBody());
  }

  /** Firecracker's own log (not the guest's console). Allowed before a snapshot load. */
  putLogger(spec: { logPath: string; level?: LogLevel; showLevel?: boolean; showOrigin?: boolean }): Promise<void> {
    return this.put("/logger", loggerBody(spec));
  }

  /** Once per process. Allowed before a snapshot load. */
  putMetrics(spec: { metricsPath: string }): Promise<void> {
    return this.put("/metrics", metricsBody(spec));
  }

  // actions and running state

  instanceStart(): Promise<void> {
    return this.put("/actions", actionBody("InstanceStart"));
  }

  /** x86_64 only: the guest sees Ctrl+Alt+Del (a clean shutdown request, if its init honours it). */
  sendCtrlAltDel(): Promise<void> {
    return this.put("/actions", actionBody("SendCtrlAltDel"));
  }

  pauseVm(): Promise<void> {
    return this.patch("/vm", vmStateBody("Paused"));
  }

  resumeVm(): Promise<void> {
    return this.patch("/vm", vmStateBody("Resumed"));
  }

  /** After boot: the drive `id` is backed by another file from now on. */
  patchDrive(id: string, spec: { path: string }): Promise<void> {
    return this.patch(`/drives/${checkId("drive id", id)}`, partialDriveBody(id, spec));
  }

  // snapshots

  /** The VM must be paused. */
  createSnapshot(
    spec: { type: SnapshotType; statePath: string; memPath: string },
    opts: RequestOptions = {},
  ): Promise<void> {
    return this.put("/snapshot/create", snapshotCreateBody(spec), { timeoutMs: opts.timeoutMs ?? SNAPSHOT_TIMEOUT_MS });
  }

  /** Only on a fresh process (nothing configured but the logger and metrics). */
  loadSnapshot(spec: Parameters<typeof snapshotLoadBody>[0], opts: RequestOptions = {}): Promise<void> {
    return this.put("/snapshot/load", snapshotLoadBody(spec), { timeoutMs: opts.timeoutMs ?? SNAPSHOT_TIMEOUT_MS });
  }

  // queries

  async describeInstance(): Promise<InstanceInfo> {
    const v = await this.request("GET", "/");
    const o = objectAnswer("GET", "/", v);
    const states = ["Not started", "Running", "Paused"];
    if (typeof o.state !== "string" || !states.includes(o.state)) badAnswer("GET", "/", `state ${show(o.state)}`);
    return {
      app_name: stringField("GET", "/", o, "app_name"),
      id: stringField("GET", "/", o, "id"),
      state: o.state as InstanceInfo["state"],
      vmm_version: stringField("GET", "/", o, "vmm_version"),
    };
  }

  async getVersion(): Promise<string> {
    const o = objectAnswer("GET", "/version", await this.request("GET", "/version"));
    return stringField("GET", "/version", o, "firecracker_version");
  }

  async getMachineConfig(): Promise<MachineConfigInfo> {
    const o = objectAnswer("GET", "/machine-config", await this.request("GET", "/machine-config"));
    const int = (k: string) => {
      const n = o[k];
      if (!Number.isSafeInteger(n) || (n as number) < 0) badAnswer("GET", "/machine-config", `${k} ${show(n)}`);
      return n as number;
    };
    const info: MachineConfigInfo = { vcpu_count: int("vcpu_count"), mem_size_mib: int("mem_size_mib") };
    for (const k of ["smt", "track_dirty_pages"] as const) if (typeof o[k] === "boolean") info[k] = o[k] as boolean;
    if (typeof o.huge_pages === "string") info.huge_pages = printable(o.huge_pages, 32);
    return info;
  }
}

function show(v: unknown): string {
  return printable(JSON.stringify(v) ?? String(v), 80);
}

function badAnswer(method: string, path: string, what: string): never {
  throw new FirecrackerApiError(null, method, path, `unexpected answer: ${what}`);
}

function objectAnswer(method: string, path: string, v: unknown): Record<string, unknown> {
  if (!v || typeof v !== "object" || Array.isArray(v)) badAnswer(method, path, show(v));
  return v as Record<string, unknown>;
}

function stringField(method: string, path: string, o: Record<string, unknown>, key: string): string {
  const v = o[key];
  if (typeof v !== "string") badAnswer(method, path, `${key} ${show(v)}`);
  return printable(v, 200);
}
