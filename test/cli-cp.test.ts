/** `smolvm cp` with cp / docker cp rules, both directions, `-` both ways, and no partial destination on failure. */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { SmolVM } from "../src/index.js";
import { cli, cliPath, isolatedState, tarEntry } from "./helpers.js";

isolatedState();
const host = mkdtempSync(join(tmpdir(), "smolvm-cpr-"));
let vm: SmolVM;
let n = 0;
/** A fresh host folder for one case. */
const fresh = (name: string) => {
  const d = join(host, `${name}-${++n}`);
  mkdirSync(d);
  return d;
};

before(async () => {
  const r = await cli(["create", "--name", "cprules", "--mem", "256", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  vm = await SmolVM.fromId((JSON.parse(r.stdout) as { vmId: string }).vmId);
  // a host tree: src/a.txt, src/sub/b.txt
  mkdirSync(join(host, "src/sub"), { recursive: true });
  writeFileSync(join(host, "src/a.txt"), "A");
  writeFileSync(join(host, "src/sub/b.txt"), "B");
  writeFileSync(join(host, "f.txt"), "F");
  // the same tree in the guest
  await vm.run("mkdir -p /g/src/sub && printf A > /g/src/a.txt && printf B > /g/src/sub/b.txt && printf F > /g/f.txt");
});
after(async () => {
  vm.close();
  rmSync(host, { recursive: true, force: true });
});

/** The CLI with optional stdin; stdout kept as bytes (a tar stream). */
function run(args: string[], input?: Buffer): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.on("close", (code) => resolve({ code, stdout: Buffer.concat(out), stderr }));
    child.stdin.end(input ?? Buffer.alloc(0));
  });
}

const json = async (args: string[]) => {
  const r = await cli([...args, "--json"]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as { source: string; destination: string; bytes: number; type: string };
};
const guestFind = async (dir: string) => (await vm.run(["find", dir])).stdout.trim().split("\n").sort();
const hostFind = (dir: string): string[] => execFileSync("find", [dir], { encoding: "utf8" }).trim().split("\n").sort();

describe("a file", () => {
  it("host -> guest: to a new name, over a file, into a folder as DST/name", async () => {
    await vm.run("mkdir -p /t1/into && printf old > /t1/old.txt");
    const f = join(host, "f.txt");
    assert.deepEqual(await json(["cp", f, "cprules:/t1/new.txt"]), {
      source: f,
      destination: "cprules:/t1/new.txt",
      bytes: 1,
      type: "file",
    });
    assert.equal((await json(["cp", f, "cprules:/t1/old.txt"])).destination, "cprules:/t1/old.txt");
    assert.equal((await json(["cp", f, "cprules:/t1/into"])).destination, "cprules:/t1/into/f.txt");
    assert.equal((await json(["cp", f, "cprules:/t1/into/"])).destination, "cprules:/t1/into/f.txt");
    for (const p of ["/t1/new.txt", "/t1/old.txt", "/t1/into/f.txt"]) assert.equal(await vm.files.read(p), "F");
  });

  it("guest -> host: to a new name, over a file, into a folder as DST/name", async () => {
    const d = fresh("file-down");
    mkdirSync(join(d, "into"));
    writeFileSync(join(d, "old.txt"), "old");
    assert.deepEqual(await json(["cp", "cprules:/g/f.txt", join(d, "new.txt")]), {
      source: "cprules:/g/f.txt",
      destination: join(d, "new.txt"),
      bytes: 1,
      type: "file",
    });
    await json(["cp", "cprules:/g/f.txt", join(d, "old.txt")]);
    assert.equal((await json(["cp", "cprules:/g/f.txt", join(d, "into")])).destination, join(d, "into/f.txt"));
    for (const p of ["new.txt", "old.txt", "into/f.txt"]) assert.equal(readFileSync(join(d, p), "utf8"), "F");
  });

  it("a missing DST ending in /, or one whose folder is missing, is refused naming the path (both ways)", async () => {
    const up = await cli(["cp", join(host, "f.txt"), "cprules:/nope/"]);
    assert.equal(up.code, 1);
    assert.equal(
      up.stderr,
      "smolvm: cp: cprules:/nope/ does not exist: a destination ending in / must be an existing folder\n",
    );
    assert.equal(await vm.files.exists("/nope"), false);
    const deep = await cli(["cp", join(host, "f.txt"), "cprules:/nope/x/f.txt"]);
    assert.equal(deep.code, 1);
    assert.match(
      deep.stderr,
      /^smolvm: cp: cprules:\/nope\/x does not exist: the folder a copy is saved into must exist\n$/,
    );
    assert.equal(await vm.files.exists("/nope"), false);
    const d = fresh("slash");
    const down = await cli(["cp", "cprules:/g/f.txt", `${d}/nope/`]);
    assert.equal(down.code, 1);
    assert.equal(
      down.stderr,
      `smolvm: cp: ${d}/nope/ does not exist: a destination ending in / must be an existing folder\n`,
    );
    assert.deepEqual(readdirSync(d), []);
  });
});

describe("a folder", () => {
  it("host -> guest: new DST gets its contents, an existing folder gets DST/name, SRC/. merges, a file refuses", async () => {
    await vm.run("mkdir -p /t2/existing /t2/merge/sub && printf keep > /t2/merge/keep && printf x > /t2/file");
    const src = join(host, "src");
    assert.deepEqual(await json(["cp", src, "cprules:/t2/new"]), {
      source: src,
      destination: "cprules:/t2/new",
      bytes: 2,
      type: "dir",
    });
    assert.deepEqual(await guestFind("/t2/new"), ["/t2/new", "/t2/new/a.txt", "/t2/new/sub", "/t2/new/sub/b.txt"]);
    assert.equal((await json(["cp", src, "cprules:/t2/existing"])).destination, "cprules:/t2/existing/src");
    assert.equal(await vm.files.read("/t2/existing/src/sub/b.txt"), "B");
    assert.deepEqual(await guestFind("/t2/existing"), [
      "/t2/existing",
      "/t2/existing/src",
      "/t2/existing/src/a.txt",
      "/t2/existing/src/sub",
      "/t2/existing/src/sub/b.txt",
    ]);
    assert.equal((await json(["cp", `${src}/.`, "cprules:/t2/merge"])).destination, "cprules:/t2/merge");
    assert.deepEqual(await guestFind("/t2/merge"), [
      "/t2/merge",
      "/t2/merge/a.txt",
      "/t2/merge/keep",
      "/t2/merge/sub",
      "/t2/merge/sub/b.txt",
    ]);
    const onFile = await cli(["cp", src, "cprules:/t2/file"]);
    assert.equal(onFile.code, 1);
    assert.equal(onFile.stderr, "smolvm: cp: cprules:/t2/file is a file: a folder cannot be copied onto a file\n");
    assert.equal(await vm.files.read("/t2/file"), "x");
  });

  it("guest -> host: new DST gets its contents, an existing folder gets DST/name, SRC/. merges, a file refuses", async () => {
    const d = fresh("dir-down");
    mkdirSync(join(d, "existing"));
    mkdirSync(join(d, "merge/sub"), { recursive: true });
    writeFileSync(join(d, "merge/keep"), "keep");
    writeFileSync(join(d, "file"), "x");
    assert.deepEqual(await json(["cp", "cprules:/g/src", join(d, "new")]), {
      source: "cprules:/g/src",
      destination: join(d, "new"),
      bytes: 2,
      type: "dir",
    });
    assert.deepEqual(
      hostFind(join(d, "new")),
      ["", "/a.txt", "/sub", "/sub/b.txt"].map((p) => join(d, "new") + p),
    );
    assert.equal((await json(["cp", "cprules:/g/src", join(d, "existing")])).destination, join(d, "existing/src"));
    assert.deepEqual(
      hostFind(join(d, "existing")),
      ["", "/src", "/src/a.txt", "/src/sub", "/src/sub/b.txt"].map((p) => join(d, "existing") + p),
    );
    assert.equal((await json(["cp", "cprules:/g/src/.", join(d, "merge")])).destination, join(d, "merge"));
    assert.deepEqual(
      hostFind(join(d, "merge")),
      ["", "/a.txt", "/keep", "/sub", "/sub/b.txt"].map((p) => join(d, "merge") + p),
    );
    assert.equal(readFileSync(join(d, "merge/sub/b.txt"), "utf8"), "B");
    const onFile = await cli(["cp", "cprules:/g/src", join(d, "file")]);
    assert.equal(onFile.code, 1);
    assert.equal(onFile.stderr, `smolvm: cp: ${join(d, "file")} is a file: a folder cannot be copied onto a file\n`);
    assert.equal(readFileSync(join(d, "file"), "utf8"), "x");
  });
});

describe("- (a tar stream)", () => {
  it("as SRC: stdin's tar is extracted into an existing guest folder; a missing one is refused", async () => {
    await vm.run("mkdir -p /t3/in");
    const archive = execFileSync("tar", ["-c", "-f", "-", "-C", host, "src", "f.txt"]);
    const r = await run(["cp", "-", "cprules:/t3/in", "--json"], archive);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.toString()), {
      source: "-",
      destination: "cprules:/t3/in",
      bytes: archive.length,
      type: "dir",
    });
    assert.deepEqual(await guestFind("/t3/in"), [
      "/t3/in",
      "/t3/in/f.txt",
      "/t3/in/src",
      "/t3/in/src/a.txt",
      "/t3/in/src/sub",
      "/t3/in/src/sub/b.txt",
    ]);
    const missing = await run(["cp", "-", "cprules:/t3/none"], archive);
    assert.equal(missing.code, 1);
    assert.equal(
      missing.stderr,
      "smolvm: cp: cprules:/t3/none does not exist: with - (a tar stream on stdin) the destination must be an existing folder\n",
    );
    assert.equal(await vm.files.exists("/t3/none"), false);
  });

  it("as DST: a guest folder or file as a tar on stdout, named from basename(SRC); a hostile guest's tar never reaches it", async () => {
    const list = (b: Buffer) => execFileSync("tar", ["-t", "-f", "-"], { input: b, encoding: "utf8" }).split("\n");
    const dir = await run(["cp", "cprules:/g/src", "-"]);
    assert.equal(dir.code, 0, dir.stderr);
    assert.deepEqual(list(dir.stdout).filter(Boolean).sort(), ["src/", "src/a.txt", "src/sub/", "src/sub/b.txt"]);
    const out = fresh("untar");
    execFileSync("tar", ["-x", "-f", "-", "-C", out], { input: dir.stdout });
    assert.equal(readFileSync(join(out, "src/sub/b.txt"), "utf8"), "B");
    const file = await run(["cp", "cprules:/g/f.txt", "-"]);
    assert.equal(file.code, 0, file.stderr);
    assert.deepEqual(list(file.stdout).filter(Boolean), ["f.txt"]);
    assert.equal(execFileSync("tar", ["-x", "-O", "-f", "-"], { input: file.stdout, encoding: "utf8" }), "F");
    assert.equal(existsSync(join(process.cwd(), "-")), false);

    await vm.files.write(
      "/root/evil.tar",
      Buffer.concat([tarEntry("src/ok", "0", "ok"), tarEntry("src/../../escaped", "0", "evil"), Buffer.alloc(1024)]),
    );
    await vm.run(
      "mkdir -p /hostile/bin && printf '#!/bin/sh\\ncat /root/evil.tar\\n' > /hostile/bin/tar && chmod +x /hostile/bin/tar",
    );
    await vm.env.set({ PATH: "/hostile/bin:/usr/sbin:/usr/bin:/sbin:/bin" });
    try {
      const evil = await run(["cp", "cprules:/g/src", "-"]);
      assert.equal(evil.code, 1);
      assert.match(evil.stderr, /refused archive entry .*'\.\.' in path/);
      assert.equal(evil.stdout.length, 0);
    } finally {
      await vm.env.unset(["PATH"]);
    }
  });
});

describe("no partial destination", () => {
  it("a guest tar failing half way (host -> guest) leaves no folder and no temporary in the guest", async () => {
    await vm.run("mkdir -p /t4");
    // the guest's tar writes part of the tree, then fails
    await vm.run(
      'mkdir -p /broken/bin && printf \'#!/bin/sh\\nmkdir -p "$5/part" && echo x > "$5/part/f"; cat >/dev/null; echo broken >&2; exit 1\\n\' > /broken/bin/tar && chmod +x /broken/bin/tar',
    );
    await vm.env.set({ PATH: "/broken/bin:/usr/sbin:/usr/bin:/sbin:/bin" });
    try {
      const r = await cli(["cp", join(host, "src"), "cprules:/t4/new"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /guest tar failed: broken/);
    } finally {
      await vm.env.unset(["PATH"]);
    }
    assert.deepEqual(await guestFind("/t4"), ["/t4"]);
  });

  it("a copy from the guest into an existing folder stopped at --max-size keeps nothing", async () => {
    const d = fresh("limit");
    const r = await cli(["cp", "--max-size", "1", "cprules:/g/src", d]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /transfer stopped at the limit of 1 bytes/);
    assert.deepEqual(readdirSync(d), []);
  });

  it("Ctrl-C during an upload of a new folder leaves no guest folder and no temporary", async () => {
    await vm.run("mkdir -p /t5");
    const big = fresh("big");
    execFileSync("truncate", ["-s", "1G", join(big, "zeros")]);
    const child = spawn(process.execPath, [cliPath, "cp", big, "cprules:/t5/big"], { stdio: "ignore" });
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    // wait until the copy is writing in the guest (under any name), then interrupt it
    for (let i = 0; ; i++) {
      if ((await vm.files.list("/t5")).length > 0) break;
      assert.ok(i < 600, "the copy never started");
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill("SIGINT");
    assert.equal(await exited, 130);
    assert.deepEqual(await guestFind("/t5"), ["/t5"]);
  });
});

it("progress: on a terminal (driven through tmux) a large copy ends with a byte count on stderr", async () => {
  const session = `smolvm-cp-${process.pid}`;
  const exitFile = join(host, "progress-exit");
  writeFileSync(join(host, "r.bin"), Buffer.alloc(8 << 20, 7));
  const tmux = (...args: string[]) => execFileSync("tmux", args, { encoding: "utf8" });
  tmux(
    "new-session",
    "-d",
    "-s",
    session,
    "-x",
    "100",
    "-y",
    "10",
    `${process.execPath} ${cliPath} cp ${join(host, "r.bin")} cprules:/root/r.bin; echo $? > ${exitFile}; sleep 60`,
  );
  try {
    for (let i = 0; i < 2400 && !existsSync(exitFile); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(readFileSync(exitFile, "utf8").trim(), "0");
    assert.match(tmux("capture-pane", "-p", "-t", session), /smolvm: cp: 8\.0 MiB copied \(/);
  } finally {
    try {
      tmux("kill-session", "-t", session);
    } catch {}
  }
});
