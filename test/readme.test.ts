/** The README's first example runs as it is written, in a plain `.mjs` file, on the Node.js running the tests. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { isolatedState, repoRoot } from "./helpers.js";

isolatedState();

describe("README", () => {
  it("the first example runs in a plain .mjs file", () => {
    const readme = readFileSync(join(repoRoot, "README.md"), "utf8");
    const m = /```(?:js|ts)\n([\s\S]*?)```/.exec(readme);
    assert.ok(m, "the README has a code example");
    // inside the package, `import ... from "smolvm"` resolves to it (a package may import itself by name)
    const file = join(repoRoot, "dist", "readme-example.mjs");
    writeFileSync(file, m[1] as string);
    try {
      const r = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 240_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), "4");
    } finally {
      rmSync(file, { force: true });
    }
  });
});
