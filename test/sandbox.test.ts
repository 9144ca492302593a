/** What an agent does inside a sandbox: streaming, stdin, processes, env, files, PTY. Real VMs. */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { CommandAbortedError, CommandTimeoutError, FileNotFoundError, FileSystemError, SmolVM } from "../src/index.js";
import { isolatedState } from "./helpers.js";

isolatedState();
const host = mkdtempSync(join(tmpdir(), "smolvm-files-"));
const sha = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");

let vm: SmolVM;
before(async () => {
  vm = await SmolVM.create({ memSizeMib: 512 });
});
after(async () => {
  await vm.delete();
  rmSync(host, { recursive: true, force: true });
});

describe("processes", () => {
  it("streams output while the command is still running", async () => {
    let finished = false;
    const seenBeforeExit: string[] = [];
    const run = vm.run("echo one; sleep 2; echo two", {
      onStdout: (b) => {
        if (!finished) seenBeforeExit.push(b.toString());
      },
    });
    // the first chunk must arrive before the command ends, which is 2 s after it
    const r = await run.finally(() => {
      finished = true;
    });
    assert.equal(r.stdout, "one\ntwo\n");
    assert.equal(seenBeforeExit[0], "one\n");
  });

  it("passes stdin through: a string, and 10 MiB streamed into sha256sum", async () => {
    assert.equal((await vm.run("cat", { stdin: "round trip" })).stdout, "round trip");
    const data = randomBytes(10 << 20);
    const chunks = Readable.from(
      (function* () {
        for (let o = 0; o < data.length; o += 1 << 20) yield data.subarray(o, o + (1 << 20));
      })(),
    );
    const r = await vm.run("sha256sum", { stdin: chunks });
    assert.equal(r.stdout.split(" ")[0], sha(data));
  });

  it("spawn gives a live process: streams, stdin, kill", async () => {
    const p = await vm.spawn("while read line; do echo got:$line; done");
    assert.ok(p.pid > 1);
    p.stdin.write("a\n");
    const first = await new Promise<string>((resolve) => p.stdout.once("data", (b: Buffer) => resolve(b.toString())));
    assert.equal(first, "got:a\n");
    p.stdin.end("b\n");
    const r = await p.wait();
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "got:a\ngot:b\n");

    const bg = await vm.spawn("sleep 300");
    assert.equal((await vm.run(`kill -0 ${bg.pid} && echo alive`)).output, "alive");
    await bg.kill();
    const killed = await bg.wait();
    assert.equal(killed.signal, 9);
    assert.equal((await vm.run(`kill -0 ${bg.pid} 2>/dev/null || echo gone`)).output, "gone");
  });

  it("a command that never reads its stdin stalls nobody else, and its timeout still fires", async () => {
    const stuck = vm.run("sleep 300", { stdin: Buffer.alloc(32 << 20), timeoutMs: 3000 });
    assert.equal((await vm.run("echo other")).output, "other");
    await assert.rejects(stuck, CommandTimeoutError);
  });

  it("an AbortSignal kills the command", async () => {
    const ac = new AbortController();
    const run = vm.run("echo started; sleep 300", { signal: ac.signal, onStdout: () => ac.abort() });
    await assert.rejects(run, (e: unknown) => e instanceof CommandAbortedError && e.stdout === "started\n");
    assert.equal((await vm.run("ps -o args | grep -c '^sleep 300' || true")).output, "0");
  });

  it("an output flood leaves host memory bounded and reports truncation", async () => {
    const rss0 = process.memoryUsage().rss;
    let streamed = 0;
    const r = await vm.run("timeout -s KILL 5 yes", {
      onStdout: (b) => {
        streamed += b.length;
      },
    });
    const grew = process.memoryUsage().rss - rss0;
    assert.equal(r.truncated, true);
    assert.equal(Buffer.byteLength(r.stdout), 16 << 20);
    assert.ok(streamed > 16 << 20, `only ${streamed} bytes streamed`);
    assert.ok(grew < 200 << 20, `host RSS grew by ${grew >> 20} MiB for ${streamed >> 20} MiB of output`);
  });

  it("runs as another user", async () => {
    const r = await vm.run("id -u; echo $HOME", { user: "nobody" });
    assert.equal(r.stdout, "65534\n/nonexistent\n");
    await assert.rejects(vm.run("true", { user: "no-such-user" }), /no such user/);
  });
});

describe("persistent env", () => {
  it("applies to every later command until unset", async () => {
    await vm.env.set({ API_URL: "http://x", MODE: "test" });
    assert.equal((await vm.run("echo $API_URL $MODE")).output, "http://x test");
    assert.equal((await vm.run("echo $MODE", { env: { MODE: "override" } })).output, "override");
    assert.deepEqual(await vm.env.list(), { API_URL: "http://x", MODE: "test" });
    await vm.env.unset(["MODE"]);
    // biome-ignore lint/suspicious/noTemplateCurlyInString: shell parameter expansion, not a template
    assert.equal((await vm.run("echo ${MODE:-unset}")).output, "unset");
    assert.deepEqual(await vm.env.list(), { API_URL: "http://x" });
  });
});

describe("files", () => {
  it("write, read, stat, list, rename, remove", async () => {
    const w = await vm.files.write("/data/deep/a.txt", "hello", { mode: 0o600 });
    assert.equal(w.bytesWritten, 5);
    assert.equal(await vm.files.read("/data/deep/a.txt"), "hello");
    const st = await vm.files.stat("/data/deep/a.txt");
    assert.deepEqual([st.type, st.size, st.mode], ["file", 5, 0o600]);
    await vm.files.mkdir("/data/empty");
    await vm.files.write("/data/bin.dat", Buffer.from([0, 1, 2, 255]));
    assert.deepEqual([...(await vm.files.read("/data/bin.dat", { encoding: null }))], [0, 1, 2, 255]);
    const names = (await vm.files.list("/data", { depth: 3 })).map((e) => `${e.type}:${e.name}`).sort();
    assert.deepEqual(names, ["dir:deep", "dir:empty", "file:bin.dat", "file:deep/a.txt"]);
    await vm.files.rename("/data/deep/a.txt", "/data/moved/b.txt");
    assert.equal(await vm.files.exists("/data/deep/a.txt"), false);
    assert.equal(await vm.files.read("/data/moved/b.txt"), "hello");
    await assert.rejects(
      vm.files.remove("/data"),
      (e: unknown) => e instanceof FileSystemError && e.code === "ENOTEMPTY",
    );
    await vm.files.remove("/data", { recursive: true });
    assert.equal(await vm.files.exists("/data"), false);
  });

  it("a write keeps the file's owner, goes through symlinks, and refuses a fifo without a reader", async () => {
    await vm.run(
      "echo x > /tmp/owned && chown 65534:65534 /tmp/owned && echo t > /tmp/target && ln -sf /tmp/target /tmp/link && rm -f /tmp/ff && mkfifo /tmp/ff",
    );
    await vm.files.write("/tmp/owned", "new");
    assert.equal((await vm.run("stat -c %u:%g /tmp/owned; cat /tmp/owned")).stdout, "65534:65534\nnew");
    await vm.files.write("/tmp/link", "via link");
    assert.equal((await vm.run("test -L /tmp/link && cat /tmp/target")).output, "via link");
    await assert.rejects(
      vm.files.write("/tmp/ff", "data"),
      (e: unknown) => e instanceof FileSystemError && e.code === "ENXIO",
    );
    assert.equal((await vm.run("echo still-serving")).output, "still-serving");
  });

  it("a missing file is FileNotFoundError naming the path", async () => {
    await assert.rejects(vm.files.read("/no/such/file"), (e: unknown) => {
      assert.ok(e instanceof FileNotFoundError);
      assert.equal(e.path, "/no/such/file");
      assert.match(e.message, /\/no\/such\/file/);
      return true;
    });
  });

  it("writing to a read-only file system is a clear error and changes nothing", async () => {
    await vm.run("mkdir -p /mnt/ro && echo old > /mnt/ro-src && mount -t tmpfs -o ro tmpfs /mnt/ro");
    await assert.rejects(vm.files.write("/mnt/ro/x", "data"), (e: unknown) => {
      assert.ok(e instanceof FileSystemError);
      assert.equal(e.code, "EROFS");
      assert.match(e.message, /\/mnt\/ro\/x.*Read-only file system/);
      return true;
    });
    assert.equal((await vm.run("ls -A /mnt/ro | wc -l")).output, "0");
  });

  it("moves 100 MiB up and down intact, streaming", async () => {
    const local = join(host, "big.bin");
    const data = randomBytes(100 << 20);
    writeFileSync(local, data);
    const digest = sha(data);
    const up = await vm.uploadFile(local, "/root/big.bin");
    assert.equal(up.bytesWritten, 100 << 20);
    assert.equal((await vm.run("sha256sum /root/big.bin")).stdout.split(" ")[0], digest);
    const back = join(host, "back.bin");
    const down = await vm.downloadFile("/root/big.bin", back);
    assert.equal(down.bytes, 100 << 20);
    const h = createHash("sha256");
    for await (const chunk of createReadStream(back)) h.update(chunk);
    assert.equal(h.digest("hex"), digest);
    assert.deepEqual(
      readdirSync(host).filter((f) => f.includes("smolvm-")),
      [],
      "temporary files left behind",
    );
    await vm.files.remove("/root/big.bin");
  });

  it("a failed download leaves no partial file on the host", async () => {
    const dest = join(host, "never.bin");
    await assert.rejects(vm.downloadFile("/no/such", dest), FileNotFoundError);
    assert.equal(existsSync(dest), false);
    assert.deepEqual(
      readdirSync(host).filter((f) => f.startsWith("never")),
      [],
    );
  });
});

describe("pty", () => {
  it("reports its size to programs and follows resize", async () => {
    let screen = "";
    const t = await vm.pty.create({ cols: 100, rows: 30, onData: (b) => (screen += b.toString()) });
    const waitFor = async (re: RegExp) => {
      for (let i = 0; i < 200 && !re.test(screen); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(screen, re);
    };
    await t.write("stty size\n");
    await waitFor(/30 100/);
    await t.resize({ cols: 120, rows: 40 });
    await t.write("stty size; tty\n");
    await waitFor(/40 120/);
    await waitFor(/\/dev\/pts\/\d+/);
    await t.write("exit 3\n");
    assert.deepEqual(await t.wait(), { exitCode: 3, signal: null });
  });
});

describe("interrupted writes", () => {
  it("a client that goes away mid-write leaves the old content and no temp file", async () => {
    await vm.files.write("/root/keep.txt", "original");
    const other = await SmolVM.fromId(vm.vmId);
    let release: () => void = () => {};
    const hold = new Promise<void>((r) => {
      release = r;
    });
    const body = Readable.from(
      (async function* () {
        yield Buffer.from("partial new content");
        await hold;
      })(),
    );
    const w = other.files.write("/root/keep.txt", body);
    w.catch(() => {});
    // wait until the agent has the temp file open, then drop the connection
    for (let i = 0; i < 100; i++) {
      if ((await vm.run("ls -A /root | grep -c smolvm- || true")).output === "1") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    other.close();
    release();
    await assert.rejects(w);
    assert.equal(await vm.files.read("/root/keep.txt"), "original");
    assert.equal((await vm.run("ls -A /root | grep -c smolvm- || true")).output, "0");
  });
});

describe("background processes", () => {
  const until = async (pred: () => Promise<boolean>) => {
    for (let i = 0; i < 200; i++) {
      if (await pred()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail("condition never held");
  };

  it("survive their client; reattaching replays kept output and reports the exit", async () => {
    const other = await SmolVM.fromId(vm.vmId);
    const p = await other.spawn("echo first; echo err >&2; sleep 1; echo second; exit 5");
    other.close();
    const entry = (await vm.processes.list()).find((e) => e.pid === p.pid);
    assert.ok(entry, "not listed");
    assert.equal(entry.background, true);
    await until(async () => (await vm.processes.list()).find((e) => e.pid === p.pid)?.running === false);
    const listed = (await vm.processes.list()).find((e) => e.pid === p.pid);
    assert.equal(listed?.exitCode, 5);
    const again = await vm.processes.connect(p.pid);
    const r = await again.wait();
    assert.deepEqual([r.stdout, r.stderr, r.exitCode], ["first\nsecond\n", "err\n", 5]);
    assert.equal(
      (await vm.processes.list()).some((e) => e.pid === p.pid),
      false,
      "collected entry still listed",
    );
  });

  it("reattach to a running process: live output, then kill", async () => {
    const other = await SmolVM.fromId(vm.vmId);
    const p = await other.spawn("while true; do echo tick; sleep 0.2; done");
    other.close();
    const again = await vm.processes.connect(p.pid);
    const line = await new Promise<string>((resolve) =>
      again.stdout.once("data", (b: Buffer) => resolve(b.toString())),
    );
    assert.match(line, /^tick/);
    await again.kill();
    assert.equal((await again.wait()).signal, 9);
  });

  it("background: false dies with its client", async () => {
    const other = await SmolVM.fromId(vm.vmId);
    const p = await other.spawn("sleep 300", { background: false });
    other.close();
    await until(async () => !(await vm.processes.list()).some((e) => e.pid === p.pid));
    assert.equal((await vm.run(`kill -0 ${p.pid} 2>/dev/null || echo gone`)).output, "gone");
  });

  it("connect to an unknown pid is a clear error", async () => {
    await assert.rejects(vm.processes.connect(999999), /no such process/);
  });
});
