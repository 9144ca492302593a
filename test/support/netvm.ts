/**
 * Driving SmolVM inside a fake host namespace (test/support/fakenet.ts): every CLI call runs under `ip netns exec`,
 * so TAP devices, nftables rules, passt and dnsmasq all live in the test's own namespace, and the guest's "internet"
 * is the fake one. Nothing is ever sent from the host's real namespace.
 */
import { cliPath } from "../helpers.js";
import type { FakeNet } from "./fakenet.js";

export interface NetVm {
  id: string;
  info: Record<string, unknown>;
}

export function smolvm(net: FakeNet, args: string[], timeoutMs = 240_000) {
  return net.exec(process.execPath, [cliPath, ...args], {
    timeoutMs,
    env: { SMOLVM_STATE_DIR: process.env.SMOLVM_STATE_DIR ?? "" },
  });
}

/** Create a VM in the fake host; throws with the CLI's error. */
export async function createVm(net: FakeNet, args: string[]): Promise<NetVm> {
  const r = await smolvm(net, ["create", "--json", ...args]);
  if (r.code !== 0) throw new Error(`smolvm create ${args.join(" ")} failed: ${r.stdout}${r.stderr}`);
  const info = JSON.parse(r.stdout) as Record<string, unknown>;
  return { id: info.vmId as string, info };
}

/** Run a shell command in the guest; resolves with its output whatever its exit code. */
export async function guestSh(net: FakeNet, id: string, script: string, timeoutMs = 60_000) {
  return smolvm(net, ["exec", id, "--timeout", String(timeoutMs - 5000), "--", "sh", "-c", script], timeoutMs);
}

/**
 * An HTTP GET from the guest with busybox nc: the body's last line, or "" when nothing answered within `waitS`
 * seconds. The request side stays open until the server has closed (a fifo held by a sleeper): passt 2023.03 never
 * passes on the server's FIN to a guest that half-closed first, and busybox-static's wget crashes in the guest.
 */
export async function guestGet(net: FakeNet, id: string, host: string, port = 80, path = "/", waitS = 3) {
  const script =
    `f=/tmp/get.$$; mkfifo $f; (printf 'GET ${path} HTTP/1.0\r\nHost: ${host}\r\n\r\n'; sleep 60) > $f & w=$!; ` +
    `nc -w ${waitS} ${host} ${port} < $f 2>/dev/null | tail -n 1; kill $w 2>/dev/null; rm -f $f`;
  const r = await guestSh(net, id, script);
  return r.stdout.trim();
}

export async function deleteVm(net: FakeNet, id: string): Promise<void> {
  await smolvm(net, ["rm", "-f", id]);
}

export async function status(net: FakeNet, id: string): Promise<Record<string, unknown>> {
  const r = await smolvm(net, ["status", id, "--json"]);
  if (r.code !== 0) throw new Error(`status ${id}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}
