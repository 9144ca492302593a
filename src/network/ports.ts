/**
 * Port exposure, in every network mode (none included): a small per-port daemon (`smolvm-agent forward`) listens on
 * the host and carries each connection to `127.0.0.1:guestPort` inside the guest as a stream over the agent channel,
 * like `kubectl port-forward` (one proxy connection, opened before it drops to the VM's uid; each client is a stream
 * on it). It outlives the process that exposed the port, is recorded in SQLite, and is killed
 * when the port is closed or the VM deleted. Listeners bind 127.0.0.1 unless the caller names another address.
 */
import { spawn } from "node:child_process";
import { isIPv4, isIPv6 } from "node:net";
import { ConfigError, SmolVMError } from "../errors.js";
import { processStart } from "../state/journal.js";
import type { StateStore, VMRecord } from "../state/store.js";
import { killAndWait, processAlive } from "../util/proc.js";
import { withPrivateUmask } from "../util/run.js";

export interface ExposedPort {
  guestPort: number;
  host: string;
  port: number;
  url: string;
}

interface PortRow {
  vm_id: string;
  guest_port: number;
  host: string;
  host_port: number;
  pid: number | null;
  pid_start: string | null;
}

const urlOf = (host: string, port: number) => `http://${isIPv6(host) ? `[${host}]` : host}:${port}`;
const fromRow = (r: PortRow): ExposedPort => ({
  guestPort: r.guest_port,
  host: r.host,
  port: r.host_port,
  url: urlOf(r.host, r.host_port),
});

function alive(r: PortRow): boolean {
  return !!r.pid && processAlive(r.pid, "forward") && processStart(r.pid) === r.pid_start;
}

/** The VM's exposed ports whose listener still runs (rows of dead listeners are dropped). */
export function listPorts(store: StateStore, vmId: string): ExposedPort[] {
  const rows = store.db.prepare("SELECT * FROM ports WHERE vm_id = ? ORDER BY guest_port").all(vmId) as PortRow[];
  const out: ExposedPort[] = [];
  for (const r of rows) {
    if (alive(r)) out.push(fromRow(r));
    else store.db.prepare("DELETE FROM ports WHERE host = ? AND host_port = ?").run(r.host, r.host_port);
  }
  return out;
}

function checkPort(field: string, v: unknown, min: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > 65535) {
    throw new ConfigError(field, `must be an integer from ${min} to 65535, got ${JSON.stringify(v)}`);
  }
  return v;
}

export async function exposePort(
  store: StateStore,
  rec: VMRecord,
  guestPort: number,
  opts: { hostPort?: number; host?: string } = {},
): Promise<ExposedPort> {
  checkPort("guestPort", guestPort, 1);
  const hostPort = opts.hostPort === undefined ? 0 : checkPort("hostPort", opts.hostPort, 0);
  const host = opts.host === undefined || opts.host === "localhost" ? "127.0.0.1" : opts.host;
  if (!isIPv4(host) && !isIPv6(host))
    throw new ConfigError("host", `must be an IP address, got ${JSON.stringify(host)}`);
  const h = rec.handle;
  if (!h || (rec.status !== "running" && rec.status !== "paused")) {
    throw new SmolVMError(`VM ${rec.id} is ${rec.status}: start it before exposing a port`);
  }
  const existing = listPorts(store, rec.id).find(
    (p) => p.guestPort === guestPort && p.host === host && (hostPort === 0 || p.port === hostPort),
  );
  if (existing) return existing;
  if (!h.agentBinary) throw new SmolVMError(`VM ${rec.id} was started by an older SmolVM: restart it to expose ports`);
  const listen = isIPv6(host) ? `[${host}]:${hostPort}` : `${host}:${hostPort}`;
  const args = [
    ...["forward", "--agent", h.agentSocket, "--listen", listen, "--port", String(guestPort)],
    // it connects to the VM's agent once, then runs as the VM's own unprivileged identity
    ...(h.uid !== undefined && h.gid !== undefined ? ["--runas", `${h.uid}:${h.gid}`] : []),
  ];
  const child = withPrivateUmask(() =>
    spawn(h.agentBinary as string, args, { stdio: ["ignore", "pipe", "pipe"], detached: true }),
  );
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    let err = "";
    const timer = setTimeout(() => fail("no answer after 5 s"), 5000);
    function fail(why: string) {
      clearTimeout(timer);
      if (child.pid) {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          // gone
        }
      }
      reject(new SmolVMError(`cannot listen on ${listen} for VM ${rec.id}: ${why}`));
    }
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /^(\d{1,5})\n/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.stderr?.on("data", (d: Buffer) => {
      if (err.length < 2048) err += d.toString();
    });
    child.on("exit", (code) => fail(err.trim() || `exit ${code}`));
    child.on("error", (e) => fail(e.message));
  });
  child.removeAllListeners("exit");
  child.stdout?.destroy();
  child.stderr?.destroy();
  child.unref();
  const pid = child.pid as number;
  store.db
    .prepare(
      "INSERT OR REPLACE INTO ports (vm_id, guest_port, host, host_port, pid, pid_start, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .run(rec.id, guestPort, host, port, pid, processStart(pid), new Date().toISOString());
  return { guestPort, host, port, url: urlOf(host, port) };
}

/** Close the VM's listeners: all of them, those for one guest port, or the one on one host port. */
export async function closePorts(
  store: StateStore,
  vmId: string,
  which: { guestPort?: number; hostPort?: number } = {},
): Promise<ExposedPort[]> {
  const rows = (store.db.prepare("SELECT * FROM ports WHERE vm_id = ?").all(vmId) as PortRow[]).filter(
    (r) =>
      (which.guestPort === undefined || r.guest_port === which.guestPort) &&
      (which.hostPort === undefined || r.host_port === which.hostPort),
  );
  for (const r of rows) {
    if (alive(r)) await killAndWait(r.pid, "forward");
    store.db.prepare("DELETE FROM ports WHERE host = ? AND host_port = ?").run(r.host, r.host_port);
  }
  return rows.map(fromRow);
}
