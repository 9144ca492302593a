/**
 * The QMP client when QEMU goes away between two commands (it exits after a failed restore while it is being
 * polled): the next command must fail at once, not wait forever for an answer (a fake QMP server on a socket).
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { contReleasing, QmpClient, qmpOnce, releaseHeld, stopAndHold } from "../src/backends/qemu/qmp.js";

test("a command sent after QEMU closed the connection fails at once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "smolvm-qmp-"));
  const path = join(dir, "qmp.sock");
  const server = createServer((c) => {
    c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    c.on("data", (d) => {
      if (d.toString().includes("qmp_capabilities")) {
        c.write('{"return": {}}\n');
        setTimeout(() => c.destroy(), 20); // QEMU exits
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  try {
    const q = await QmpClient.connect(path);
    await new Promise((r) => setTimeout(r, 200)); // the close has been seen
    const outcome = await Promise.race([
      q.execute("query-migrate").then(
        () => "answered",
        (e: Error) => e.message,
      ),
      new Promise((r) => setTimeout(() => r("hung"), 2000)),
    ]);
    assert.equal(outcome, "QMP connection closed");
    q.close();
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A fake QMP server: greets, then answers each command line with `answer(command)` (null: never). */
async function fakeQmp(answer: (cmd: string) => string | null) {
  const dir = mkdtempSync(join(tmpdir(), "smolvm-qmp-"));
  const path = join(dir, "qmp.sock");
  const seen: string[] = [];
  const conns = { made: 0, open: 0 };
  const server = createServer((c) => {
    conns.made++;
    conns.open++;
    c.on("close", () => conns.open--);
    c.write('{"QMP": {"version": {}, "capabilities": []}}\n');
    let buf = "";
    c.on("data", (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const cmd = (JSON.parse(buf.slice(0, nl)) as { execute: string }).execute;
        buf = buf.slice(nl + 1);
        seen.push(cmd);
        const a = answer(cmd);
        if (a !== null) c.write(`${a}\n`);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    seen,
    conns,
    close: () => {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test("qmpOnce negotiates, then runs the command sent right behind it, and returns its answer", async () => {
  const f = await fakeQmp((cmd) => (cmd === "query-status" ? '{"return": {"status": "paused"}}' : '{"return": {}}'));
  try {
    assert.deepEqual(await qmpOnce(f.path, "query-status"), { status: "paused" });
    assert.deepEqual(f.seen, ["qmp_capabilities", "query-status"]);
  } finally {
    f.close();
  }
});

test("qmpOnce reports QEMU's error, a missing socket, and a QEMU that never answers", async () => {
  const f = await fakeQmp((cmd) =>
    cmd === "cont"
      ? '{"error": {"class": "GenericError", "desc": "migration in progress"}}'
      : cmd === "stop"
        ? null
        : '{"return": {}}',
  );
  try {
    await assert.rejects(qmpOnce(f.path, "cont"), /QMP: migration in progress/);
    await assert.rejects(qmpOnce(f.path, "stop", undefined, 300), /did not answer stop/);
    await assert.rejects(qmpOnce(join(f.path, "..", "gone.sock"), "cont"), /ENOENT/);
  } finally {
    f.close();
  }
});

test("a stop held for its resume: one connection carries both and is closed after; a kill releases it", async () => {
  const f = await fakeQmp(() => '{"return": {}}');
  const settle = () => new Promise((r) => setTimeout(r, 50));
  try {
    await stopAndHold(f.path);
    await settle();
    assert.equal(f.conns.open, 1, "the connection is held while the VM waits");
    await contReleasing(f.path);
    await settle();
    assert.deepEqual(f.seen, ["qmp_capabilities", "stop", "cont"]);
    assert.deepEqual(f.conns, { made: 1, open: 0 }, "cont went over the held connection, which is closed now");
    // nothing held: a resume connects anew
    await contReleasing(f.path);
    assert.equal(f.conns.made, 2);
    // a kill closes a held connection
    await stopAndHold(f.path);
    releaseHeld(f.path);
    await settle();
    assert.equal(f.conns.open, 0);
  } finally {
    f.close();
  }
});
