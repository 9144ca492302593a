/**
 * Another local user (created by this test) against root's VMs: it cannot reach any socket, disk, database or log,
 * even when it created `/tmp/smolvm-0` first, and a runtime dir it could tamper with is refused (fail closed). Also:
 * ids and names never collide, CLI numbers are strict, the shared disk mode works.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { defaultRootfsPath } from "../src/images/store.js";
import { ConfigError, SmolVM } from "../src/index.js";
import { StateStore } from "../src/state/store.js";
import { cli, isolatedState } from "./helpers.js";

const state = isolatedState();
chmodSync(state, 0o755); // a pre-existing state dir others can list: SmolVM must close it
const isRoot = process.getuid?.() === 0;
const USER = "smolvm-test-intruder";
let intruder: { uid: number; gid: number } | null = null;
const scratch = mkdtempSync(join(tmpdir(), "smolvm-users-"));
chmodSync(scratch, 0o755);
let createdTmpDir = false;

before(() => {
  if (!isRoot) return;
  if (spawnSync("id", ["-u", USER]).status !== 0) {
    spawnSync("useradd", ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], { stdio: "ignore" });
  }
  const uid = Number(spawnSync("id", ["-u", USER], { encoding: "utf8" }).stdout.trim());
  const gid = Number(spawnSync("id", ["-g", USER], { encoding: "utf8" }).stdout.trim());
  if (uid > 0) intruder = { uid, gid };
});
after(() => {
  rmSync(scratch, { recursive: true, force: true });
  if (createdTmpDir) rmSync("/tmp/smolvm-0", { recursive: true, force: true });
  if (intruder) spawnSync("userdel", [USER], { stdio: "ignore" });
});

/** Run a Node script as the intruder; it prints JSON. */
function asIntruder(script: string): Promise<Record<string, string>> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, ["--input-type=module", "-e", script], {
      uid: intruder?.uid,
      gid: intruder?.gid,
      cwd: "/",
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    c.stdout.on("data", (d) => {
      out += d;
    });
    c.stderr.on("data", (d) => {
      err += d;
    });
    c.on("close", () => {
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`intruder script failed: ${err}`));
      }
    });
  });
}

describe("another local user", () => {
  it("cannot reach any socket, disk, database or log of root's VMs, even after creating /tmp/smolvm-0 first", async (t) => {
    if (!intruder) return t.skip("needs root to create a second user");
    if (!existsSync("/tmp/smolvm-0")) {
      mkdirSync("/tmp/smolvm-0", { mode: 0o777 });
      chownSync("/tmp/smolvm-0", intruder.uid, intruder.gid);
      createdTmpDir = true;
    }
    await using vm = await SmolVM.create({ memSizeMib: 256, env: { TOKEN: "secret" } });
    await vm.snapshot({ name: "users-snap" });
    const rec = StateStore.open().get(vm.vmId);
    const h = rec?.handle;
    assert.ok(rec && h);
    const files = [
      join(state, "smolvm.db"),
      rec.diskPath as string,
      join(rec.vmDir, "console.log"),
      ...StateStore.open()
        .listSnapshots()
        .flatMap((s) => [s.memFile, s.diskFile]),
    ];
    const sockets = ["agent.sock", "qmp.sock", "ctl.sock", "events.sock", "console.sock", "channel.sock"].map((s) =>
      join(h.runDir, s),
    );
    const got = await asIntruder(`
      import { readFileSync, readdirSync } from "node:fs";
      import { connect } from "node:net";
      const out = {};
      for (const f of ${JSON.stringify([...files, state, h.runDir])}) {
        try { (f.endsWith(".db") || f.includes(".") ? readFileSync(f) : readdirSync(f)); out[f] = "OK"; } catch (e) { out[f] = e.code; }
      }
      for (const s of ${JSON.stringify(sockets)}) {
        out[s] = await new Promise((r) => { const c = connect(s); c.on("connect", () => { c.destroy(); r("OK"); }); c.on("error", (e) => r(e.code)); });
      }
      console.log(JSON.stringify(out));`);
    const reached = Object.entries(got).filter(([, v]) => v === "OK");
    assert.deepEqual(reached, [], "the other user reached these");
    assert.equal(Object.keys(got).length, files.length + 2 + sockets.length);
    assert.equal((await vm.run("echo $TOKEN")).output, "secret");
  });

  it("a runtime dir another user owns or could swap is refused before anything starts", async (t) => {
    if (!intruder) return t.skip("needs root to create a second user");
    const theirs = join(scratch, "theirs");
    mkdirSync(theirs, { mode: 0o700 });
    chownSync(theirs, intruder.uid, intruder.gid);
    const link = join(scratch, "link");
    const mine = join(scratch, "mine");
    mkdirSync(mine, { mode: 0o700 });
    symlinkSync(mine, link);
    const open = join(scratch, "open");
    mkdirSync(open);
    chmodSync(open, 0o777); // writable by all, not sticky: an entry in it can be renamed away by anyone
    for (const [dir, why] of [
      [join(theirs, "rt"), /owned by uid/],
      [link, /symlink/],
      [join(open, "rt"), /written by other users and is not sticky/],
    ] as const) {
      const before = (await SmolVM.list()).length;
      const r = await cli(["create", "--mem", "256"], { env: { SMOLVM_RUNTIME_DIR: dir } });
      assert.equal(r.code, 1, `${dir} was accepted`);
      assert.match(r.stderr, why);
      assert.equal((await SmolVM.list()).length, before, "a VM was started anyway");
    }
  });
});

describe("ids, names and numbers", () => {
  it("a name never shadows another VM's id, and names shaped like ids are refused", async () => {
    await using a = await SmolVM.create({ memSizeMib: 256 });
    await assert.rejects(SmolVM.create({ memSizeMib: 256, name: a.vmId }), ConfigError);
    assert.throws(() => new SmolVM({ name: "vm-abcdefghij" }), /looks like a VM id/);
    // a record from before the rule: lookup by id still finds the VM with that id
    const store = StateStore.open();
    const b = await SmolVM.create({ memSizeMib: 256, name: "plain-name" });
    store.db.prepare("UPDATE vms SET name = ? WHERE id = ?").run(a.vmId, b.vmId);
    assert.equal((await SmolVM.fromId(a.vmId)).vmId, a.vmId);
    store.db.prepare("UPDATE vms SET name = NULL WHERE id = ?").run(b.vmId);
    await b.delete();
  });

  it("numbers are plain decimal within range, and checked before anything boots", async () => {
    const before = (await SmolVM.list()).length;
    for (const args of [
      ["run", "--timeout", "1e308", "--", "true"],
      ["run", "--timeout", "2147483648", "--", "true"],
      ["run", "--mem", "0x100", "--", "true"],
      ["run", "--cpus", "2.5", "--", "true"],
      ["create", "--mem", "-512"],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /(--timeout|--mem|--cpus): (must be|not a duration)/);
    }
    assert.equal((await SmolVM.list()).length, before);
  });

  it("diskMode shared boots and writes the image in place", async () => {
    const image = join(scratch, "shared.ext4");
    copyFileSync(defaultRootfsPath(), image);
    const refused = await cli(["run", "--mem", "256", "--disk-mode", "shared", "--", "true"]);
    assert.equal(refused.code, 2, "the built-in image, which every VM shares, must never be written");
    assert.match(refused.stderr, /--disk-mode: .*--rootfs/);
    const r = await cli(["run", "--mem", "256", "--disk-mode", "shared", "--rootfs", image, "--", "echo ok"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "ok");
    await using vm = await SmolVM.create({ memSizeMib: 256, diskMode: "shared", rootfsPath: image });
    await vm.run("echo kept > /root/shared-proof && sync");
    await vm.stop();
    await using again = await SmolVM.create({ memSizeMib: 256, diskMode: "shared", rootfsPath: image });
    assert.equal((await again.run("cat /root/shared-proof")).output, "kept");
  });
});
