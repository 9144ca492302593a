/** Console log tails: read from the end of the file, whatever its size. */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { tailFile, tailLines } from "../src/sandbox/console-log.js";

const dir = mkdtempSync(join(tmpdir(), "smolvm-console-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A file holding `text`. */
function file(name: string, text: string | Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const tail = (path: string, n: number, maxBytes?: number) => tailLines(path, n, maxBytes).toString();

describe("tailLines", () => {
  it("tails a 200 MB log for 5 lines without reading it into memory", () => {
    const path = join(dir, "big.log");
    const fd = openSync(path, "w");
    const block = Buffer.from("[    1.000000] kernel: some boot message\n".repeat(25_000)); // ~1 MB
    let size = 0;
    while (size < 200 << 20) size += writeSync(fd, block);
    writeSync(fd, "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\n");
    closeSync(fd);

    global.gc?.();
    const before = process.memoryUsage().rss;
    const out = tailLines(path, 5);
    const grown = process.memoryUsage().rss - before;
    assert.equal(out.toString(), "line 3\nline 4\nline 5\nline 6\nline 7\n");
    assert.ok(grown < 30 << 20, `RSS grew by ${grown} bytes`);
    rmSync(path);
  });

  it("counts lines as tail -n does", () => {
    const path = file("lines.log", "a\nb\nc\n");
    assert.equal(tail(path, 1), "c\n");
    assert.equal(tail(path, 2), "b\nc\n");
    assert.equal(tail(path, 3), "a\nb\nc\n");
    assert.equal(tail(path, 0), "");
  });

  it("keeps a last line that has no newline", () => {
    const path = file("no-newline.log", "a\nb\nc");
    assert.equal(tail(path, 1), "c");
    assert.equal(tail(path, 2), "b\nc");
    assert.equal(tail(file("one.log", "just one line"), 3), "just one line");
  });

  it("returns the whole file when it has fewer lines than asked", () => {
    const path = file("short.log", "a\nb\n");
    assert.equal(tail(path, 10), "a\nb\n");
  });

  it("keeps empty lines and finds lines across 64 KiB blocks", () => {
    assert.equal(tail(file("blank.log", "a\n\n\nb\n\n"), 3), "\nb\n\n");
    const long = "x".repeat(100_000);
    const path = file("long.log", `first\n${long}\n${long}\nlast`);
    assert.equal(tail(path, 3), `${long}\n${long}\nlast`);
    assert.equal(tail(path, 4), `first\n${long}\n${long}\nlast`);
  });

  it("reads back at most maxBytes, from a line boundary", () => {
    const path = file("capped.log", "aaaa\nbbbb\ncccc\ndddd\n");
    assert.equal(tail(path, 10, 12), "cccc\ndddd\n");
    assert.equal(tail(file("one-line.log", "x".repeat(50)), 5, 10), "x".repeat(10));
  });

  it("gives nothing for an empty or missing file", () => {
    assert.equal(tailLines(file("empty.log", ""), 5).length, 0);
    assert.equal(tailLines(join(dir, "missing.log"), 5).length, 0);
  });
});

describe("tailFile", () => {
  it("still returns the last bytes as text", () => {
    const path = file("bytes.log", "0123456789");
    assert.equal(tailFile(path, 4), "6789");
    assert.equal(tailFile(path), "0123456789");
    assert.equal(tailFile(join(dir, "missing.log")), "");
  });
});
