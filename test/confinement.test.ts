/**
 * The VMM is confined (real VMs): an unprivileged per-VM identity, seccomp, its own cgroup, no descriptor of the
 * caller's, and RAM files that no VM can change for the next one. And every file SmolVM writes is private, whatever
 * the umask or the state dir's mode.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  chmodSync,
  closeSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { cgroupVersion, limitsFor } from "../src/backends/cgroups.js";
import { SmolVM } from "../src/index.js";
import { dataDir } from "../src/paths.js";
import { StateStore } from "../src/state/store.js";
import { isolatedState, repoRoot } from "./helpers.js";

isolatedState();
const isRoot = process.getuid?.() === 0;

function status(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

const fdTargets = (pid: number) =>
  readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return "";
    }
  });

/** Run a script in a child Node process (inheriting `extraFd` as its fd 3, and a umask), printing JSON. */
function child(script: string, opts: { extraFd?: number; umask?: number } = {}): Promise<string> {
  const prelude = opts.umask !== undefined ? `process.umask(${opts.umask});` : "";
  const code = `${prelude}const { SmolVM } = await import(${JSON.stringify(join(repoRoot, "dist/src/index.js"))});${script}`;
  return new Promise((resolve, reject) => {
    const stdio: ("ignore" | "pipe" | number)[] = ["ignore", "pipe", "pipe"];
    if (opts.extraFd !== undefined) stdio.push(opts.extraFd);
    const c = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio });
    let out = "";
    let err = "";
    c.stdout?.on("data", (d) => {
      out += d;
    });
    c.stderr?.on("data", (d) => {
      err += d;
    });
    c.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`child failed (${code}): ${err}`))));
  });
}

describe("the VMM is confined", () => {
  it("QEMU and the proxy run as the VM's own unprivileged identity, under seccomp, with no capabilities", async (t) => {
    if (!isRoot) return t.skip("needs root (as another user VMs simply run as that user)");
    await using vm = await SmolVM.create({ memSizeMib: 256 });
    const h = StateStore.open().get(vm.vmId)?.handle;
    assert.ok(h?.proxyPid);
    const q = status(h.pid);
    const p = status(h.proxyPid);
    for (const [who, s] of [
      ["qemu", q],
      ["proxy", p],
    ] as const) {
      assert.notEqual(s.Uid?.split(/\s+/)[0], "0", `${who} runs as root`);
      assert.equal(s.Uid?.split(/\s+/)[0], String(h.uid), `${who} is not the VM's identity`);
      assert.equal(s.CapEff, "0000000000000000", `${who} has capabilities`);
      assert.equal(s.NoNewPrivs, "1", `${who} could gain privileges`);
    }
    assert.equal(q.Seccomp, "2", "QEMU has no seccomp filter");
    const args = readFileSync(`/proc/${h.pid}/cmdline`, "utf8").split("\0");
    const sandbox = args[args.indexOf("-sandbox") + 1] ?? "";
    for (const want of ["on", "obsolete=deny", "spawn=deny", "resourcecontrol=deny"]) {
      assert.ok(sandbox.split(",").includes(want), `-sandbox lacks ${want}: ${sandbox}`);
    }
    // another VM gets another identity: one escaped VMM cannot touch the other's processes
    await using other = await SmolVM.create({ memSizeMib: 256 });
    assert.notEqual(StateStore.open().get(other.vmId)?.handle?.uid, h.uid);
    assert.equal((await vm.run("echo still works")).output, "still works");
  });

  it("QEMU lives in a cgroup of its own with the VM's memory, process and CPU limits, removed on delete", async (t) => {
    if (!isRoot || cgroupVersion() === null) return t.skip("needs root and a cgroup file system");
    const vm = await SmolVM.create({ memSizeMib: 256, vcpuCount: 1 });
    const h = StateStore.open().get(vm.vmId)?.handle;
    assert.ok(h?.cgroups?.length);
    const mine = readFileSync(`/proc/${h.pid}/cgroup`, "utf8");
    const want = limitsFor(256, 1);
    for (const dir of h.cgroups) {
      assert.ok(mine.includes(dir.split("/").pop() as string), `QEMU is not in ${dir}`);
      if (existsSync(join(dir, "memory.max")))
        assert.equal(readFileSync(join(dir, "memory.max"), "utf8").trim(), String(want.memBytes));
      if (existsSync(join(dir, "memory.limit_in_bytes"))) {
        assert.equal(readFileSync(join(dir, "memory.limit_in_bytes"), "utf8").trim(), String(want.memBytes));
      }
      if (existsSync(join(dir, "pids.max")))
        assert.equal(readFileSync(join(dir, "pids.max"), "utf8").trim(), String(want.pids));
    }
    await vm.delete();
    for (const dir of h.cgroups) assert.equal(existsSync(dir), false, `${dir} left behind`);
  });

  it("QEMU and the proxy do not inherit the caller's file descriptors", async () => {
    const dir = mkdtempSync(join(tmpdir(), "smolvm-fd-"));
    const marker = join(dir, "caller-secret");
    const fd = openSync(marker, "w");
    try {
      const out = await child(
        `const vm = await SmolVM.create({ memSizeMib: 256, keep: true }); const { StateStore } = await import(${JSON.stringify(
          join(repoRoot, "dist/src/state/store.js"),
        )}); const h = StateStore.open().get(vm.vmId).handle; console.log(JSON.stringify({ id: vm.vmId, pid: h.pid, proxy: h.proxyPid })); vm.close();`,
        { extraFd: fd },
      );
      const { id, pid, proxy } = JSON.parse(out) as { id: string; pid: number; proxy: number };
      try {
        assert.ok(!fdTargets(pid).includes(marker), "QEMU holds the caller's descriptor");
        assert.ok(!fdTargets(proxy).includes(marker), "the proxy holds the caller's descriptor");
      } finally {
        await (await SmolVM.fromId(id)).delete();
      }
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a warm template's RAM file changed after capture is never mapped into a new VM: it is rebuilt", async () => {
    await using first = await SmolVM.create({ memSizeMib: 192 });
    assert.equal(first.startTimings?.from, "warm");
    const h = StateStore.open().get(first.vmId)?.handle;
    assert.ok(h);
    const ram = fdTargets(h.pid).find((f) => f.startsWith(join(dataDir(), "warm")) && f.endsWith("/ram.raw"));
    assert.ok(ram, "the VM does not map a warm template");
    assert.equal(lstatSync(ram).mode & 0o222, 0, "the template RAM file is writable");
    // what an escaped VMM could do through its descriptor: write the file (here: the same bytes, enough to tell)
    const fd = openSync(ram, "r+");
    const page = Buffer.alloc(4096);
    readSync(fd, page, 0, 4096, 0);
    writeSync(fd, page, 0, 4096, 0);
    closeSync(fd);
    const notes: string[] = [];
    await using second = await SmolVM.create({ memSizeMib: 192 }, { onProgress: (m) => notes.push(m) });
    assert.ok(
      notes.some((n) => /modified after it was written/.test(n)),
      notes.join("\n"),
    );
    assert.equal((await second.run("echo fresh")).output, "fresh");
  });
});

describe("private files", () => {
  it("with umask 000 and a pre-existing 0755 state dir, every file SmolVM writes is 0600 and every dir 0700", async () => {
    const state = mkdtempSync(join(tmpdir(), "smolvm-modes-"));
    chmodSync(state, 0o755);
    const pack = join(mkdtempSync(join(tmpdir(), "smolvm-modes-pack-")), "vm.smolmachine");
    try {
      await child(
        `process.env.SMOLVM_STATE_DIR = ${JSON.stringify(state)};
         const vm = await SmolVM.create({ memSizeMib: 256, env: { SECRET: "hunter2" } });
         await vm.run("echo data > /root/f");
         await vm.snapshot({ name: "s1" });
         await vm.pack(${JSON.stringify(pack)}, { withMemory: true });
         await vm.stop();`,
        { umask: 0 },
      );
      const open: string[] = [];
      const walk = (p: string) => {
        const st = lstatSync(p);
        if (st.isSymbolicLink()) return;
        if ((st.mode & 0o077) !== 0) open.push(`${p} ${(st.mode & 0o777).toString(8)}`);
        if (st.isDirectory()) for (const e of readdirSync(p)) walk(join(p, e));
      };
      walk(state);
      walk(pack);
      assert.deepEqual(open, [], "files or folders others can access");
      // the snapshot was split on a worker thread, even in a process started with `node --input-type=module -e`
      const snaps = readdirSync(join(state, "snapshots"));
      assert.ok(
        snaps.some((d) => existsSync(join(state, "snapshots", d, "fast", "ram.raw"))),
        "the snapshot was not split (its worker failed)",
      );
    } finally {
      process.env.SMOLVM_STATE_DIR_CLEANUP = state;
      await child(
        `process.env.SMOLVM_STATE_DIR = ${JSON.stringify(state)};
         for (const v of await SmolVM.list()) await (await SmolVM.fromId(v.vmId)).delete();
         for (const s of SmolVM.listSnapshots().reverse()) try { SmolVM.deleteSnapshot(s.id) } catch {}`,
      ).catch(() => {});
      rmSync(state, { recursive: true, force: true });
      rmSync(join(pack, ".."), { recursive: true, force: true });
    }
  });
});

after(() => {
  delete process.env.SMOLVM_STATE_DIR_CLEANUP;
});
