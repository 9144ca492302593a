/** The state store under concurrent writers: several processes migrating and inserting at once. */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { resolveConfig } from "../src/config.js";
import { ConfigError } from "../src/errors.js";
import { MIGRATIONS } from "../src/state/migrations.js";
import { StateStore } from "../src/state/store.js";

const dir = mkdtempSync(join(tmpdir(), "smolvm-state-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const storeModule = new URL("../src/state/store.js", import.meta.url).href;
const configModule = new URL("../src/config.js", import.meta.url).href;

/** A child process that opens the store (racing the migration) and inserts `n` VMs. */
function writer(stateDir: string, tag: string, n: number): Promise<number | null> {
  const code = `
    const { StateStore } = await import(${JSON.stringify(storeModule)});
    const { resolveConfig } = await import(${JSON.stringify(configModule)});
    const s = StateStore.open(${JSON.stringify(stateDir)});
    for (let i = 0; i < ${n}; i++) {
      const c = resolveConfig({ vmId: "${tag}-" + i });
      s.insert({ id: c.vmId, name: null, backend: "qemu", status: "created", config: c, handle: null,
                 diskPath: null, diskFormat: null, vmDir: "/nonexistent", error: null });
      s.update(c.vmId, { status: "stopped" });
    }`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: "inherit" });
    child.on("close", resolve);
  });
}

describe("state store", () => {
  it("four processes migrate and write one fresh database at once without losing a row", async () => {
    const stateDir = join(dir, "race");
    const codes = await Promise.all(["a", "b", "c", "d"].map((t) => writer(stateDir, `vm-${t}`, 50)));
    assert.deepEqual(codes, [0, 0, 0, 0]);
    const s = StateStore.open(stateDir);
    assert.equal(s.schemaVersion, MIGRATIONS.length);
    const rows = s.list();
    assert.equal(rows.length, 200);
    assert.ok(rows.every((r) => r.status === "stopped"));
  });

  it("refuses a second VM with the same name, naming the field", () => {
    const s = StateStore.open(join(dir, "names"));
    const base = { backend: "qemu" as const, status: "created" as const, handle: null, diskPath: null };
    const rec = (id: string) => {
      const config = resolveConfig({ vmId: id, name: "web" });
      return { ...base, id, name: "web", config, diskFormat: null, vmDir: "/x", error: null };
    };
    s.insert(rec("vm-one"));
    assert.throws(
      () => s.insert(rec("vm-two")),
      (e: unknown) => e instanceof ConfigError && e.field === "name",
    );
  });
});
