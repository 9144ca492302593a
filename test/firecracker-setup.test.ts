/** `smolvm setup --firecracker PATH` installs a binary the user supplies, once its version is one we speak. */
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { cli } from "./helpers.js";

const root = mkdtempSync(join(tmpdir(), "smolvm-fcsetup-"));
after(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
/** A release folder with a fake `firecracker` (and `jailer`) printing these versions; a fresh HOME. */
function release(fc: string | null, jailer?: string): { bin: string; home: string } {
  const d = join(root, `r${n++}`);
  mkdirSync(d);
  const bin = join(d, "firecracker");
  writeFileSync(bin, fc === null ? "#!/bin/sh\necho hello\n" : `#!/bin/sh\necho "Firecracker v${fc}"\necho\n`);
  chmodSync(bin, 0o755);
  if (jailer) {
    writeFileSync(join(d, "jailer"), `#!/bin/sh\necho "Jailer v${jailer}"\n`);
    chmodSync(join(d, "jailer"), 0o755);
  }
  const home = join(d, "home");
  mkdirSync(home);
  return { bin, home };
}

const setup = (path: string, home: string, json = true) =>
  cli(["setup", "--firecracker", path, ...(json ? ["--json"] : [])], { env: { HOME: home } });

describe("smolvm setup --firecracker", () => {
  it("installs firecracker and its jailer into ~/.local/bin, 0755", async () => {
    const { bin, home } = release("1.16.1", "1.16.1");
    const r = await setup(bin, home);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { firecracker: string; version: string; jailer: string };
    assert.deepEqual(out, {
      firecracker: join(home, ".local/bin/firecracker"),
      version: "1.16.1",
      jailer: join(home, ".local/bin/jailer"),
    });
    for (const f of [out.firecracker, out.jailer]) assert.equal(statSync(f).mode & 0o777, 0o755, f);
    assert.equal(readFileSync(out.firecracker, "utf8"), readFileSync(bin, "utf8"));
    // and doctor finds it there
    const d = await cli(["doctor", "--json"], { env: { HOME: home, PATH: "/usr/bin:/bin" }, timeoutMs: 180_000 });
    const fc = (JSON.parse(d.stdout) as { firecracker: { binary: string; version: string } }).firecracker;
    assert.deepEqual([fc.binary, fc.version], [out.firecracker, "1.16.1"]);
  });

  it("without a jailer beside it, only firecracker; plain output", async () => {
    const { bin, home } = release("1.17.0-dev");
    const r = await setup(bin, home, false);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /installed Firecracker v1\.17\.0-dev: .*\/\.local\/bin\/firecracker \(no jailer beside it\)/,
    );
    assert.equal(existsSync(join(home, ".local/bin/jailer")), false);
  });

  it("refuses, naming the file: missing, not executable, not Firecracker, unsupported, mismatched jailer", async () => {
    const missing = release("1.16.1");
    const notExec = release("1.16.1");
    chmodSync(notExec.bin, 0o644);
    const other = release(null);
    const old = release("1.7.0");
    const mixed = release("1.16.1", "1.15.0");
    const cases: [string, string, RegExp][] = [
      [join(missing.home, "nope"), missing.home, /firecracker binary .*\/nope does not exist/],
      [notExec.bin, notExec.home, /firecracker binary .*\/firecracker is not executable/],
      [other.bin, other.home, /\/firecracker is not a Firecracker binary: .*printed "hello"/],
      [old.bin, old.home, /\/firecracker: Firecracker v1\.7\.0 is older than this client supports \(>= 1\.12\.0/],
      [mixed.bin, mixed.home, /\/jailer is v1\.15\.0 but .*\/firecracker is v1\.16\.1/],
    ];
    for (const [path, home, re] of cases) {
      const r = await setup(path, home);
      assert.notEqual(r.code, 0, path);
      const err = (JSON.parse(r.stdout) as { error: { type: string; message: string } }).error;
      assert.equal(err.type, "FirecrackerInstallError");
      assert.match(err.message, re);
      assert.equal(existsSync(join(home, ".local/bin/firecracker")), false, "nothing installed");
    }
  });
});
