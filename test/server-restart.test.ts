/**
 * `smolvm serve` under stress: `kill -9` with sandboxes running (they live on, are found again, and their lifetimes
 * hold while no server runs), and 20 clients creating, running and deleting at once against a limit.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { SmolVM } from "../src/index.js";
import { newTokenFile, serve } from "./support/serve.js";

interface Info {
  vmId: string;
  expiresAt: string | null;
  status: string;
}

describe("server restart and load", () => {
  test("kill -9 the server with two sandboxes running: both answer after a restart, and lifetimes still hold", async () => {
    const tok = newTokenFile();
    let s = await serve([], tok);
    const made: string[] = [];
    try {
      const create = async (timeoutMs: number) => {
        const res = await s.api("/v1/sandboxes", { method: "POST", json: { timeoutMs, labels: { suite: "restart" } } });
        assert.equal(res.status, 201);
        const info = (await res.json()) as Info;
        made.push(info.vmId);
        return info;
      };
      const long = await create(300_000);
      const other = await create(300_000);
      const short = await create(10_000);
      await s.kill9();
      // the short one's lifetime ends while no server runs: its own supervisor enforces it
      await new Promise((r) => setTimeout(r, 12_000));
      s = await serve([], tok);
      for (const vm of [long, other]) {
        const info = (await (await s.api(`/v1/sandboxes/${vm.vmId}`)).json()) as Info;
        assert.equal(info.status, "running");
        assert.equal(info.expiresAt, vm.expiresAt, "the lifetime is the one set before the restart");
        const run = await s.api(`/v1/sandboxes/${vm.vmId}/commands`, {
          method: "POST",
          json: { cmd: `echo alive-${vm.vmId}` },
        });
        assert.equal(((await run.json()) as { stdout: string }).stdout, `alive-${vm.vmId}\n`);
      }
      assert.equal((await s.api(`/v1/sandboxes/${short.vmId}`)).status, 404, "the expired sandbox is gone");
      // a graceful stop (SIGTERM) leaves them running too
      await s.stop();
      assert.equal((await SmolVM.fromId(long.vmId)).status, "running");
    } finally {
      await s.stop();
      for (const id of made)
        await SmolVM.fromId(id).then(
          (vm) => vm.delete(),
          () => {},
        );
    }
  });

  test("20 clients at once each create, run and delete: all succeed or get a clear 429", async () => {
    const s = await serve(["--max-sandboxes", "4"]);
    try {
      const outcomes = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const res = await s.api("/v1/sandboxes", {
            method: "POST",
            json: { labels: { suite: "load", client: String(i) } },
          });
          if (res.status === 429) {
            const e = ((await res.json()) as { error: { limit: string; message: string } }).error;
            assert.equal(e.limit, "maxSandboxes");
            assert.match(e.message, /maxSandboxes=4/);
            return "limited";
          }
          assert.equal(res.status, 201, await res.clone().text());
          const { vmId } = (await res.json()) as Info;
          const run = await s.api(`/v1/sandboxes/${vmId}/commands`, {
            method: "POST",
            json: { cmd: `echo client-${i}` },
          });
          assert.equal(((await run.json()) as { stdout: string }).stdout, `client-${i}\n`);
          assert.equal((await s.api(`/v1/sandboxes/${vmId}`, { method: "DELETE" })).status, 204);
          return "ok";
        }),
      );
      const ok = outcomes.filter((o) => o === "ok").length;
      assert.ok(ok >= 4, `${ok} of 20 succeeded`);
      assert.equal(ok + outcomes.filter((o) => o === "limited").length, 20);
      const left = (await SmolVM.list()).filter((v) => v.labels.suite === "load");
      assert.deepEqual(left, [], "nothing is left behind");
    } finally {
      await s.stop();
    }
  });

  test("a token file readable by others is refused, naming the file", async () => {
    const tok = newTokenFile();
    const { chmodSync } = await import("node:fs");
    chmodSync(tok.file, 0o644);
    await assert.rejects(serve([], tok), /token-file.*readable by others/s);
    await assert.rejects(serve(["--host", "0.0.0.0"]), /--host: 0\.0\.0\.0 is not a loopback address/);
  });

  test("listeners: a Unix socket (mode 0600), TLS, request ids", async () => {
    const { existsSync, readFileSync, statSync } = await import("node:fs");
    const { join } = await import("node:path");
    const http = await import("node:http");
    const https = await import("node:https");
    const get = (
      mod: typeof http | typeof https,
      opts: Record<string, unknown>,
    ): Promise<{ status: number; headers: Record<string, unknown>; body: string }> =>
      new Promise((resolve, reject) => {
        const req = mod.request({ path: "/v1/sandboxes", ...opts }, (res) => {
          let body = "";
          res.on("data", (b: Buffer) => {
            body += b.toString();
          });
          res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        });
        req.on("error", reject);
        req.end();
      });
    const sock = join("/tmp", `smolvm-test-${process.pid}.sock`);
    const unix = await serve(["--socket", sock]);
    try {
      assert.equal(unix.url, `unix:${sock}`);
      assert.equal(statSync(sock).mode & 0o777, 0o600);
      const ok = await get(http, { socketPath: sock, headers: { ...unix.auth, "x-request-id": "trace-42" } });
      assert.equal(ok.status, 200);
      assert.equal(ok.headers["x-request-id"], "trace-42", "a caller's request id is kept");
      const no = await get(http, { socketPath: sock });
      assert.equal(no.status, 401);
      assert.match(String(no.headers["x-request-id"]), /^[0-9a-f-]{36}$/, "else one is made");
    } finally {
      await unix.stop();
    }
    assert.equal(existsSync(sock), false, "the socket is removed on a graceful stop");
    const fixtures = join(import.meta.dirname, "..", "..", "test", "fixtures");
    const cert = join(fixtures, "tls-cert.pem");
    const tls = await serve(["--tls-cert", cert, "--tls-key", join(fixtures, "tls-key.pem")]);
    try {
      assert.match(tls.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      const u = new URL(tls.url);
      const ok = await get(https, { host: u.hostname, port: u.port, ca: readFileSync(cert), headers: tls.auth });
      assert.equal(ok.status, 200);
      assert.ok(Array.isArray(JSON.parse(ok.body).sandboxes));
    } finally {
      await tls.stop();
    }
  });

  test("without a token, the first start generates one into a 0600 file and prints it once", async () => {
    const { mkdtempSync, statSync, readFileSync, rmSync } = await import("node:fs");
    const { join } = await import("node:path");
    const { tmpdir } = await import("node:os");
    const dir = mkdtempSync(join(tmpdir(), "smolvm-serve-state-"));
    try {
      const first = await serve([], null, { SMOLVM_STATE_DIR: dir });
      await first.stop();
      assert.equal(first.printed.tokenFrom, "generated");
      const file = String(first.printed.tokenFile);
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.equal(readFileSync(file, "utf8").trim(), first.printed.token);
      const second = await serve([], null, { SMOLVM_STATE_DIR: dir });
      try {
        assert.equal(second.printed.tokenFrom, "stored");
        assert.equal(second.printed.token, undefined, "printed only the first time");
        const res = await fetch(`${second.url}/v1/sandboxes`, {
          headers: { authorization: `Bearer ${first.printed.token}` },
        });
        assert.equal(res.status, 200);
      } finally {
        await second.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
