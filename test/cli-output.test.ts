/** CLI output helpers: strict integer options, and a reader that closes the pipe early. */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { int, MAX_TIMER_MS, reportError } from "../src/cli/output.js";
import { ConfigError } from "../src/errors.js";
import { cliPath, repoRoot } from "./helpers.js";

describe("int", () => {
  const ms = { min: 1, max: MAX_TIMER_MS, unit: "milliseconds" };

  it("accepts plain decimal digits within the range", () => {
    assert.equal(int("count", "0", { min: 0, max: 10 }), 0);
    assert.equal(int("count", "42", { min: 0, max: 100 }), 42);
    assert.equal(int("timeoutMs", "2147483647", ms), 2_147_483_647);
    assert.equal(int("count", "007", { min: 0, max: 10 }), 7);
    assert.equal(int("count", undefined, { min: 0, max: 10 }), undefined);
  });

  it("refuses signs, hex, exponents, fractions, spaces, separators and unsafe integers", () => {
    for (const v of ["0x100", "1e3", "1e308", "-1", "+1", " 5", "5 ", "5.0", "", "1_000", "Infinity", "NaN", "٣"]) {
      assert.throws(() => int("memSizeMib", v, { min: 0, max: Number.MAX_SAFE_INTEGER }), ConfigError, v);
    }
    assert.throws(() => int("count", "9007199254740993", { min: 0, max: Number.MAX_SAFE_INTEGER }), ConfigError);
    assert.throws(() => int("count", "9007199254740992", { min: 0, max: Number.MAX_SAFE_INTEGER }), ConfigError);
    assert.equal(int("count", "9007199254740991", { min: 0, max: Number.MAX_SAFE_INTEGER }), Number.MAX_SAFE_INTEGER);
  });

  it("refuses values outside [min, max] with a message naming the field and the range", () => {
    assert.throws(() => int("timeoutMs", "0", ms), {
      name: "ConfigError",
      message: 'timeoutMs: must be a whole number of milliseconds from 1 to 2147483647, got "0"',
    });
    assert.throws(() => int("timeoutMs", "2147483648", ms), /^ConfigError: timeoutMs: .* got "2147483648"$/);
    assert.throws(() => int("timeoutMs", "1e308", ms), {
      message: 'timeoutMs: must be a whole number of milliseconds from 1 to 2147483647, got "1e308"',
    });
    assert.throws(() => int("vcpuCount", "65", { min: 1, max: 64 }), {
      message: 'vcpuCount: must be a whole number from 1 to 64, got "65"',
    });
  });
});

describe("reportError", () => {
  it("does not throw on values that are not Errors", () => {
    const write = process.stderr.write;
    let text = "";
    process.stderr.write = ((s: string) => {
      text += s;
      return true;
    }) as typeof process.stderr.write;
    try {
      assert.equal(reportError(undefined, false), 1);
      assert.equal(reportError("boom", false), 1);
      assert.equal(reportError(new ConfigError("x", "bad"), false), 2);
    } finally {
      process.stderr.write = write;
    }
    assert.equal(text, "smolvm: Error: undefined\nsmolvm: Error: boom\nsmolvm: x: bad\n");
  });

  it("does not throw when the stream throws", () => {
    const write = process.stderr.write;
    process.stderr.write = (() => {
      throw new Error("closed");
    }) as typeof process.stderr.write;
    try {
      assert.equal(reportError(new Error("x"), false), 1);
    } finally {
      process.stderr.write = write;
    }
  });
});

describe("a reader that closes the pipe early", () => {
  const state = mkdtempSync(join(tmpdir(), "smolvm-epipe-"));
  after(() => rmSync(state, { recursive: true, force: true }));

  /** Run the CLI with its stdout pipe closed before it writes anything. */
  function closedStdout(args: string[]): Promise<{ code: number | null; signal: string | null; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [cliPath, ...args], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, SMOLVM_STATE_DIR: state },
      });
      child.stdout.destroy(); // our end of the pipe: the child's writes fail with EPIPE
      let stderr = "";
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      child.on("close", (code, signal) => resolve({ code, signal, stderr }));
    });
  }

  it("--help exits 0 quietly", async () => {
    const r = await closedStdout(["--help"]);
    assert.equal(r.stderr, "");
    assert.deepEqual([r.code, r.signal], [0, null]);
  });

  it("keeps the exit code of a command that failed", async () => {
    const r = await closedStdout(["status", "no-such-vm", "--json"]);
    assert.equal(r.stderr, "");
    assert.deepEqual([r.code, r.signal], [1, null]);
  });

  it("through a shell pipe into head", async () => {
    const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
      const script = `("${process.execPath}" "${cliPath}" --help; echo "node exit $?" >&2) | head -c 1`;
      const child = spawn("sh", ["-c", script]);
      let out = "";
      let err = "";
      child.stdout.on("data", (d) => {
        out += d;
      });
      child.stderr.on("data", (d) => {
        err += d;
      });
      child.on("close", (code) => resolve({ code, out, err }));
    });
    assert.equal(r.out.length, 1);
    assert.equal(r.err, "node exit 0\n");
    assert.equal(r.code, 0);
  });
});

describe("the KVM notice", () => {
  it("is one short line, once per host and QEMU build", async () => {
    const { tcgNotice } = await import("../src/backends/qemu/accel.js");
    const dir = mkdtempSync(join(tmpdir(), "smolvm-notice-"));
    const saved = process.env.SMOLVM_DATA_DIR;
    process.env.SMOLVM_DATA_DIR = dir;
    try {
      const first = tcgNotice("host-a");
      assert.ok(first && first.length <= 100 && !first.includes("\n"), String(first));
      assert.match(first, /smolvm doctor/);
      assert.equal(tcgNotice("host-a"), null, "shown once");
      assert.ok(tcgNotice("host-b"), "a new QEMU build or host kernel: shown again");
    } finally {
      if (saved === undefined) delete process.env.SMOLVM_DATA_DIR;
      else process.env.SMOLVM_DATA_DIR = saved;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("start-up", () => {
  /** The modules `smolvm ARGS` loads. */
  function loaded(args: string[]): string[] {
    const hook = join(repoRoot, "test", "support", "log-imports.mjs");
    const r = spawnSync(process.execPath, ["--import", hook, cliPath, ...args], { encoding: "utf8" });
    return r.stderr
      .split("\n")
      .filter((l) => l.startsWith("import "))
      .map((l) => l.slice(7));
  }

  it("--version loads nothing of the SDK, not even the argument parser", () => {
    const mods = loaded(["--version"]);
    assert.ok(mods.some((m) => m.endsWith("/cli/main.js")));
    for (const m of mods) assert.doesNotMatch(m, /sandbox|state\/|images\/|better-sqlite3|commander/, m);
  });

  it("a command loads only its own command module", () => {
    const mods = loaded(["logs", "--help"]);
    assert.ok(mods.some((m) => m.endsWith("/cli/logs.js")));
    for (const m of mods) assert.doesNotMatch(m, /cli\/(images|pack|cp|network|system)\.js|images\/oci/, m);
  });
});
