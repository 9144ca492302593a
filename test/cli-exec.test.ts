/**
 * The CLI's exit codes (a command's own code, 128 + signal, 124 timeout, 125 smolvm failed, 126 cannot run, 127 not
 * found, 2 usage) and background processes (`exec --detach`, `ps`, `attach`, `kill`), through the CLI with one
 * real VM.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { before, describe, it } from "node:test";
import { parseDuration } from "../src/cli/output.js";
import { parseSignal } from "../src/cli/processes.js";
import { ConfigError } from "../src/errors.js";
import { cli, cliPath, isolatedState } from "./helpers.js";

isolatedState();

let id = "";
const vmCount = async () => (JSON.parse((await cli(["list", "--json"])).stdout) as unknown[]).length;
const exec = (args: string[]) => cli(["exec", id, ...args], { timeoutMs: 180_000 });
const code = async (args: string[]) => {
  const r = await exec(args);
  return { code: r.code, stderr: r.stderr };
};

before(async () => {
  const r = await cli(["create", "--mem", "256", "--json"], { timeoutMs: 300_000 });
  assert.equal(r.code, 0, r.stderr);
  id = (JSON.parse(r.stdout) as { vmId: string }).vmId;
  assert.equal((await exec(["--", "sh", "-c", "echo x > /usr/bin/noexec && mkdir /usr/bin/adir"])).code, 0);
  const tool = await exec(["--", "sh", "-c", "printf '#!/bin/sh\\necho tool\\n' > /root/tool && chmod +x /root/tool"]);
  assert.equal(tool.code, 0);
});

describe("option values", () => {
  it("parseDuration: milliseconds or a number with a unit, strict; parseSignal: a name or a number", () => {
    const ok: [string, number][] = [
      ["1500", 1500],
      ["500ms", 500],
      ["30s", 30_000],
      ["1.5s", 1500],
      ["5m", 300_000],
      ["1h", 3_600_000],
      ["2147483647", 2_147_483_647],
    ];
    for (const [v, ms] of ok) assert.equal(parseDuration("--timeout", v), ms, v);
    for (const v of [
      "abc",
      "-1",
      "1.5.2",
      "",
      "0",
      "0ms",
      "1.5",
      "1.5ms",
      "1e3",
      " 1s",
      "1s ",
      "1 s",
      "2147483648",
      "600h",
    ]) {
      assert.throws(
        () => parseDuration("--timeout", v),
        (e: unknown) => e instanceof ConfigError && /^--timeout: /.test(e.message),
        v,
      );
    }
    assert.equal(parseSignal("TERM"), 15);
    assert.equal(parseSignal("sigkill"), 9);
    assert.equal(parseSignal("2"), 2);
    for (const v of ["FOO", "0", "65", "-9", "SIG"]) assert.throws(() => parseSignal(v), ConfigError, v);
  });
});

describe("exit codes", () => {
  it("usage errors exit 2 (commander's own included) and a bad --timeout is refused before anything boots", async () => {
    const unknown = await cli(["exec", "--bogus", id, "true"]);
    assert.equal(unknown.code, 2, unknown.stderr);
    assert.match(unknown.stderr, /--bogus/);
    assert.equal((await cli(["exec", id])).code, 2, "missing argument");

    const before = await vmCount();
    for (const bad of ["abc", "-1", "1.5.2", "", "0", "5w"]) {
      const r = await cli(["run", "--timeout", bad, "--", "true"]);
      assert.equal(r.code, 2, `run --timeout ${JSON.stringify(bad)}: ${r.stderr}`);
      assert.match(r.stderr, /--timeout/);
    }
    assert.equal(await vmCount(), before, "no VM was created");
    // checked before the VM is looked up: a usage error, not a missing VM
    const early = await cli(["exec", "--timeout", "1.5.2", "vm-nosuchvm0", "true"]);
    assert.equal(early.code, 2, early.stderr);
  });

  it("a guest command's own code; 127 not found, 126 cannot be run (as execvp: PATH only, never the cwd)", async () => {
    assert.equal((await code(["--", "sh", "-c", "exit 3"])).code, 3);
    assert.equal((await code(["--", "sh -c 'kill -TERM $$'"])).code, 143, "killed by SIGTERM: 128 + 15");
    assert.equal((await code(["--", "nosuchcmd"])).code, 127, "a shell command line: sh's own 127");
    const missing = await code(["--", "nosuchcmd", "arg"]);
    assert.equal(missing.code, 127);
    assert.match(missing.stderr, /nosuchcmd: No such file or directory/);
    // a file on PATH that is not executable, a folder on PATH, a path to a non-executable file: 126
    const noexec = await code(["--", "noexec", "arg"]);
    assert.equal(noexec.code, 126, noexec.stderr);
    assert.match(noexec.stderr, /noexec: Permission denied/);
    assert.equal((await code(["--", "adir", "arg"])).code, 126);
    assert.equal((await code(["--", "/etc/passwd", "arg"])).code, 126);
    // a name without a slash is looked up on PATH only, not in the working directory
    assert.equal((await code(["--cwd", "/root", "--", "tool", "arg"])).code, 127);
    assert.equal((await code(["--cwd", "/root", "--", "./tool", "arg"])).code, 0);
  });

  it("--timeout takes human durations; a timeout exits 124 and --json keeps the partial output", async () => {
    const ok = await exec(["--timeout", "30s", "--json", "--", "sh", "-c", "echo fine"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal((JSON.parse(ok.stdout) as { timedOut: boolean }).timedOut, false);

    const plain = await exec(["--timeout", "1s", "--", "sh", "-c", "echo partial; sleep 30"]);
    assert.equal(plain.code, 124, plain.stderr);
    assert.equal(plain.stdout, "partial\n");
    assert.match(plain.stderr, /timed out/);

    const json = await exec(["--timeout", "1500ms", "--json", "--", "sh", "-c", "echo out; echo err >&2; sleep 30"]);
    assert.equal(json.code, 124, json.stderr);
    const r = JSON.parse(json.stdout) as { stdout: string; stderr: string; timedOut: boolean; exitCode: number };
    assert.equal(r.timedOut, true);
    assert.equal(r.exitCode, 124);
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
  });

  it("smolvm's own failures exit 125 in run/exec/attach and 1 elsewhere", async () => {
    const nf = await cli(["exec", "vm-nosuchvm0", "--", "true"]);
    assert.equal(nf.code, 125, nf.stderr);
    assert.match(nf.stderr, /VM not found: vm-nosuchvm0/);
    const attach = await cli(["attach", id, "4000000"]);
    assert.equal(attach.code, 125, attach.stderr);
    assert.match(attach.stderr, /no such process 4000000/);
    const status = await cli(["status", "vm-nosuchvm0"]);
    assert.equal(status.code, 1, status.stderr);
  });
});

describe("background processes", () => {
  it("exec --detach, ps, attach (Ctrl-C detaches), kill", async () => {
    const script = 'echo started; trap "echo got-term; exit 7" TERM; while :; do sleep 0.2; done';
    const d = await exec(["--detach", "--", "sh", "-c", script]);
    assert.equal(d.code, 0, d.stderr);
    const pid = Number(d.stdout.trim());
    assert.ok(Number.isInteger(pid) && pid > 1, d.stdout);
    const short = await exec(["-d", "--json", "--", "sh", "-c", "echo done; exit 4"]);
    const shortPid = (JSON.parse(short.stdout) as { pid: number }).pid;
    assert.ok(Number.isInteger(shortPid));

    type Row = { pid: number; status: string; attached: boolean; running: boolean; command: string };
    const ps = async () => JSON.parse((await cli(["ps", id, "--json"])).stdout) as Row[];
    let rows = await ps();
    assert.equal(rows.find((r) => r.pid === pid)?.status, "running");
    assert.match(rows.find((r) => r.pid === pid)?.command ?? "", /echo started/);
    const text = await cli(["ps", id]);
    assert.match(text.stdout.split("\n")[0] ?? "", /PID\s+COMMAND\s+STATUS\s+ATTACHED/);

    // attach replays the output so far; Ctrl-C detaches (128 + SIGINT) and the process keeps running
    const child = spawn(process.execPath, [cliPath, "attach", id, String(pid)], { stdio: ["ignore", "pipe", "pipe"] });
    let seen = "";
    let errors = "";
    child.stderr.on("data", (b) => {
      errors += b;
    });
    const closed = new Promise<number | null>((resolve) => child.on("close", resolve));
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    await Promise.race([
      closed,
      new Promise<void>((resolve) =>
        child.stdout.on("data", (b) => {
          seen += b;
          if (seen.includes("started")) resolve();
        }),
      ),
    ]);
    assert.match(seen, /started/, `attach printed nothing: ${errors}`);
    child.kill("SIGINT");
    const detached = await closed;
    clearTimeout(timer);
    assert.equal(detached, 130, errors);
    rows = await ps();
    assert.equal(rows.find((r) => r.pid === pid)?.status, "running");

    // the finished one is kept until someone attaches, with its code; attach exits with it
    await waitFor(async () => (await ps()).find((r) => r.pid === shortPid)?.status === "exited 4");
    const got = await cli(["attach", id, String(shortPid)]);
    assert.equal(got.code, 4, got.stderr);
    assert.equal(got.stdout, "done\n");

    // kill: TERM by default (the trap exits 7); attach reports it
    const k = await cli(["kill", id, String(pid)]);
    assert.equal(k.code, 0, k.stderr);
    const after = await cli(["attach", id, String(pid), "--json"]);
    assert.equal(after.code, 7, after.stderr);
    assert.match((JSON.parse(after.stdout) as { stdout: string }).stdout, /started\n(.|\n)*got-term\n$/);

    // a signal by number or name; killed by a signal: 128 + n, and ps says which
    const sleeper = Number((await exec(["-d", "--", "sleep", "600"])).stdout.trim());
    assert.equal((await cli(["kill", id, String(sleeper), "SIGKILL"])).code, 0);
    await waitFor(async () => (await ps()).find((r) => r.pid === sleeper)?.status === "killed by SIGKILL");
    assert.equal((await cli(["attach", id, String(sleeper)])).code, 137);
    const sleeper2 = Number((await exec(["-d", "--", "sleep", "600"])).stdout.trim());
    assert.equal((await cli(["kill", id, String(sleeper2), "9"])).code, 0);
    assert.equal((await cli(["attach", id, String(sleeper2)])).code, 137);

    const badSig = await cli(["kill", id, String(pid), "FOO"]);
    assert.equal(badSig.code, 2, badSig.stderr);
    assert.match(badSig.stderr, /"FOO"/);
    const gone = await cli(["kill", id, "4000000"]);
    assert.equal(gone.code, 1, gone.stderr);
    assert.match(gone.stderr, /no such process 4000000/);
  });

  it("exec into a stopped VM is a smolvm failure: 125, naming the fix", async () => {
    assert.equal((await cli(["stop", id], { timeoutMs: 180_000 })).code, 0);
    const r = await exec(["--", "true"]);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr, new RegExp(`smolvm start ${id}`));
  });
});

async function waitFor(cond: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail("condition not reached in 60 s");
}
