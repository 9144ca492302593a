/**
 * Property-based fuzzing of the tar reader with archives a hostile guest could send: hand-made entries with hostile
 * names, links, types, pax records and header fields, then raw byte mutations, fed in random chunkings. No VM needed.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { SmolVMError } from "../src/errors.js";
import { type ExtractStats, extractTar, packDir, TransferLimitError } from "../src/sandbox/tar.js";
import { tarEntry } from "./helpers.js";

// bounded for CI; FUZZ_RUNS / FUZZ_TIME_MS raise the budget for a longer local hunt
const runs = (n: number) => ({
  numRuns: Number(process.env.FUZZ_RUNS ?? n),
  plugins: [fc.interruptAfterTimeLimit(Number(process.env.FUZZ_TIME_MS ?? 20_000))],
});
const RUNS = runs(300);
const SLACK = 64 << 10;

// root/{sentinel.txt, l1/{sentinel-dir/inner.txt, l2/{sentinel.txt, l3/{sentinel.txt, sentinel-dir/, dest-N}}}}:
// every `..` a generated name or link can climb (up to four) lands on something watched
const root = mkdtempSync(join(tmpdir(), "smolvm-fuzz-tar-"));
after(() => rmSync(root, { recursive: true, force: true }));
const base = join(root, "l1", "l2", "l3");
mkdirSync(join(base, "sentinel-dir", "deeper"), { recursive: true });
mkdirSync(join(root, "l1", "sentinel-dir"));
writeFileSync(join(root, "sentinel.txt"), "top");
writeFileSync(join(root, "l1", "sentinel-dir", "inner.txt"), "inner");
writeFileSync(join(root, "l1", "l2", "sentinel.txt"), "middle");
writeFileSync(join(base, "sentinel.txt"), "next to dest");
writeFileSync(join(base, "sentinel-dir", "x"), "x");
symlinkSync("sentinel.txt", join(base, "sentinel-link"));

/** Everything under `root` except `skip`: type, mode, size, mtime, inode, content hash or link target. */
function snapshot(skip: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (p: string) => {
    if (p === skip) return;
    const st = lstatSync(p);
    let what = `${st.mode}:${st.size}:${st.mtimeMs}:${st.ino}:${st.nlink}`;
    if (st.isSymbolicLink()) what += `:->${readlinkSync(p)}`;
    else if (st.isFile()) what += `:${createHash("sha256").update(readFileSync(p)).digest("hex")}`;
    out.set(p, what);
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
  };
  walk(root);
  return out;
}

/** Regular files under `dir`: total size and total bytes allocated on disk (links are not followed). */
function usage(dir: string): { size: number; disk: number } {
  const u = { size: 0, disk: 0 };
  const walk = (p: string) => {
    const st = lstatSync(p);
    if (st.isFile()) {
      u.size += st.size;
      u.disk += st.blocks * 512;
    } else if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
  };
  walk(dir);
  return u;
}

/** What a user might do with the tree afterwards: write through every symlink in it. Escapes show in the snapshot. */
function probeLinks(dir: string): void {
  const walk = (p: string) => {
    const st = lstatSync(p);
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
    else if (st.isSymbolicLink()) {
      for (const poke of [() => writeFileSync(p, "probe", { flag: "a" }), () => mkdirSync(join(p, "probe-dir"))]) {
        try {
          poke();
        } catch {
          // dangling through a missing directory, loops, not a directory: all fine
        }
      }
    }
  };
  walk(dir);
}

let runId = 0;
/** Extract into a fresh dest; check the error type, the world outside dest, the limit, then remove dest. */
async function checkExtract(chunks: Buffer[], maxBytes: number | undefined): Promise<ExtractStats | Error> {
  const dest = join(base, `dest-${runId++}`);
  mkdirSync(dest);
  const before = snapshot(dest);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("extractTar did not finish in 10 s")), 10_000);
  });
  let result: ExtractStats | Error;
  try {
    result = await Promise.race([extractTar(chunks, dest, maxBytes === undefined ? {} : { maxBytes }), timeout]);
  } catch (e) {
    assert.ok(e instanceof SmolVMError, `unexpected ${(e as Error)?.name}: ${(e as Error)?.stack}`);
    result = e;
  } finally {
    clearTimeout(timer);
  }
  try {
    assert.ok(lstatSync(dest).isDirectory());
    if (maxBytes !== undefined) {
      const u = usage(dest);
      assert.ok(u.size <= maxBytes, `${u.size} bytes of files for maxBytes ${maxBytes}`);
      assert.ok(u.disk <= maxBytes + SLACK, `${u.disk} bytes on disk for maxBytes ${maxBytes}`);
      if (!(result instanceof Error)) assert.ok(result.bytes <= maxBytes);
    }
    if (!(result instanceof Error)) probeLinks(dest); // may create files inside dest: after the usage check
    assert.deepEqual(snapshot(dest), before, "something outside dest changed");
  } finally {
    rmSync(dest, { recursive: true, force: true });
  }
  return result;
}

function fixChecksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += h[i] as number;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
}

function split(data: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let o = 0;
  for (const c of cuts) {
    if (o >= data.length) break;
    out.push(data.subarray(o, o + c));
    o += c;
  }
  if (o < data.length) out.push(data.subarray(o));
  return out;
}

function paxRecord(key: string, value: string, skew = 0): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + String(body.length).length;
  if (String(len).length !== String(body.length).length) len++;
  return `${len + skew}${body}`;
}

// ---------- generators ----------

const ascii = (maxLength: number) =>
  fc.string({ unit: "binary-ascii", maxLength }).map((s) => s.replace(/[^\0-\x7f]/g, "?"));
const safeComponent = fc.constantFrom("a", "b", "c", "sub", "x".repeat(120));
const component = fc.oneof(
  { weight: 8, arbitrary: safeComponent },
  { weight: 6, arbitrary: fc.constantFrom("..", ".", "", "sentinel.txt", "sentinel-dir", "dest-0") },
  { weight: 1, arbitrary: fc.constantFrom("n".repeat(300), "sentinel-link", "l1", "l2", "l3") },
  { weight: 2, arbitrary: ascii(6) },
);
/** Mostly plain relative paths; one in four hostile (prefixes, `..`, odd components). */
const pathArb = (prefixes: string[]) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.array(safeComponent, { minLength: 1, maxLength: 4 }).map((c) => c.join("/")) },
    {
      weight: 1,
      arbitrary: fc
        .tuple(
          fc.constantFrom("", ...prefixes),
          fc.array(component, { minLength: 1, maxLength: 5 }),
          fc.constantFrom("", "/"),
        )
        .map(([p, c, s]) => `${p}${c.join("/")}${s}`),
    },
  );
const nameArb = pathArb(["./", "/", "../", "../../", `${base}/`, `${root}/`]);
const linkArb = fc.oneof(
  { weight: 2, arbitrary: pathArb(["./", "../", "../../", "../../../", "../../../../", "/", `${root}/`, `${base}/`]) },
  {
    weight: 1,
    arbitrary: fc.array(fc.constantFrom("..", "a", "b", "."), { minLength: 1, maxLength: 6 }).map((c) => c.join("/")),
  },
);
/** Mostly none, sometimes a few. */
const few = <T>(arb: fc.Arbitrary<T>, maxLength: number) =>
  fc.oneof({ weight: 3, arbitrary: fc.constant([] as T[]) }, { weight: 1, arbitrary: fc.array(arb, { maxLength }) });

const bodyArb = fc.oneof(
  { weight: 4, arbitrary: ascii(600) },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.integer({ min: 0, max: 300_000 }), fc.constantFrom("\0", "z"))
      .map(([n, ch]) => ch.repeat(n)),
  },
);

/** A header field (offset, length) to overwrite, with hostile contents. */
const fieldMutation = fc.record({
  field: fc.constantFrom(
    [100, 8],
    [108, 8],
    [116, 8],
    [124, 12],
    [136, 12],
    [156, 1],
    [157, 100],
    [257, 8],
    [345, 155],
  ),
  value: fc.oneof(
    fc.uint8Array({ maxLength: 12 }).map((b) => Buffer.from(b)),
    fc.bigInt({ min: 0n, max: (1n << 70n) - 1n }).map((n) => Buffer.from(`${n.toString(8)}\0`)),
    fc.uint8Array({ minLength: 11, maxLength: 11 }).map((b) => Buffer.concat([Buffer.from([0x80]), b])),
    fc.constantFrom(
      Buffer.from([0xff, 0xff, 0xff]),
      Buffer.from("-1000"),
      Buffer.from("   "),
      Buffer.from("7777777777"),
    ),
  ),
});

const entryArb = fc.record({
  name: nameArb,
  type: fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom("0", "5", "2") },
    { weight: 1, arbitrary: fc.constantFrom("\0", "1", "3", "4", "6", "7", "g", "K", "S", "V") },
  ),
  body: bodyArb,
  link: linkArb,
  pax: fc.oneof(
    { weight: 4, arbitrary: fc.constant("none") },
    { weight: 2, arbitrary: fc.constantFrom("pax", "gnu") },
    { weight: 1, arbitrary: fc.constant("random") },
  ),
  paxExtra: few(fc.tuple(fc.constantFrom("path", "linkpath", "size", "mtime", "x", "", "=="), ascii(40)), 3),
  skew: fc.integer({ min: -3, max: 3 }),
  mutations: few(fieldMutation, 2),
});

/** Plausible entries (names inside, links that may still climb out through each other): reach deeper states. */
const benignEntryArb: fc.Arbitrary<EntrySpec> = fc.record({
  name: fc.array(safeComponent, { minLength: 1, maxLength: 3 }).map((c) => c.join("/")),
  type: fc.constantFrom("0", "0", "5", "2", "2"),
  body: bodyArb,
  link: fc.array(fc.constantFrom("..", "a", "b", "c", "."), { minLength: 1, maxLength: 5 }).map((c) => c.join("/")),
  pax: fc.constantFrom("none", "none", "pax", "gnu"),
  paxExtra: fc.constant([]),
  skew: fc.constant(0),
  mutations: fc.constant([]),
});

/** Symlink chains among a few names (`y -> .`, `x -> y/../a`, ...): what the final resolution check must see through. */
const chainEntryArb: fc.Arbitrary<EntrySpec> = fc.record({
  name: fc.constantFrom("a", "b", "c", "sub", "sub/a", "sub/b"),
  type: fc.constantFrom("2", "2", "2", "2", "2", "5", "0"),
  body: fc.constant(""),
  link: fc.oneof(
    { weight: 2, arbitrary: fc.constantFrom(".", ".", ".", "..", "sub/..", "a/..", "a", "b", "sub") },
    {
      weight: 3,
      arbitrary: fc
        .tuple(
          fc.constantFrom("a", "b", "c", "sub"),
          fc.constantFrom("..", "..", "../..", "."),
          fc.constantFrom("a", "x"),
        )
        .map((c) => c.join("/")),
    },
    {
      weight: 1,
      arbitrary: fc
        .array(fc.constantFrom("a", "b", "c", "sub", ".", ".."), { minLength: 2, maxLength: 5 })
        .map((c) => c.join("/")),
    },
  ),
  pax: fc.constant("none"),
  paxExtra: fc.constant([]),
  skew: fc.constant(0),
  mutations: fc.constant([]),
});

const archiveArb = fc.record({
  entries: fc.oneof(
    { weight: 3, arbitrary: fc.array(entryArb, { minLength: 1, maxLength: 8 }) },
    { weight: 2, arbitrary: fc.array(benignEntryArb, { minLength: 1, maxLength: 8 }) },
    { weight: 3, arbitrary: fc.array(chainEntryArb, { minLength: 2, maxLength: 6 }) },
  ),
  end: fc.constantFrom(0, 512, 1024, 1024, 1024, 10240),
  junk: fc.oneof(
    { weight: 4, arbitrary: fc.constant(new Uint8Array()) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 2000 }) },
  ),
  flips: few(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), 4),
  fixSums: fc.boolean(),
  truncate: fc.oneof({ weight: 4, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat() }),
  cuts: fc.array(fc.integer({ min: 1, max: 5000 }), { maxLength: 30 }),
  maxBytes: fc.option(fc.integer({ min: 0, max: 400_000 }), { freq: 2 }),
});

type EntrySpec = typeof entryArb extends fc.Arbitrary<infer T> ? T : never;

function encodeEntry(e: EntrySpec): Buffer[] {
  const out: Buffer[] = [];
  const long = Buffer.byteLength(e.name) > 100 || Buffer.byteLength(e.link) > 100;
  if (e.pax === "pax" || (long && e.pax === "none")) {
    let body = paxRecord("path", e.name) + (e.type === "2" ? paxRecord("linkpath", e.link) : "");
    for (const [k, v] of e.paxExtra) body += paxRecord(k, v);
    out.push(tarEntry("PaxHeader", "x", body));
  } else if (e.pax === "gnu") {
    out.push(tarEntry("././@LongLink", "L", `${e.name}\0`));
  } else if (e.pax === "random") {
    out.push(tarEntry("PaxHeader", "x", e.paxExtra.map(([k, v]) => paxRecord(k, v, e.skew)).join("")));
  }
  const body = e.type === "0" || e.type === "\0" || e.type === "7" || e.skew === 3 ? e.body : "";
  const entry = tarEntry(e.name.slice(0, 100), e.type, body, e.link.slice(0, 100));
  for (const { field, value } of e.mutations) {
    const [off, len] = field as [number, number];
    entry.fill(0, off, off + len);
    value.copy(entry, off, 0, Math.min(len, value.length));
    fixChecksum(entry);
  }
  out.push(entry);
  return out;
}

type ArchiveSpec = typeof archiveArb extends fc.Arbitrary<infer T> ? T : never;

function encodeArchive(a: ArchiveSpec): Buffer {
  let tar = Buffer.concat([...a.entries.flatMap(encodeEntry), Buffer.alloc(a.end), Buffer.from(a.junk)]);
  if (tar.length > 0) {
    for (const [pos, v] of a.flips) tar[pos % tar.length] = v;
    if (a.flips.length && a.fixSums) {
      // make the flips reach the parser: re-sum every block that still looks like a header
      for (let o = 0; o + 512 <= tar.length; o += 512) {
        if (tar.toString("latin1", o + 257, o + 262) === "ustar") fixChecksum(tar.subarray(o, o + 512));
      }
    }
  }
  if (a.truncate !== null) tar = tar.subarray(0, a.truncate % (tar.length + 1));
  return tar;
}

describe("tar reader fuzzing", () => {
  it("hostile archives: only SmolVM errors, nothing outside dest touched, maxBytes respected", async () => {
    const seen = new Map<string, number>(); // outcome -> runs (FUZZ_VERBOSE=1 prints it, with error messages)
    const verbose = Boolean(process.env.FUZZ_VERBOSE);
    await fc.assert(
      fc.asyncProperty(archiveArb, async (a) => {
        const r = await checkExtract(split(encodeArchive(a), a.cuts), a.maxBytes ?? undefined);
        for (const k of r instanceof Error
          ? [r.name, verbose ? r.message.replace(/^.*": /, "").slice(0, 50) : ""]
          : ["ok"]) {
          if (k) seen.set(k, (seen.get(k) ?? 0) + 1);
        }
      }),
      RUNS,
    );
    if (verbose) console.log(seen);
    // the generator must reach both outcomes, or the property proves little
    assert.ok((seen.get("ok") ?? 0) > 0 && (seen.get("UnsafeArchiveError") ?? 0) > 0, JSON.stringify([...seen]));
  });

  it("bare random bytes, and header-shaped blocks of random bytes", async () => {
    const blockArb = fc.uint8Array({ minLength: 512, maxLength: 512 }).map((b) => {
      const h = Buffer.from(b);
      if (h[0] === 0) h[0] = 0x61;
      fixChecksum(h);
      return h;
    });
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 4096 }).map((b) => Buffer.from(b)),
          fc.array(blockArb, { minLength: 1, maxLength: 6 }).map((bs) => Buffer.concat([...bs, Buffer.alloc(1024)])),
        ),
        fc.array(fc.integer({ min: 1, max: 700 }), { maxLength: 10 }),
        async (data, cuts) => {
          await checkExtract(split(data, cuts), 10_000);
        },
      ),
      RUNS,
    );
  });

  it("valid trees round-trip through packDir under any chunking, and stop at maxBytes", async () => {
    const fileArb = fc.record({
      dir: fc.constantFrom("", "d1/", "d1/d2/", "d3/", `${"long".repeat(30)}/`),
      name: fc.constantFrom("f1", "f2", "f3", "z".repeat(150)),
      regions: fc.array(
        fc.record({ len: fc.integer({ min: 0, max: 20_000 }), byte: fc.constantFrom(0, 0, 1, 0x5a, 0xff) }),
        { maxLength: 5 },
      ),
      link: fc.boolean(),
    });
    const src = join(root, "src");
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fileArb, { minLength: 1, maxLength: 6, selector: (f) => f.dir + f.name }),
        fc.array(fc.integer({ min: 1, max: 9000 }), { maxLength: 20 }),
        fc.integer({ min: 0, max: 200_000 }),
        async (files, cuts, limit) => {
          rmSync(src, { recursive: true, force: true });
          const want = new Map<string, Buffer>();
          for (const f of files) {
            mkdirSync(join(src, f.dir), { recursive: true });
            const data = Buffer.concat(f.regions.map((r) => Buffer.alloc(r.len, r.byte)));
            writeFileSync(join(src, f.dir + f.name), data);
            want.set(f.dir + f.name, data);
            if (f.link) symlinkSync(f.name, join(src, `${f.dir + f.name}.lnk`));
          }
          const chunks: Buffer[] = [];
          for await (const c of packDir(src)) chunks.push(c);
          const tar = split(Buffer.concat(chunks), cuts);
          const total = [...want.values()].reduce((s, b) => s + b.length, 0);
          const dest = join(base, `dest-${runId++}`);
          mkdirSync(dest);
          try {
            const stats = await extractTar(tar, dest, { maxBytes: total });
            assert.equal(stats.bytes, total);
            assert.equal(stats.files, files.length);
            for (const [p, data] of want) assert.ok(readFileSync(join(dest, p)).equals(data), p);
            for (const f of files.filter((x) => x.link))
              assert.equal(readlinkSync(join(dest, `${f.dir + f.name}.lnk`)), f.name);
          } finally {
            rmSync(dest, { recursive: true, force: true });
          }
          if (limit < total) {
            const r = await checkExtract(tar, limit);
            assert.ok(r instanceof TransferLimitError, String(r));
            assert.equal(r.limit, limit);
          }
        },
      ),
      runs(100),
    );
  });
});
