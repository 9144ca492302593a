/** Folders between host and guest (including a hostile guest), and the CLI's cp, env, exec stdin and shell. */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SmolVM, UnsafeArchiveError } from "../src/index.js";
import { cli, cliPath, isolatedState, tarEntry } from "./helpers.js";

isolatedState();
const host = mkdtempSync(join(tmpdir(), "smolvm-cp-"));
let vm: SmolVM;
before(async () => {
  vm = await SmolVM.create({ memSizeMib: 256, name: "cpbox" });
});
after(async () => {
  await vm.delete();
  rmSync(host, { recursive: true, force: true });
});

describe("folders", () => {
  it("upload and download a tree", async () => {
    const src = join(host, "tree");
    mkdirSync(join(src, "a/b"), { recursive: true });
    writeFileSync(join(src, "a/b/c.txt"), "nested");
    writeFileSync(join(src, "top.txt"), "top");
    await vm.uploadDir(src, "/srv/tree");
    assert.equal(await vm.files.read("/srv/tree/a/b/c.txt"), "nested");
    const back = join(host, "tree-back");
    const r = await vm.downloadDir("/srv/tree", back);
    assert.equal(r.files, 2);
    assert.equal(readFileSync(join(back, "a/b/c.txt"), "utf8"), "nested");
    assert.equal(readFileSync(join(back, "top.txt"), "utf8"), "top");
  });

  it("a hostile guest's archive with ../ entries and an outward symlink is refused; nothing lands outside", async () => {
    const evil = Buffer.concat([
      tarEntry("fine.txt", "0", "ok"),
      tarEntry("link", "2", "", "../../../../etc"),
      tarEntry("../escaped.txt", "0", "evil"),
      Buffer.alloc(1024),
    ]);
    await vm.files.write("/root/evil.tar", evil);
    // the guest is hostile: its `tar` now answers every request with the crafted archive
    await vm.run(
      "mkdir -p /hostile/bin && printf '#!/bin/sh\\ncat /root/evil.tar\\n' > /hostile/bin/tar && chmod +x /hostile/bin/tar",
    );
    await vm.env.set({ PATH: "/hostile/bin:/usr/sbin:/usr/bin:/sbin:/bin" });
    const before = readdirSync(host).sort();
    try {
      await assert.rejects(vm.downloadDir("/srv/tree", join(host, "victim")), (e: unknown) => {
        assert.ok(e instanceof UnsafeArchiveError);
        assert.match(e.message, /link.*points outside|'\.\.'/);
        return true;
      });
    } finally {
      await vm.env.unset(["PATH"]);
    }
    assert.deepEqual(readdirSync(host).sort(), before, "something was written next to the destination");
    assert.equal(existsSync(join(host, "victim")), false);
  });
});

describe("CLI", () => {
  it("cp copies files and folders both ways", async () => {
    writeFileSync(join(host, "one.txt"), "one");
    assert.equal((await cli(["cp", join(host, "one.txt"), "cpbox:/root/one.txt"])).code, 0);
    assert.equal(await vm.files.read("/root/one.txt"), "one");
    const down = await cli(["cp", "cpbox:/root/one.txt", join(host, "one-back.txt")]);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(readFileSync(join(host, "one-back.txt"), "utf8"), "one");
    mkdirSync(join(host, "dir/sub"), { recursive: true });
    writeFileSync(join(host, "dir/sub/f"), "f");
    assert.equal((await cli(["cp", join(host, "dir"), "cpbox:/srv/dir"])).code, 0);
    assert.equal((await cli(["cp", "cpbox:/srv/dir", join(host, "dir-back")])).code, 0);
    assert.equal(readFileSync(join(host, "dir-back/sub/f"), "utf8"), "f");
    const bad = await cli(["cp", join(host, "one.txt"), join(host, "two.txt")]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /ID:\/absolute\/path/);
  });

  it("env set, list, unset", async () => {
    assert.equal((await cli(["env", "set", "cpbox", "COLOR=blue", "SIZE=9"])).code, 0);
    assert.equal((await cli(["exec", "cpbox", "--", "echo $COLOR $SIZE"])).stdout, "blue 9\n");
    assert.deepEqual(JSON.parse((await cli(["env", "list", "cpbox", "--json"])).stdout), { COLOR: "blue", SIZE: "9" });
    assert.equal((await cli(["env", "unset", "cpbox", "COLOR", "SIZE"])).code, 0);
    assert.equal((await cli(["env", "list", "cpbox"])).stdout, "");
  });

  it("exec passes piped stdin through and streams the output", async () => {
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, [cliPath, "exec", "cpbox", "--", "tr a-z A-Z"], {
        stdio: ["pipe", "pipe", "inherit"],
      });
      let s = "";
      child.stdout.on("data", (d) => {
        s += d;
      });
      child.on("close", (code) => (code === 0 ? resolve(s) : reject(new Error(`exit ${code}`))));
      child.stdin.end("piped through\n");
    });
    assert.equal(out, "PIPED THROUGH\n");
  });

  it("shell runs interactively in a terminal (driven through tmux) and exits with the shell's code", async () => {
    const session = `smolvm-test-${process.pid}`;
    const exitFile = join(host, "shell-exit");
    const tmux = (...args: string[]) => execFileSync("tmux", args, { encoding: "utf8" });
    tmux(
      "new-session",
      "-d",
      "-s",
      session,
      "-x",
      "90",
      "-y",
      "25",
      `${process.execPath} ${cliPath} shell cpbox; echo $? > ${exitFile}`,
    );
    try {
      const screenHas = async (re: RegExp) => {
        for (let i = 0; i < 200; i++) {
          const screen = tmux("capture-pane", "-p", "-t", session);
          if (re.test(screen)) return screen;
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.fail(`screen never matched ${re}:\n${tmux("capture-pane", "-p", "-t", session)}`);
      };
      await screenHas(/#\s*$/m);
      tmux("send-keys", "-t", session, "echo hello-$((6*7)); stty size", "Enter");
      const screen = await screenHas(/^25 90\s*$/m);
      assert.match(screen, /hello-42/);
      tmux("resize-window", "-t", session, "-x", "100", "-y", "30");
      tmux("send-keys", "-t", session, "stty size", "Enter");
      await screenHas(/^30 100\s*$/m);
      tmux("send-keys", "-t", session, "exit 4", "Enter");
      for (let i = 0; i < 100 && !existsSync(exitFile); i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(readFileSync(exitFile, "utf8").trim(), "4");
    } finally {
      try {
        tmux("kill-session", "-t", session);
      } catch {}
    }
  });
});
