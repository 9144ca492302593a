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
import { QmpClient } from "../src/backends/qemu/qmp.js";

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
