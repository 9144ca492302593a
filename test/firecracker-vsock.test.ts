/**
 * Host-initiated vsock through Firecracker's Unix socket (`CONNECT <port>\n`, then `OK <host_port>\n`), against a
 * fake Firecracker end on a Unix socket: bytes after the OK line reach the caller, and every other answer (a refusal,
 * a hang-up, a line too long, none in time) is an error naming what came back. No Firecracker runs.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { connectVsock, VsockConnectError } from "../src/backends/firecracker/vsock.js";

let dir: string;
let uds: string;
let server: Server | null;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "smolvm-fc-vsock-"));
  uds = join(dir, "v.sock");
  server = null;
});
afterEach(async () => {
  if (server) {
    const s = server;
    await new Promise((r) => s.close(r));
  }
  rmSync(dir, { recursive: true, force: true });
});

/** A Firecracker vsock end: once it has read the CONNECT line, `onConnect` gets it and the connection. */
async function fakeVsock(onConnect: (line: string, c: Socket) => void): Promise<string[]> {
  const lines: string[] = [];
  server = createServer((c) => {
    let buf = "";
    const onData = (d: Buffer) => {
      buf += d.toString("latin1");
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      c.off("data", onData);
      const line = buf.slice(0, nl);
      lines.push(line);
      onConnect(line, c);
    };
    c.on("data", onData);
    c.on("error", () => {});
  });
  await new Promise<void>((r) => server?.listen(uds, r));
  return lines;
}

function readAll(s: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    s.on("data", (d: Buffer) => {
      out += d.toString();
    });
    s.on("end", () => resolve(out));
    s.on("error", reject);
  });
}

async function fails(p: Promise<unknown>, reason: VsockConnectError["reason"], detail: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof VsockConnectError, String(e));
    assert.equal(e.reason, reason);
    assert.match(e.message, detail);
    assert.match(e.message, /^vsock CONNECT 52 through /);
    return true;
  });
}

describe("vsock handshake", () => {
  it("OK: sends CONNECT <port>; the guest's bytes in the same packet as the OK line are not lost", async () => {
    const lines = await fakeVsock((_l, c) => {
      c.write("OK 1073741824\nhello ");
      setTimeout(() => c.end("world"), 20);
    });
    const { socket, hostPort } = await connectVsock(uds, 52);
    assert.equal(hostPort, 1073741824);
    assert.equal(await readAll(socket), "hello world");
    assert.deepEqual(lines, ["CONNECT 52"]);
  });

  it("OK: the answer line split over several packets, data and close right after it", async () => {
    await fakeVsock((_l, c) => {
      c.write("O");
      setTimeout(() => c.write("K 10"), 10);
      setTimeout(() => c.end(Buffer.from("24\nabc\x00\xffdef", "latin1")), 20);
    });
    const { socket, hostPort } = await connectVsock(uds, 52);
    assert.equal(hostPort, 1024);
    // attached a while later: nothing flowed away meanwhile
    await new Promise((r) => setTimeout(r, 50));
    const chunks: Buffer[] = [];
    socket.on("data", (d: Buffer) => chunks.push(d));
    await new Promise((r) => socket.on("end", r));
    assert.deepEqual(Buffer.concat(chunks), Buffer.from("abc\x00\xffdef", "latin1"));
  });

  it("a large stream after OK arrives whole and in order", async () => {
    const payload = Buffer.alloc(4 << 20);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
    await fakeVsock((_l, c) => c.end(Buffer.concat([Buffer.from("OK 5\n"), payload])));
    const { socket } = await connectVsock(uds, 52);
    const chunks: Buffer[] = [];
    for await (const c of socket) chunks.push(c as Buffer);
    assert.ok(Buffer.concat(chunks).equals(payload));
  });

  it("a refusal line is an error naming it", async () => {
    await fakeVsock((_l, c) => c.write("ERR no such port\n"));
    await fails(connectVsock(uds, 52), "refused", /answered "ERR no such port"/);
  });

  it("what came back is shown printable only", async () => {
    await fakeVsock((_l, c) => c.write(`OK \x1b[2J${"z".repeat(50)}\n`));
    await fails(connectVsock(uds, 52), "refused", /answered "OK \?\[2Jz{50}"/);
    const err = await connectVsock(uds, 52).catch((e: Error) => e);
    assert.ok(err instanceof Error && !err.message.includes("\x1b"));
  });

  it("OK with a port out of range is a refusal", async () => {
    await fakeVsock((_l, c) => c.write("OK 99999999999\n"));
    await fails(connectVsock(uds, 52), "refused", /OK 99999999999/);
  });

  it("an over-long line, with or without its newline", async () => {
    await fakeVsock((_l, c) => c.write("A".repeat(200)));
    await fails(connectVsock(uds, 52), "too-long", /no end of line in the first 200 bytes: "A{64}\.\.\."$/);
    await new Promise<void>((r) => server?.close(() => r()));
    await fakeVsock((_l, c) => c.write(`OK ${"1".repeat(70)}\n`));
    await fails(connectVsock(uds, 52), "too-long", /answer line of 73 bytes/);
  });

  it("Firecracker hangs up without answering (nothing listens on the guest port)", async () => {
    await fakeVsock((_l, c) => c.end());
    await fails(connectVsock(uds, 52), "closed", /closed without an answer/);
    await new Promise<void>((r) => server?.close(() => r()));
    await fakeVsock((_l, c) => c.end("OK 1"));
    await fails(connectVsock(uds, 52), "closed", /incomplete answer "OK 1"/);
  });

  it("no answer in time", async () => {
    const held: Socket[] = [];
    await fakeVsock((_l, c) => held.push(c));
    const t0 = Date.now();
    await fails(connectVsock(uds, 52, { timeoutMs: 200 }), "timeout", /no answer within 200 ms/);
    assert.ok(Date.now() - t0 < 2000);
    for (const c of held) c.destroy();
  });

  it("no socket, or a port that cannot be", async () => {
    await fails(connectVsock(join(dir, "absent.sock"), 52), "socket", /ENOENT/);
    await assert.rejects(connectVsock(uds, -1), /vsock port must be an integer/);
    await assert.rejects(connectVsock(uds, 2 ** 32), /vsock port must be an integer/);
  });
});
