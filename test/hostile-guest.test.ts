/**
 * What a hostile or broken guest can do to the host (real VMs): fill its disk through a copy, flood its memory
 * through a slow reader, flood its console, send escape sequences to the user's terminal, break the protocol,
 * panic. Each is bounded or reported.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { agentPath } from "../src/images/agent-build.js";
import { FileSystemError, SmolVM, TransferLimitError, VMDiedError } from "../src/index.js";
import { StateStore } from "../src/state/store.js";
import { processAlive, waitFor } from "../src/util/proc.js";
import { cli, cliPath, isolatedState } from "./helpers.js";

isolatedState();
const dir = mkdtempSync(join(tmpdir(), "smolvm-hostile-"));
let vm: SmolVM;

before(async () => {
  vm = await SmolVM.create({ memSizeMib: 256, name: "hostile" });
});
after(async () => {
  await vm?.delete();
  rmSync(dir, { recursive: true, force: true });
});

const handle = (v: SmolVM) => {
  const h = StateStore.open().get(v.vmId)?.handle;
  assert.ok(h);
  return h;
};

/** Run a shell pipeline (the CLI piped into something); resolves with its output. */
function pipeline(cmd: string): Promise<{ out: string; code: number | null }> {
  return new Promise((resolve) => {
    const c = spawn("sh", ["-c", cmd], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    c.stdout.on("data", (d) => {
      out += d;
    });
    c.on("close", (code) => resolve({ out, code }));
  });
}

describe("copies from the guest are bounded", () => {
  it("a device, or a link to one, is refused unless asked; then the size limit stops it and nothing is left", async () => {
    await vm.run("ln -sf /dev/zero /root/looks-normal.txt");
    for (const src of ["/dev/zero", "/root/looks-normal.txt"]) {
      const out = join(dir, "zero.out");
      const r = await cli(["cp", `hostile:${src}`, out]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /not a regular file/);
      assert.equal(existsSync(out), false);
    }
    const out = join(dir, "limited.out");
    const r = await cli(["cp", "--allow-special", "--max-size", "4M", "hostile:/root/looks-normal.txt", out]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /limit of 4194304 bytes/);
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.startsWith("limited")),
      [],
      "partial output left behind",
    );
    await assert.rejects(
      vm.downloadFile("/dev/zero", join(dir, "sdk.out"), { allowSpecial: true, maxBytes: 1 << 20 }),
      TransferLimitError,
    );
    assert.equal((await vm.run("echo alive")).output, "alive");
  });

  it("a sparse 2 GiB guest file stays sparse on the host", async () => {
    await vm.run("truncate -s 2G /root/sparse && echo tail >> /root/sparse");
    const out = join(dir, "sparse.out");
    const r = await vm.downloadFile("/root/sparse", out);
    assert.equal(r.bytes, 2 ** 31 + 5);
    const st = statSync(out);
    assert.equal(st.size, 2 ** 31 + 5);
    assert.ok(st.blocks * 512 < 16 << 20, `the copy takes ${st.blocks * 512} bytes on disk`);
    rmSync(out);
  });

  it("files.read stops reading in the guest at maxBytes", async () => {
    await vm.run("truncate -s 1G /root/big");
    await assert.rejects(vm.files.read("/root/big", { maxBytes: 1 << 20 }), (e: unknown) => {
      assert.ok(e instanceof FileSystemError && e.code === "EFBIG");
      return true;
    });
    // the agent closed the file at once instead of streaming the rest of the gigabyte
    const open = await vm.run("ls -l /proc/1/fd | grep -c /root/big || true");
    assert.equal(open.output, "0");
  });

  it("an interrupted cp leaves nothing: SIGTERM removes its partial file, after SIGKILL the next command does", async () => {
    await vm.run("head -c 200000000 /dev/urandom > /root/rand");
    for (const sig of ["SIGTERM", "SIGKILL"] as const) {
      const out = join(dir, `cut-${sig}.out`);
      const c = spawn(process.execPath, [cliPath, "cp", "hostile:/root/rand", out], { stdio: "ignore" });
      const partial = () => readdirSync(dir).filter((f) => f.startsWith(`cut-${sig}`));
      assert.ok(await waitFor(() => partial().length > 0, 20_000), "the copy never started");
      c.kill(sig);
      await new Promise((r) => c.on("close", r));
      if (sig === "SIGKILL") {
        assert.ok(partial().length > 0, "expected the killed copy's temporary file");
        await cli(["list"]); // reconcile
      }
      assert.deepEqual(partial(), [], `${sig}: partial output left behind`);
    }
  });
});

describe("a slow reader and a noisy guest", () => {
  it("exec into a reader that stops: the command in the guest waits, the CLI's memory stays flat, no byte is lost", async () => {
    const bytes = 200_000_000;
    const gate = join(dir, "gate");
    spawnSync("mkfifo", [gate]);
    // the reader reads nothing until the gate opens
    const done = pipeline(
      `node ${cliPath} exec hostile -- 'head -c ${bytes} /dev/zero' | (cat ${gate} >/dev/null; wc -c)`,
    );
    /** Bytes the guest's `head` has written so far (0 until it runs). */
    const written = async () => {
      const r = await vm.run(
        'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = head ] && sed -n "s/^wchar: //p" $p/io; done; true',
      );
      return Number(r.output.split("\n")[0] || 0);
    };
    const cliPid = () => {
      for (const p of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
        try {
          const args = readFileSync(`/proc/${p}/cmdline`, "utf8");
          if (args.includes(cliPath) && args.includes("exec")) return Number(p);
        } catch {}
      }
      return null;
    };
    const rss = (pid: number) =>
      Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024;
    assert.ok(await waitFor(() => cliPid() !== null, 10_000));
    const pid = cliPid() as number;
    const start = rss(pid);
    // without flow control the guest writes on at full speed and the CLI buffers it all; with it, the guest stops
    // after a few MB: watch for 15 s, or until the guest is clearly past that
    let guest = 0;
    let peak = start;
    for (const t0 = Date.now(); Date.now() - t0 < 15_000 && guest < 64 << 20; ) {
      await new Promise((r) => setTimeout(r, 500));
      guest = await written();
      peak = Math.max(peak, rss(pid));
    }
    writeFileSync(gate, ""); // open the gate: the reader drains everything
    const r = await done;
    assert.equal(r.out.trim(), String(bytes));
    assert.ok(guest > 0, "never saw the guest's head running");
    assert.ok(guest < 32 << 20, `the guest wrote ${guest} bytes while nobody read: no backpressure`);
    assert.ok(peak - start < 40 << 20, `the CLI grew by ${Math.round((peak - start) / 2 ** 20)} MiB`);
  });

  it("the console log is capped and `logs -n` tails it; a terminal never gets the guest's escape sequences", async () => {
    await vm.run("yes 'console flood line .........................................' | head -c 3000000 > /dev/ttyS0");
    await vm.run("printf 'clip \\033]52;c;aGk=\\007 done\\n' > /dev/ttyS0");
    const log = join(StateStore.open().get(vm.vmId)?.vmDir as string, "console.log");
    assert.ok(await waitFor(() => readFileSync(log, "latin1").includes("done"), 10_000));
    assert.ok(statSync(log).size <= 1 << 20, `console log is ${statSync(log).size} bytes`);
    const tail = await cli(["logs", "hostile", "-n", "2"]);
    assert.equal(tail.stdout.split("\n").filter(Boolean).length, 2);
    assert.ok(tail.stdout.includes("\x1b]52"), "piped output keeps the exact bytes");
    // on a terminal (script(1) gives the CLI one) the sequence is shown, not sent
    const tty = await new Promise<string>((resolve) => {
      const c = spawn("script", ["-qec", `${process.execPath} ${cliPath} logs hostile -n 1`, "/dev/null"], {
        stdio: ["ignore", "pipe", "ignore"],
      });
      let out = "";
      c.stdout.on("data", (d) => {
        out += d;
      });
      c.on("close", () => resolve(out));
    });
    assert.match(tty, /clip \^\[\]52;c;aGk=\^G done/);
    assert.ok(!tty.includes("\x1b]52"), "the escape sequence reached the terminal");
  });
});

describe("a failing guest is reported", () => {
  it("a killed proxy is replaced on the next command", async () => {
    const h = handle(vm);
    process.kill(h.proxyPid as number, "SIGKILL");
    assert.ok(await waitFor(() => !processAlive(h.proxyPid), 3000));
    vm.close();
    assert.equal((await vm.run("echo back")).output, "back");
    assert.notEqual(handle(vm).proxyPid, h.proxyPid);
  });

  it("the proxy ends, saying why, when the guest sends a malformed frame", async () => {
    const d = mkdtempSync(join(tmpdir(), "smolvm-proxy-"));
    const upstream = join(d, "up.sock");
    const server = createServer((s) => {
      s.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x14, 0, 0, 0, 1])); // a length no frame can have
    });
    await new Promise<void>((r) => server.listen(upstream, r));
    const exitFile = join(d, "exit.json");
    const p = spawn(agentPath(), [
      "proxy",
      "--upstream",
      upstream,
      "--listen",
      join(d, "a.sock"),
      "--exit-file",
      exitFile,
    ]);
    const code = await new Promise((r) => p.on("close", r));
    server.close();
    assert.equal(code, 0);
    assert.match(readFileSync(exitFile, "utf8"), /"reason":"guest-protocol"/);
    rmSync(d, { recursive: true, force: true });
  });

  it("a VM whose proxy saw a protocol violation is failed with that reason, not given a new proxy", async () => {
    const v = await SmolVM.create({ memSizeMib: 256 });
    const h = handle(v);
    process.kill(h.proxyPid as number, "SIGKILL");
    await waitFor(() => !processAlive(h.proxyPid), 3000);
    writeFileSync(h.exitPath as string, '{"reason":"guest-protocol","event":"","at":0}\n'); // what the proxy writes
    v.close();
    await assert.rejects(v.run("true"), (e: unknown) => {
      assert.ok(e instanceof VMDiedError);
      assert.match((e as Error).message, /broke the agent protocol/);
      return true;
    });
    assert.equal(v.status, "crashed");
    assert.equal(processAlive(h.pid), false, "the VMM of a failed VM still runs");
    await v.delete();
  });

  it("a kernel panic is reported as such, with the panic line", async () => {
    const v = await SmolVM.create({ memSizeMib: 256 });
    await assert.rejects(v.run("echo c > /proc/sysrq-trigger"), VMDiedError);
    assert.ok(await waitFor(() => v.status !== "running", 10_000));
    assert.equal(v.status, "crashed");
    const info = (await SmolVM.list()).find((x) => x.vmId === v.vmId);
    assert.match(info?.error ?? "", /kernel panicked: Kernel panic - not syncing: sysrq triggered crash/);
    await v.delete();
  });
});
