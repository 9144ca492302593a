/**
 * Lifetimes, held by each VM's own supervisor with no client running: a VM with a lifetime is deleted (or paused)
 * when it ends, `setTimeout` moves it; a VM made for one process (an SDK script killed with -9, a `smolvm run` whose
 * terminal closed) is deleted soon after that process is gone; a kept VM (`smolvm create`) stays.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { SmolVM } from "../src/index.js";
import { cli, cliPath, isolatedState, repoRoot } from "./helpers.js";

const stateDir = isolatedState();

const ok = async (args: string[]) => {
  const r = await cli(args, { timeoutMs: 180_000 });
  assert.equal(r.code, 0, `smolvm ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.trim();
};

/** The VM's record as `list --json` has it, or undefined once it is gone. */
async function listed(id: string): Promise<Record<string, unknown> | undefined> {
  const vms = JSON.parse(await ok(["list", "--json"])) as Record<string, unknown>[];
  return vms.find((v) => v.vmId === id);
}

async function waitUntil(what: string, cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.fail(`${what}: not within ${timeoutMs / 1000} s`);
}

/** A child process printing lines; resolves the first line matching `re`. */
function firstLine(child: ChildProcess, re: RegExp, timeoutMs = 180_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    const timer = setTimeout(() => reject(new Error(`no line matching ${re}: ${out} ${err}`)), timeoutMs);
    child.stderr?.on("data", (d) => {
      err += d;
    });
    child.stdout?.on("data", (d) => {
      out += d;
      const m = re.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    });
    child.on("exit", () => {
      clearTimeout(timer);
      reject(new Error(`exited before printing ${re}: ${out} ${err}`));
    });
  });
}

/** An SDK script in a child process: VM `a` (its own) and VM `b` (kept) are created, then `rest` runs. */
function sdkScript(name: string, rest: string): ChildProcess {
  const script = join(stateDir, name);
  writeFileSync(
    script,
    `import { SmolVM } from ${JSON.stringify(join(repoRoot, "dist", "src", "index.js"))};
     const a = await SmolVM.create({ memSizeMib: 256 });
     const b = await SmolVM.create({ memSizeMib: 256, keep: true });
     ${rest}`,
  );
  return spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "pipe"] });
}

describe("lifetimes", () => {
  it("a VM with a 5 s lifetime is deleted after it with no client running; list shows the time left", async () => {
    const id = await ok(["create", "--mem", "256", "--ttl", "5s"]);
    const before = await listed(id);
    assert.equal(before?.status, "running");
    assert.ok(typeof before?.timeLeftMs === "number" && before.timeLeftMs <= 5000, JSON.stringify(before));
    assert.match(await ok(["list"]), /EXPIRES[\s\S]*\d+s \(delete\)/);
    await waitUntil("the VM is deleted", async () => (await listed(id)) === undefined, 60_000);
  });

  it("--on-timeout pause pauses it instead, and it resumes with no lifetime left", async () => {
    const id = await ok(["create", "--mem", "256", "--ttl", "4s", "--on-timeout", "pause"]);
    await waitUntil("the VM is paused", async () => (await listed(id))?.status === "paused", 60_000);
    assert.equal((await listed(id))?.timeLeftMs, null);
    await ok(["resume", id]);
    assert.equal(await ok(["exec", id, "--", "echo", "back"]), "back");
    await ok(["rm", "-f", id]);
  });

  it("setTimeout extends a lifetime, and shortens it, from any process", async () => {
    const vm = await SmolVM.create({ memSizeMib: 256, timeoutMs: 4000, keep: true });
    vm.setTimeout(120_000);
    await new Promise((r) => setTimeout(r, 7000)); // past the first lifetime
    assert.equal((await vm.run("echo alive")).stdout, "alive\n");
    const left = vm.info().timeLeftMs as number;
    assert.ok(left > 100_000 && left <= 120_000, `time left ${left}`);
    await ok(["set-timeout", vm.vmId, "2s"]);
    await waitUntil("the VM is deleted", async () => (await listed(vm.vmId)) === undefined, 60_000);
  });

  it("the VM of an SDK process killed with -9 is reaped; a kept one is not", async () => {
    const child = sdkScript(
      "owner.mjs",
      `console.log("vms " + a.vmId + " " + b.vmId);
       setInterval(() => {}, 1000);`,
    );
    const [, owned, kept] = (await firstLine(child, /vms \S+ \S+/)).split(" ") as [string, string, string];
    assert.equal((await listed(owned))?.ownerPid, child.pid);
    child.kill("SIGKILL");
    await waitUntil("the owned VM is reaped", async () => (await listed(owned)) === undefined, 60_000);
    assert.equal((await listed(kept))?.status, "running", "a kept VM stays");
    await ok(["rm", "-f", kept]);
  });

  it("an SDK script that ran commands ends by itself; its kept VM stays, its own VM goes with it", async () => {
    const child = sdkScript(
      "ends.mjs",
      `await a.run("true");
       const r = await b.run("echo hi");
       console.log("vms " + a.vmId + " " + b.vmId + " " + r.output);`,
    );
    const [, owned, kept, said] = (await firstLine(child, /vms \S+ \S+ \S+/)).split(" ") as string[];
    assert.equal(said, "hi");
    // the open agent channels do not hold the process: it ends once nothing waits for a guest
    const code = await new Promise<number | null>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("the script did not end")), 60_000);
      child.once("exit", (c) => {
        clearTimeout(t);
        resolve(c);
      });
      if (child.exitCode !== null) resolve(child.exitCode);
    });
    assert.equal(code, 0);
    await waitUntil("the owned VM is reaped", async () => (await listed(owned as string)) === undefined, 60_000);
    assert.equal((await listed(kept as string))?.status, "running", "a kept VM stays");
    await ok(["rm", "-f", kept as string]);
  });

  for (const [signal, how] of [
    ["SIGHUP", "that got SIGHUP (its terminal closed) is deleted"],
    ["SIGKILL", "killed with -9 is reaped by its supervisor"],
  ] as const) {
    it(`the VM of a \`smolvm run\` ${how}`, async () => {
      const child = spawn(process.execPath, [cliPath, "run", "--mem", "256", "--", "echo started; sleep 600"], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      await firstLine(child, /started/);
      const vms = JSON.parse(await ok(["list", "--json"])) as { vmId: string; ownerPid: number | null }[];
      const mine = vms.find((v) => v.ownerPid === child.pid);
      assert.ok(mine, `the run's VM is listed with its owner: ${JSON.stringify(vms)}`);
      child.kill(signal);
      await waitUntil("the run's VM is deleted", async () => (await listed(mine.vmId)) === undefined, 60_000);
    });
  }

  it("a stopped VM whose owner is gone is deleted by the next reconcile", async () => {
    const script = join(stateDir, "stopper.mjs");
    writeFileSync(
      script,
      `import { SmolVM } from ${JSON.stringify(join(repoRoot, "dist", "src", "index.js"))};
       const a = await SmolVM.create({ memSizeMib: 256 });
       await a.stop();
       console.log("vm " + a.vmId);`,
    );
    const child = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "pipe"] });
    const id = (await firstLine(child, /vm \S+/)).split(" ")[1] as string;
    await new Promise((r) => child.on("exit", r));
    assert.equal(await listed(id), undefined);
  });

  it("lifetime flags are checked before anything starts", async () => {
    for (const [args, flag] of [
      [["create", "--ttl", "abc"], "--timeout"],
      [["create", "--ttl", "500ms"], "--timeout"],
      [["create", "--on-timeout", "pause"], "--on-timeout"],
      [["create", "--ttl", "5s", "--on-timeout", "stop"], "--on-timeout"],
    ] as const) {
      const r = await cli([...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(flag));
    }
    assert.deepEqual(JSON.parse(await ok(["list", "--json"])), []);
  });
});
