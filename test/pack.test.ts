/** .smolmachine files on real VMs: with and without memory, and refusing damaged files before anything boots. */
import assert from "node:assert/strict";
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PackError, SmolVM } from "../src/index.js";
import { cli, isolatedState } from "./helpers.js";
import { rewriteManifest } from "./pack-builder.js";

isolatedState();
const dir = mkdtempSync(join(tmpdir(), "smolvm-pack-test-"));
const withMem = join(dir, "app.smolmachine");
const diskOnly = join(dir, "disk.smolmachine");
let src: SmolVM;

before(async () => {
  src = await SmolVM.create({ memSizeMib: 256, name: "packsrc" });
  await src.run("echo packed > /root/in-pack");
  await src.env.set({ PACKED_ENV: "yes" });
  await src.spawn("while true; do sleep 1; done");
});
after(async () => {
  await src.delete();
  rmSync(dir, { recursive: true, force: true });
});

describe(".smolmachine", () => {
  it("pack with memory, inspect, and restore the running state (file, env, process)", async () => {
    const created = await cli(["pack", "create", "packsrc", "-o", withMem, "--with-memory", "--json"]);
    assert.equal(created.code, 0, created.stderr);
    const m = JSON.parse(created.stdout) as { sections: { name: string; size: number; length: number }[] };
    assert.deepEqual(
      m.sections.map((s) => s.name),
      ["kernel", "initrd", "disk", "mem"],
    );
    const disk = m.sections.find((s) => s.name === "disk");
    assert.ok(disk && disk.length < 64 << 20, "disk not compressed/sparse");
    const inspect = await cli(["pack", "inspect", withMem, "--verify"]);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.match(inspect.stdout, /256 MiB/);
    assert.match(inspect.stdout, /signed by this host/);
    const json = await cli(["pack", "inspect", withMem, "--json"]);
    assert.equal((JSON.parse(json.stdout) as { signedByThisHost: boolean }).signedByThisHost, true);
    assert.equal(statSync(withMem).mode & 0o777, 0o600);
    const notices: string[] = [];
    await using vm = await SmolVM.fromPack(withMem, { notice: (n) => notices.push(n) });
    assert.equal(vm.startTimings?.from, "snapshot", "signed by this host: restored without trust");
    assert.deepEqual(notices, []);
    assert.equal((await vm.run("cat /root/in-pack")).output, "packed");
    assert.equal((await vm.run("echo $PACKED_ENV")).output, "yes");
    assert.ok((await vm.processes.list()).some((p) => p.running && p.command.includes("sleep 1")));
  });

  it("a pack without memory cold-boots its disk; pack run runs a command and cleans up", async () => {
    assert.equal((await cli(["pack", "create", "packsrc", "-o", diskOnly])).code, 0);
    const r = await cli(["pack", "run", diskOnly, "--", "cat /root/in-pack; hostname"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^packed\n/);
    assert.equal((await SmolVM.list()).filter((v) => v.vmId !== src.vmId).length, 0, "pack run left a VM");
  });

  it("memory state from another VMM is not used: the disk is cold-booted with a one-line notice", async () => {
    const bytes = readFileSync(withMem);
    const m = /"vmm": "(qemu [^"]+)"/.exec(bytes.toString("latin1"));
    assert.ok(m?.[1]);
    const other = join(dir, "other-vmm.smolmachine");
    const fake = `qemu ${"9".repeat(m[1].length - 5)}`; // same length: offsets stay valid
    writeFileSync(other, Buffer.from(bytes.toString("latin1").replace(m[1], fake), "latin1"));
    const notices: string[] = [];
    await using vm = await SmolVM.fromPack(other, { notice: (n) => notices.push(n) });
    assert.equal(vm.startTimings?.from, "boot");
    assert.equal(notices.length, 1);
    assert.match(notices[0] as string, /memory state for qemu.*cold-booting its disk/);
    assert.doesNotMatch(notices[0] as string, /\n/);
    assert.equal((await vm.run("cat /root/in-pack")).output, "packed");
  });

  it("memory of a pack this host did not sign is not restored without trust; with trust it is", async () => {
    const unsigned = join(dir, "unsigned.smolmachine");
    writeFileSync(
      unsigned,
      rewriteManifest(readFileSync(withMem), (m) => {
        delete m.signature;
      }),
    );
    const inspect = await cli(["pack", "inspect", unsigned, "--verify", "--json"]);
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.equal((JSON.parse(inspect.stdout) as { signedByThisHost: boolean }).signedByThisHost, false);
    const notices: string[] = [];
    {
      await using vm = await SmolVM.fromPack(unsigned, { notice: (n) => notices.push(n) });
      assert.equal(vm.startTimings?.from, "boot");
      assert.equal(notices.length, 1);
      assert.match(notices[0] as string, /memory state.*not signed.*cold-booting its disk.*--trust/);
      assert.doesNotMatch(notices[0] as string, /\n/);
      assert.equal((await vm.run("cat /root/in-pack")).output, "packed");
    }
    {
      await using vm = await SmolVM.fromPack(unsigned, { trust: true, notice: (n) => notices.push(n) });
      assert.equal(vm.startTimings?.from, "snapshot");
      assert.equal(notices.length, 1, "a trusted pack gave a notice");
      assert.ok((await vm.processes.list()).some((p) => p.running && p.command.includes("sleep 1")));
    }
    // the CLI: --trust restores it too (a command run in the restored VM sees the running process)
    const probe = "grep -qs '[w]hile true' /proc/[0-9]*/cmdline && echo restored || echo cold";
    const r = await cli(["pack", "run", unsigned, "--trust", "--", probe]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "restored\n");
    assert.doesNotMatch(r.stderr, /--trust/);
    const cold = await cli(["pack", "run", unsigned, "--", probe]);
    assert.equal(cold.code, 0, cold.stderr);
    assert.equal(cold.stdout, "cold\n");
    assert.match(cold.stderr, /not signed.*--trust/);
  });

  it("a truncated or corrupted file is refused, naming the file, before anything boots", async () => {
    const bytes = readFileSync(diskOnly);
    const cut = join(dir, "cut.smolmachine");
    writeFileSync(cut, bytes.subarray(0, bytes.length - 4096));
    const before = (await SmolVM.list()).length;
    await assert.rejects(SmolVM.fromPack(cut), (e: unknown) => {
      assert.ok(e instanceof PackError);
      assert.match((e as Error).message, new RegExp(`${cut.replace(/[.]/g, "\\.")}.*(truncated|runs past)`));
      return true;
    });
    const bad = join(dir, "bad.smolmachine");
    writeFileSync(bad, bytes);
    const fd = openSync(bad, "r+");
    writeSync(fd, Buffer.from("garbage!"), 0, 8, statSync(bad).size - 100);
    closeSync(fd);
    await assert.rejects(SmolVM.fromPack(bad), /corrupted \(sha256 mismatch\)/);
    const notPack = join(dir, "not.smolmachine");
    writeFileSync(notPack, "hello");
    const r = await cli(["pack", "inspect", notPack]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /not\.smolmachine: not a usable \.smolmachine file/);
    assert.equal((await SmolVM.list()).length, before, "something was started from a damaged file");
    truncateSync(cut, 10);
  });
});
