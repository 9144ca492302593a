/**
 * A stand-in for Firecracker's API server, for the contract tests only (nothing here runs a VM): an HTTP server on a
 * Unix socket that checks every body against Firecracker's own OpenAPI description (strictly: unknown fields are
 * refused, as Firecracker's parser refuses them) and enforces the rules the real VMM enforces about when a request is
 * allowed: configuration before InstanceStart only, one InstanceStart, PATCH /vm and snapshot/create after start
 * (snapshot/create only while paused), snapshot/load only on a fresh process (nothing configured but the logger and
 * metrics). Refusals are 400 with a `fault_message`, as Firecracker's are; the texts are ours, not Firecracker's.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { loadSpec, type Spec } from "./firecracker-spec.js";

export interface Recorded {
  method: string;
  path: string;
  body: unknown;
  status: number;
}

const NOT_AFTER_START = "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START = "The requested operation is not supported before starting the microVM.";

/** Requests that configure the VM before it starts (and forbid a later snapshot load). */
const PRE_BOOT = new Set([
  "PUT /boot-source",
  "PUT /machine-config",
  "PATCH /machine-config",
  "PUT /drives/{drive_id}",
  "PUT /network-interfaces/{iface_id}",
  "PUT /vsock",
  "PUT /entropy",
  "PUT /balloon",
  "PUT /cpu-config",
  "PUT /mmds/config",
  "PUT /pmem/{id}",
  "PUT /serial",
  "PUT /hotplug/memory",
]);

/** Requests only a started (booted or restored) VM accepts. */
const POST_BOOT = new Set([
  "PATCH /vm",
  "PATCH /drives/{drive_id}",
  "PATCH /network-interfaces/{iface_id}",
  "PUT /snapshot/create",
]);

class Refusal extends Error {}

export class FakeFirecracker {
  readonly requests: Recorded[] = [];
  started = false;
  paused = false;
  /** Resources configured before start (`boot-source`, `drive:root`, ...), in order. */
  readonly configured: string[] = [];
  machine = { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false, huge_pages: "None" };
  private metricsSet = false;
  private readonly drives = new Set<string>();
  private readonly server: Server;

  private constructor(
    readonly socketPath: string,
    readonly spec: Spec,
  ) {
    this.server = createServer((req, res) => {
      this.serve(req, res).catch((e) => this.answer(res, req, undefined, 500, { fault_message: String(e) }));
    });
  }

  static async start(socketPath: string, spec: Spec = loadSpec()): Promise<FakeFirecracker> {
    const fake = new FakeFirecracker(socketPath, spec);
    await new Promise<void>((resolve, reject) => {
      fake.server.once("error", reject);
      fake.server.listen(socketPath, resolve);
    });
    return fake;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }

  /** What the VM's state is, as GET / reports it. */
  get state(): "Not started" | "Running" | "Paused" {
    return !this.started ? "Not started" : this.paused ? "Paused" : "Running";
  }

  private answer(res: ServerResponse, req: IncomingMessage, body: unknown, status: number, reply?: unknown): void {
    this.requests.push({ method: req.method ?? "", path: req.url ?? "", body, status });
    if (reply === undefined) {
      res.writeHead(status).end();
      return;
    }
    const text = JSON.stringify(reply);
    res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) }).end(text);
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > 64 * 1024) throw new Error("request body too large");
      chunks.push(c);
    }
    const text = Buffer.concat(chunks).toString("utf8");
    let body: unknown;
    const method = req.method ?? "";
    const path = req.url ?? "";
    try {
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        throw new Refusal(`An error occurred when deserializing the json body of a request: ${text.slice(0, 80)}`);
      }
      const op = this.spec.operation(method, path);
      if (!op) throw new Refusal(`Invalid request method and/or path: ${method} ${path}.`);
      const errors = this.spec.validate(method, path, body, { strict: true });
      if (errors.length) throw new Refusal(`Invalid body for ${op.operationId}: ${errors.join("; ")}`);
      const reply = this.apply(`${method} ${op.template}`, path, body as Record<string, unknown> | undefined);
      if (reply === undefined) this.answer(res, req, body, 204);
      else this.answer(res, req, body, 200, reply);
    } catch (e) {
      if (!(e instanceof Refusal)) throw e;
      this.answer(res, req, body, 400, { fault_message: e.message });
    }
  }

  /** The state rules. Returns the JSON answer of a GET, undefined for a 204; throws Refusal for a 400. */
  private apply(key: string, path: string, body: Record<string, unknown> | undefined): unknown {
    const b = body ?? {};
    const pathId = decodeURIComponent(path.split("/")[2] ?? "");
    if (PRE_BOOT.has(key) && this.started) throw new Refusal(NOT_AFTER_START);
    if (POST_BOOT.has(key) && !this.started) throw new Refusal(NOT_BEFORE_START);
    switch (key) {
      case "GET /":
        return { app_name: "Firecracker", id: "anonymous-instance", state: this.state, vmm_version: this.spec.version };
      case "GET /version":
        return { firecracker_version: this.spec.version };
      case "GET /machine-config":
        return this.machine;
      case "PUT /machine-config":
        this.machine = { ...this.machine, smt: false, track_dirty_pages: false, huge_pages: "None", ...b };
        break;
      case "PUT /drives/{drive_id}": {
        if (b.drive_id !== pathId) throw new Refusal("The id from the path does not match the id from the body!");
        const virtioBlock = b.socket === undefined;
        if (virtioBlock && (b.path_on_host === undefined || b.is_read_only === undefined)) {
          throw new Refusal("A virtio-block drive needs path_on_host and is_read_only.");
        }
        this.drives.add(pathId);
        break;
      }
      case "PATCH /drives/{drive_id}":
        if (b.drive_id !== pathId) throw new Refusal("The id from the path does not match the id from the body!");
        if (!this.drives.has(pathId)) throw new Refusal(`Invalid block device ID: ${pathId}`);
        return undefined;
      case "PUT /network-interfaces/{iface_id}":
        if (b.iface_id !== pathId) throw new Refusal("The id from the path does not match the id from the body!");
        break;
      case "PUT /metrics":
        if (this.metricsSet) throw new Refusal("Reinitialization of metrics not allowed.");
        this.metricsSet = true;
        return undefined;
      case "PUT /logger":
        return undefined;
      case "PUT /actions":
        return this.action(String(b.action_type));
      case "PATCH /vm":
        this.paused = b.state === "Paused";
        return undefined;
      case "PUT /snapshot/create":
        if (!this.paused) throw new Refusal("Cannot create a snapshot of a running microVM: pause it first.");
        return undefined;
      case "PUT /snapshot/load": {
        if (this.started || this.configured.length) {
          throw new Refusal("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
        }
        if ((b.mem_backend === undefined) === (b.mem_file_path === undefined)) {
          throw new Refusal("Exactly one of mem_backend and mem_file_path must be given.");
        }
        if (b.track_dirty_pages === true) this.machine.track_dirty_pages = true;
        this.started = true;
        this.paused = b.resume_vm !== true;
        return undefined;
      }
      default:
        if (!PRE_BOOT.has(key)) throw new Refusal(`${key} is not served by this fake.`);
    }
    // a pre-boot resource was configured
    this.configured.push(pathId && key.includes("{") ? `${path.split("/")[1]}:${pathId}` : (path.split("/")[1] ?? ""));
    return undefined;
  }

  private action(type: string): undefined {
    if (type === "InstanceStart") {
      if (this.started) throw new Refusal(NOT_AFTER_START);
      if (!this.configured.includes("boot-source"))
        throw new Refusal("Cannot start microvm without kernel configuration.");
      this.started = true;
      this.paused = false;
      return undefined;
    }
    if (!this.started) throw new Refusal(NOT_BEFORE_START);
    return undefined; // SendCtrlAltDel, FlushMetrics
  }
}
