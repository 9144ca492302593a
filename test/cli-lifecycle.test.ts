/**
 * The lifecycle through the CLI as a user meets it: `start` boots a stopped VM again, pause/resume are no-ops when
 * already there, every "not running" error names the command that fixes it; labels are shown, filtered on, and kept
 * through forks and packs; `list` is headed by words.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigError, SmolVM } from "../src/index.js";
import { cli, cliPath, isolatedState } from "./helpers.js";

isolatedState();

const ok = async (args: string[]) => {
  const r = await cli(args, { timeoutMs: 180_000 });
  assert.equal(r.code, 0, `smolvm ${args.join(" ")}: ${r.stderr}`);
  return r.stdout.trim();
};

describe("start, stop, pause and resume from the CLI", () => {
  it("start boots a stopped VM from its disk; errors name the command that fixes them", async () => {
    const id = (await ok(["create", "--mem", "256"])).trim();
    await ok(["exec", id, "--", "sh", "-c", "echo kept > /root/mark && sync"]);

    // pause twice, resume twice: no errors; a paused VM is told to resume, not to start
    await ok(["pause", id]);
    await ok(["pause", id]);
    const onPaused = await cli(["exec", id, "--", "true"]);
    assert.notEqual(onPaused.code, 0);
    assert.match(onPaused.stderr, new RegExp(`smolvm resume ${id}`));
    const startPaused = await cli(["start", id]);
    assert.notEqual(startPaused.code, 0);
    assert.match(startPaused.stderr, new RegExp(`smolvm resume ${id}`));
    await ok(["resume", id]);
    await ok(["resume", id]);
    assert.equal(await ok(["exec", id, "--", "cat", "/root/mark"]), "kept");

    // stopped: told to start it; start boots it again with its disk as it was
    await ok(["stop", id]);
    const onStopped = await cli(["exec", id, "--", "true"]);
    assert.notEqual(onStopped.code, 0);
    assert.match(onStopped.stderr, new RegExp(`smolvm start ${id}`));
    const pauseStopped = await cli(["pause", id]);
    assert.notEqual(pauseStopped.code, 0);
    assert.match(pauseStopped.stderr, new RegExp(`smolvm start ${id}`));
    assert.match(await ok(["start", id]), new RegExp(`${id} running`));
    assert.equal(await ok(["exec", id, "--", "cat", "/root/mark"]), "kept");
    assert.match(await ok(["start", id]), /running/, "start of a running VM is a no-op");
    await ok(["rm", "--force", id]);
  });
});

describe("labels", () => {
  it("are validated, shown, filtered on, and kept through a fork and a pack", async () => {
    assert.throws(() => new SmolVM({ labels: { "bad key": "x" } }), ConfigError);
    assert.throws(() => new SmolVM({ labels: { k: "line\nbreak" } }), ConfigError);
    const id = await ok(["create", "--mem", "256", "--label", "team=ml", "--label", "task=t1"]);
    const other = await ok(["create", "--mem", "256", "--label", "team=web"]);
    const ids = (args: string[]) =>
      ok(["list", "--json", ...args]).then((s) => (JSON.parse(s) as { vmId: string }[]).map((v) => v.vmId).sort());
    assert.deepEqual(await ids(["--filter", "label=team=ml"]), [id]);
    assert.deepEqual(await ids(["--filter", "label=team"]), [id, other].sort());
    assert.deepEqual(await ids(["--filter", "label=team=ml", "--filter", "label=task=t2"]), []);
    const bad = await cli(["list", "--filter", "team=ml"]);
    assert.equal(bad.code, 2, bad.stderr);

    const text = await ok(["list"]);
    const head = text.split("\n")[0] as string;
    for (const word of ["ID", "STATUS", "IMAGE", "MEMORY", "CPUS", "LABELS", "CREATED"])
      assert.match(head, new RegExp(`\\b${word}\\b`));
    assert.doesNotMatch(head, /MEMSIZEMIB|VCPUCOUNT/);
    assert.match(text, /task=t1,team=ml|team=ml,task=t1/);
    assert.match(await ok(["status", id]), /team/);

    const vm = await SmolVM.fromId(id);
    const [clone] = await vm.fork(1);
    assert.deepEqual(clone?.info().labels, { team: "ml", task: "t1" });
    await clone?.delete();
    const dir = mkdtempSync(join(tmpdir(), "smolvm-labels-"));
    try {
      await vm.pack(join(dir, "vm.smolmachine"));
      const copy = await SmolVM.fromPack(join(dir, "vm.smolmachine"));
      assert.deepEqual(copy.info().labels, { team: "ml", task: "t1" });
      await copy.delete();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    await vm.delete();
    await ok(["rm", "--force", other]);
  });
});

describe("a crashed VM", () => {
  it("reads crashed, with the reason, in status, list and the SDK's error; start boots it again", async () => {
    const id = await ok(["create", "--mem", "256"]);
    const pid = (JSON.parse(await ok(["status", id, "--json"])) as { pid: number }).pid;
    process.kill(pid, "SIGKILL");
    const st = JSON.parse(await ok(["status", id, "--json"])) as { status: string; error: string };
    assert.equal(st.status, "crashed");
    assert.match(st.error, /killed by SIGKILL/);
    assert.match(await ok(["list"]), new RegExp(`${id}\\s+-\\s+crashed`));
    const ex = await cli(["exec", id, "--", "true"]);
    assert.notEqual(ex.code, 0);
    assert.match(ex.stderr, /crashed \(the VMM was killed by SIGKILL/);
    assert.match(ex.stderr, new RegExp(`smolvm logs ${id}.*smolvm start ${id}`));
    await assert.rejects((await SmolVM.fromId(id)).run("true"), /crashed \(the VMM was killed by SIGKILL/);
    assert.match(await ok(["start", id]), /running/);
    assert.equal(await ok(["exec", id, "--", "echo", "again"]), "again");
    await ok(["rm", "-f", id]);
  });
});

describe("logs", () => {
  it("shows the console of warm-started and restored VMs, and follows it with -f until the VM goes", async () => {
    const id = await ok(["create", "--mem", "256"]);
    const log = await ok(["logs", id]);
    assert.match(log, /smolvm-agent: \[[0-9.]+\] ready/, "the boot of the warm template it was restored from");
    assert.match(log, /restored from the image's warm-start snapshot/);
    await ok(["exec", id, "--", "sh", "-c", "echo before-snapshot-line > /dev/console"]);
    await ok(["snapshot", "create", id, "--name", "logsnap"]);
    const copy = await ok(["create", "--snapshot", "logsnap"]);
    const copyLog = await ok(["logs", copy]);
    assert.match(copyLog, /before-snapshot-line[\s\S]*restored from snapshot/);

    const child = spawn(process.execPath, [cliPath, "logs", "-f", "-n", "0", id], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let followed = "";
    child.stdout.on("data", (d) => {
      followed += d;
    });
    const exited = new Promise<number | null>((r) => child.on("exit", r));
    await new Promise((r) => setTimeout(r, 1500));
    await ok([
      "exec",
      id,
      "--",
      "sh",
      "-c",
      "echo followed-line-1 > /dev/console; echo followed-line-2 > /dev/console",
    ]);
    const until = Date.now() + 20_000;
    while (!followed.includes("followed-line-2") && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
    assert.match(followed, /followed-line-1\s+followed-line-2/);
    assert.doesNotMatch(followed, /restored from/, "-n 0 starts at the end");
    await ok(["rm", "-f", id, copy]);
    assert.equal(await exited, 0, "logs -f ends when the VM goes");
    await ok(["snapshot", "rm", "logsnap"]);
  });
});

describe("flags", () => {
  it("are checked before anything starts, and a conflict names both flags", async () => {
    const cases: [string[], RegExp[]][] = [
      [
        ["create", "--snapshot", "nosuch", "--mem", "1024"],
        [/--mem/, /--snapshot/],
      ],
      [
        ["create", "--snapshot", "nosuch", "--cold-boot"],
        [/--cold-boot/, /--snapshot/],
      ],
      [["run", "--timeout", "abc", "--", "true"], [/--timeout/]],
      [
        ["create", "--image", "python", "--rootfs", "/etc/hostname"],
        [/--image/, /--rootfs/],
      ],
      [["create", "--mem", "1"], [/^smolvm: --mem: /]],
      [
        ["create", "--disk-mode", "shared"],
        [/--disk-mode/, /--rootfs/],
      ],
      [
        ["create", "--on-timeout", "pause"],
        [/--on-timeout/, /--timeout/],
      ],
      [
        ["create", "--net", "none", "--internet", "off"],
        [/--net none/, /--internet/],
      ],
    ];
    for (const [args, res] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `smolvm ${args.join(" ")}: ${r.stderr}`);
      for (const re of res) assert.match(r.stderr, re, args.join(" "));
    }
    assert.deepEqual(JSON.parse(await ok(["list", "--json"])), [], "nothing was created");
  });
});
