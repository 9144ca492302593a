/**
 * One MCP session's sandboxes. A session sees and touches only the sandboxes it created (or forked): every other id
 * is refused, whether or not it exists, so sessions learn nothing about each other. They carry the label
 * `mcp.session=<id>`, are not kept (their VM supervisor deletes them if the process serving the session dies,
 * however it dies), always have a lifetime, and are deleted when the session ends (`close`).
 */
import type { VMConfig } from "../../config.js";
import { ConfigError, SmolVMError, VMNotFoundError } from "../../errors.js";
import type { SmolVM, VMInfo } from "../../sandbox/smolvm.js";
import type { SnapshotInfo } from "../../sandbox/snapshots.js";
import type { Progress } from "../../util/run.js";
import type { SandboxHub } from "../hub.js";

export const SESSION_LABEL = "mcp.session";

/** The id names no sandbox of this session (another session's, or none at all: the message does not say which). */
export class NotInSessionError extends SmolVMError {
  constructor(readonly sandboxId: string) {
    super(
      `sandbox_id: "${sandboxId}" is not a sandbox of this MCP session (list_sandboxes shows yours; it may also have been deleted or reached the end of its lifetime)`,
    );
  }
}

/** A per-session limit was reached. */
export class SessionLimitError extends SmolVMError {}

export interface SessionOptions {
  hub: SandboxHub;
  /** Its label value: unique per session. */
  id: string;
  /** Sandboxes of this session at once (default 16); the hub's own limits apply on top. */
  maxSandboxes?: number;
  /** Snapshots one session may take (default 16). */
  maxSnapshots?: number;
}

export class McpSession {
  readonly hub: SandboxHub;
  readonly id: string;
  private readonly owned = new Set<string>();
  private readonly maxSandboxes: number;
  private readonly maxSnapshots: number;
  private pending = 0;
  private readonly snapshots = new Set<string>();
  private closing: Promise<void> | null = null;

  constructor(opts: SessionOptions) {
    this.hub = opts.hub;
    this.id = opts.id;
    this.maxSandboxes = opts.maxSandboxes ?? 16;
    this.maxSnapshots = opts.maxSnapshots ?? 16;
  }

  get closed(): boolean {
    return this.closing !== null;
  }

  /** Create a sandbox for this session (labelled, not kept, with a lifetime: the hub's default if none is given). */
  async create(config: VMConfig, onProgress?: Progress): Promise<SmolVM> {
    this.reserve(1);
    try {
      const labels = { ...config.labels, [SESSION_LABEL]: this.id };
      const vm = await this.hub.create({ ...config, labels }, { keep: false, onProgress });
      return await this.adopt(vm);
    } finally {
      this.pending--;
    }
  }

  /** `count` copies of one of this session's sandboxes, owned by this session. */
  async fork(vm: SmolVM, count: number, timeoutMs?: number): Promise<SmolVM[]> {
    this.reserve(count);
    try {
      const clones = await this.hub.fork(vm, count, timeoutMs, { keep: false });
      const out: SmolVM[] = [];
      for (const c of clones) out.push(await this.adopt(c));
      return out;
    } finally {
      this.pending -= count;
    }
  }

  /** Snapshot one of this session's sandboxes (counted against the session's limit); only it may restore it. */
  async snapshot(vm: SmolVM, name?: string): Promise<SnapshotInfo> {
    if (this.snapshots.size >= this.maxSnapshots) {
      throw new SessionLimitError(`this MCP session already took ${this.maxSnapshots} snapshots, its limit`);
    }
    const snap = await vm.snapshot({ name });
    this.snapshots.add(snap.id);
    return snap;
  }

  /** A new sandbox of this session from a snapshot it took. */
  async restore(snapshotId: string, timeoutMs?: number): Promise<SmolVM> {
    if (!this.snapshots.has(snapshotId)) {
      throw new ConfigError("snapshot_id", `"${snapshotId}" is not a snapshot taken in this MCP session`);
    }
    this.reserve(1);
    try {
      return await this.adopt(await this.hub.restore(snapshotId, { timeoutMs, keep: false }));
    } finally {
      this.pending--;
    }
  }

  /** One of this session's sandboxes; `NotInSessionError` for any other id. */
  async get(sandboxId: string): Promise<SmolVM> {
    if (!this.owned.has(sandboxId)) throw new NotInSessionError(sandboxId);
    try {
      return await this.hub.get(sandboxId);
    } catch (e) {
      if (e instanceof VMNotFoundError) {
        this.owned.delete(sandboxId);
        throw new NotInSessionError(sandboxId);
      }
      throw e;
    }
  }

  /** This session's sandboxes that still exist. */
  async list(): Promise<VMInfo[]> {
    const all = await this.hub.list({ [SESSION_LABEL]: this.id });
    return all.filter((v) => this.owned.has(v.vmId));
  }

  async delete(sandboxId: string): Promise<void> {
    if (!this.owned.has(sandboxId)) throw new NotInSessionError(sandboxId);
    this.owned.delete(sandboxId);
    try {
      await this.hub.delete(sandboxId);
    } catch (e) {
      if (e instanceof VMNotFoundError) throw new NotInSessionError(sandboxId);
      throw e;
    }
  }

  /** End the session: delete every sandbox it owns (including ones still starting). Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.deleteAll();
    return this.closing;
  }

  private async deleteAll(): Promise<void> {
    const ids = [...this.owned];
    this.owned.clear();
    await Promise.allSettled(ids.map((id) => this.hub.delete(id)));
  }

  private reserve(n: number): void {
    if (this.closed) throw new SessionLimitError("this MCP session has ended");
    if (this.owned.size + this.pending + n > this.maxSandboxes) {
      throw new SessionLimitError(
        `this MCP session may have ${this.maxSandboxes} sandboxes at once and has ${this.owned.size + this.pending}; delete_sandbox one first`,
      );
    }
    this.pending += n;
  }

  /** Record a new sandbox; one that finished starting after the session ended is deleted at once. */
  private async adopt(vm: SmolVM): Promise<SmolVM> {
    if (this.closed) {
      await this.hub.delete(vm.vmId).catch(() => {});
      throw new SessionLimitError("this MCP session ended while the sandbox was starting; it was deleted");
    }
    this.owned.add(vm.vmId);
    return vm;
  }
}
