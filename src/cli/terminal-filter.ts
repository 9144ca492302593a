/**
 * Filters for text that comes from a guest VM and is about to be printed to the user's terminal.
 *
 * Guest output is hostile: an OSC 52 sequence writes the user's clipboard, OSC 0/2 set the window title,
 * DCS/APC/PM/SOS strings reach the terminal's other parsers, and some sequences make the terminal type a reply
 * into its own input. Both filters are streaming state machines: state is kept across `push` calls, so a sequence
 * split over two chunks is handled, and the state is bounded (at most 3 bytes of an unfinished UTF-8 character and
 * 64 bytes of an unfinished escape or CSI sequence). String sequences (OSC, DCS, ...) are dropped as they stream,
 * never collected, so an unterminated one costs no memory.
 *
 * Input is decoded as UTF-8 (WHATWG rules: no overlongs, no surrogates, nothing above U+10FFFF). Code points
 * U+0080-U+009F are C1 controls, and so is a lone byte 0x80-0x9F that is not part of a valid UTF-8 character
 * (terminals in 8-bit mode read it that way). Any other invalid byte sequence becomes U+FFFD, so no invalid
 * UTF-8 ever reaches the terminal.
 */

const BEL = 0x07;
const ENQ = 0x05;
const CAN = 0x18;
const SUB = 0x1a;
const ESC = 0x1b;
const DEL = 0x7f;
const REPLACEMENT = 0xfffd;
const EMPTY = Buffer.alloc(0);

/** The longest escape or CSI sequence kept; a longer one is dropped whole (it is malformed or hostile). */
const MAX_SEQ = 64;

/** Output of one `push`: a buffer that grows as needed. */
class Out {
  private buf: Buffer;
  private len = 0;

  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(Math.max(capacity, 64));
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  byte(b: number): void {
    this.room(1);
    this.buf[this.len++] = b;
  }

  span(src: Buffer, start: number, end: number): void {
    this.room(end - start);
    this.len += src.copy(this.buf, this.len, start, end);
  }

  /** A code point, encoded as UTF-8. */
  cp(c: number): void {
    this.room(4);
    const b = this.buf;
    if (c < 0x80) b[this.len++] = c;
    else if (c < 0x800) {
      b[this.len++] = 0xc0 | (c >> 6);
      b[this.len++] = 0x80 | (c & 0x3f);
    } else if (c < 0x10000) {
      b[this.len++] = 0xe0 | (c >> 12);
      b[this.len++] = 0x80 | ((c >> 6) & 0x3f);
      b[this.len++] = 0x80 | (c & 0x3f);
    } else {
      b[this.len++] = 0xf0 | (c >> 18);
      b[this.len++] = 0x80 | ((c >> 12) & 0x3f);
      b[this.len++] = 0x80 | ((c >> 6) & 0x3f);
      b[this.len++] = 0x80 | (c & 0x3f);
    }
  }

  take(): Buffer {
    return this.len === 0 ? EMPTY : this.buf.subarray(0, this.len);
  }
}

/** A streaming UTF-8 decoder that hands code points (and invalid bytes) to a subclass. */
abstract class Utf8Filter {
  private need = 0;
  private seen = 0;
  private acc = 0;
  private lower = 0x80;
  private upper = 0xbf;
  protected out = new Out(0);

  /** Filter the next chunk; the result may be printed. */
  push(chunk: Buffer): Buffer {
    const out = new Out(chunk.length + 16);
    this.out = out;
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      const b = chunk[i] as number;
      if (this.need === 0) {
        if (b < 0x80) {
          const j = this.run(chunk, i);
          if (j > i) i = j;
          else {
            this.cp(b);
            i++;
          }
          continue;
        }
        if (b >= 0xc2 && b <= 0xdf) {
          this.need = 1;
          this.acc = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
          if (b === 0xe0) this.lower = 0xa0;
          else if (b === 0xed) this.upper = 0x9f;
          this.need = 2;
          this.acc = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
          if (b === 0xf0) this.lower = 0x90;
          else if (b === 0xf4) this.upper = 0x8f;
          this.need = 3;
          this.acc = b & 0x07;
        } else this.invalid(b);
        i++;
      } else if (b >= this.lower && b <= this.upper) {
        this.lower = 0x80;
        this.upper = 0xbf;
        this.acc = (this.acc << 6) | (b & 0x3f);
        i++;
        if (++this.seen === this.need) {
          const c = this.acc;
          this.need = this.seen = this.acc = 0;
          this.cp(c);
        }
      } else {
        // A truncated character: one U+FFFD for it, then this byte starts afresh (not consumed).
        this.resetUtf8();
        this.invalid(-1);
      }
    }
    this.out = new Out(0);
    return out.take();
  }

  /** The stream has ended: flush an unfinished character as U+FFFD and drop an unfinished sequence. */
  end(): Buffer {
    const out = new Out(16);
    this.out = out;
    if (this.need !== 0) {
      this.resetUtf8();
      this.invalid(-1);
    }
    this.finish();
    this.out = new Out(0);
    return out.take();
  }

  private resetUtf8(): void {
    this.need = this.seen = this.acc = 0;
    this.lower = 0x80;
    this.upper = 0xbf;
  }

  /** Consume a run of ASCII bytes from `i` that need no per-character work; return where the run ends. */
  protected abstract run(src: Buffer, i: number): number;
  /** One decoded code point. */
  protected abstract cp(c: number): void;
  /** An invalid byte sequence: `byte` is the lone byte, or -1 for a truncated multi-byte character. */
  protected abstract invalid(byte: number): void;
  protected abstract finish(): void;
}

/** A table of the ASCII bytes for which `pred` holds (bytes 0x80-0xFF are never in it). */
function asciiTable(pred: (b: number) => boolean): Uint8Array {
  const t = new Uint8Array(256);
  for (let b = 0; b < 0x80; b++) t[b] = pred(b) ? 1 : 0;
  return t;
}

/** Printed as is in the ground state: printable ASCII and the harmless controls. */
const GROUND_PLAIN = asciiTable((b) => (b >= 0x20 && b < 0x7f) || (b >= BEL && b <= 0x0a) || b === 0x0d);
/** Dropped without a look inside a string sequence: everything but its terminators and aborts. */
const STRING_PLAIN = asciiTable((b) => b !== ESC && b !== BEL && b !== CAN && b !== SUB);

/** TerminalFilter states. */
const S = { Ground: 0, Escape: 1, EscInter: 2, Csi: 3, Str: 4, StrEsc: 5 } as const;
type State = (typeof S)[keyof typeof S];

const ch = (s: string) => s.charCodeAt(0);

/**
 * Whether a complete CSI sequence is dropped. `marker` is its private marker (`<`, `=`, `>`, `?` as the first
 * parameter byte, or 0), `inters` a bit set of its intermediate bytes (bit n is byte 0x20 + n).
 *
 * Dropped, because the terminal answers into its input, or reconfigures itself in ways a program should not:
 * - final `c` (device attributes DA1/DA2/DA3), `n` (device status and cursor position reports), `t` (window
 *   manipulation and reports: resize, iconify, report title), `x` (DECREQTPARM), `y` (DECRQCRA reads screen
 *   contents back as a checksum; DECTST), `i` (media copy: printer passthrough);
 * - `$ p` (DECRQM mode report), `> q` (XTVERSION), `? u` and `u` with intermediates (kitty keyboard query,
 *   DECRQTSR, DECRQUPSS), `? m` (XTQMODKEYS), `? S` (XTSMGRAPHICS), `w`, `v` and `|` with intermediates
 *   (DECRQPSR, DECEFR, DECRQDE, XTREPORTSGR, DECRQLP, DECSCPP and DECSNLS resize the screen).
 * Everything else is kept: SGR colours, cursor movement, erase, scroll regions, modes (`? 25 h`, `? 1049 h`,
 * bracketed paste, mouse reporting), cursor style `SP q`, `> 4;1 m` (modifyOtherKeys), kitty keyboard push/pop.
 */
function dropsCsi(marker: number, inters: number, final: number): boolean {
  switch (final) {
    case ch("c"):
    case ch("n"):
    case ch("t"):
    case ch("x"):
    case ch("y"):
    case ch("i"):
      return true;
    case ch("p"):
      return (inters & (1 << (ch("$") - 0x20))) !== 0;
    case ch("q"):
      return marker === ch(">");
    case ch("u"):
      return marker === ch("?") || inters !== 0;
    case ch("m"):
    case ch("S"):
      return marker === ch("?");
    case ch("w"):
    case ch("v"):
    case ch("|"):
      return inters !== 0;
    default:
      return false;
  }
}

/**
 * The "interactive" filter, for `exec`/`run` output and the interactive shell on a terminal. Removes whole:
 * - OSC (`ESC ]`, ended by BEL, ST = `ESC \` or C1 ST) and screen/tmux titles (`ESC k`, same terminators);
 * - DCS (`ESC P`), SOS (`ESC X`), PM (`ESC ^`), APC (`ESC _`), ended by ST only (a BEL inside is dropped with
 *   the string). In any string, CAN or SUB aborts it, and ESC followed by anything but `\` aborts it and starts
 *   a new sequence, as terminals do;
 * - the CSI sequences listed at `dropsCsi`, malformed CSI sequences and ones longer than 64 bytes;
 * - `ESC Z` (DECID: the terminal answers), a stray ST, and ENQ (the terminal sends its answerback message).
 * C1 controls (U+0080-U+009F, or a lone byte 0x80-0x9F) are handled as their 7-bit forms `ESC @`..`ESC _` and,
 * when kept, printed in that 7-bit form. Everything else passes: text, ordinary escape and CSI sequences, and
 * C0 controls (\n, \r, \t, \b, BEL, SO/SI...). A C0 control inside a sequence is printed in place, as terminals
 * execute it there.
 */
export class TerminalFilter extends Utf8Filter {
  private state: State = S.Ground;
  /** BEL ends the current string (OSC and `ESC k` only). */
  private belEnds = false;
  /** The escape or CSI sequence being read, kept until its final byte decides. */
  private readonly seq = Buffer.alloc(MAX_SEQ);
  private seqLen = 0;
  /** The sequence will be dropped (too long, malformed or on the list). */
  private bad = false;
  private marker = 0;
  private inters = 0;

  protected run(src: Buffer, i: number): number {
    const table = this.state === S.Ground ? GROUND_PLAIN : this.state === S.Str ? STRING_PLAIN : undefined;
    if (!table) return i;
    let j = i;
    while (j < src.length && table[src[j] as number] === 1) j++;
    if (j > i && this.state === S.Ground) this.out.span(src, i, j);
    return j;
  }

  protected invalid(byte: number): void {
    this.cp(byte >= 0x80 && byte <= 0x9f ? byte : REPLACEMENT);
  }

  protected finish(): void {
    this.state = S.Ground;
  }

  protected cp(c: number): void {
    if (c >= 0x80 && c <= 0x9f) {
      this.cp(ESC);
      this.cp(c - 0x40);
      return;
    }
    switch (this.state) {
      case S.Ground:
        this.ground(c);
        break;
      case S.Escape:
        this.escape(c);
        break;
      case S.EscInter:
        this.escInter(c);
        break;
      case S.Csi:
        this.csi(c);
        break;
      case S.Str:
        this.str(c);
        break;
      case S.StrEsc:
        if (c === ch("\\")) this.state = S.Ground;
        else {
          this.begin();
          this.escape(c);
        }
        break;
    }
  }

  private ground(c: number): void {
    if (c === ESC) this.begin();
    else if (c !== ENQ) this.out.cp(c);
  }

  /** An ESC: start a new sequence (an unfinished one is dropped). */
  private begin(): void {
    this.state = S.Escape;
    this.seq[0] = ESC;
    this.seqLen = 1;
    this.bad = false;
    this.marker = 0;
    this.inters = 0;
  }

  private add(c: number): void {
    if (this.seqLen < MAX_SEQ) this.seq[this.seqLen++] = c;
    else this.bad = true;
  }

  /** The sequence is complete: print it unless it is dropped. */
  private done(): void {
    if (!this.bad) this.out.span(this.seq, 0, this.seqLen);
    this.state = S.Ground;
  }

  /** What every state inside an escape or CSI sequence does with controls and non-ASCII; true if handled. */
  private control(c: number): boolean {
    if (c === ESC) this.begin();
    else if (c === CAN || c === SUB) {
      this.state = S.Ground;
      this.out.byte(c);
    } else if (c < 0x20) {
      if (c !== ENQ) this.out.byte(c);
    } else if (c === DEL) {
      // ignored inside a sequence
    } else if (c >= 0xa0) {
      this.state = S.Ground;
      this.ground(c);
    } else return false;
    return true;
  }

  private escape(c: number): void {
    if (this.control(c)) return;
    if (c <= 0x2f) {
      this.add(c);
      this.state = S.EscInter;
      return;
    }
    switch (c) {
      case ch("["):
        this.add(c);
        this.state = S.Csi;
        return;
      case ch("]"):
      case ch("k"):
        this.state = S.Str;
        this.belEnds = true;
        return;
      case ch("P"):
      case ch("X"):
      case ch("^"):
      case ch("_"):
        this.state = S.Str;
        this.belEnds = false;
        return;
      case ch("Z"):
      case ch("\\"):
        this.state = S.Ground;
        return;
      default:
        this.add(c);
        this.done();
    }
  }

  private escInter(c: number): void {
    if (this.control(c)) return;
    this.add(c);
    if (c > 0x2f) this.done();
  }

  private csi(c: number): void {
    if (this.control(c)) return;
    if (c >= 0x30 && c <= 0x3f) {
      if (this.inters !== 0)
        this.bad = true; // a parameter after an intermediate: malformed
      else if (c >= 0x3c) {
        if (this.seqLen === 2) this.marker = c;
        else this.bad = true; // a private marker not in first place: terminals ignore the sequence
      }
      this.add(c);
    } else if (c <= 0x2f) {
      this.inters |= 1 << (c - 0x20);
      this.add(c);
    } else {
      this.add(c);
      if (dropsCsi(this.marker, this.inters, c)) this.bad = true;
      this.done();
    }
  }

  private str(c: number): void {
    if (c === ESC) this.state = S.StrEsc;
    else if ((c === BEL && this.belEnds) || c === CAN || c === SUB) this.state = S.Ground;
  }
}

/** Printed as is by the strict filter. */
const STRICT_PLAIN = asciiTable((b) => (b >= 0x20 && b < 0x7f) || b === 0x09 || b === 0x0a);

/**
 * The "log" filter, for `smolvm logs` on a terminal: keeps printable text, \n and \t, and shows every other
 * control visibly, the way `cat -v` does: C0 controls as `^@`..`^_` (ESC is `^[`, CR is `^M`), DEL as `^?`,
 * C1 controls (code points U+0080-U+009F) as `M-^@`..`M-^_` (CSI U+009B is `M-^[`). Invalid UTF-8 (a lone
 * 0x80-0x9F byte included) becomes U+FFFD. Nothing the guest wrote can reach the terminal's parser.
 */
export class StrictTextFilter extends Utf8Filter {
  protected run(src: Buffer, i: number): number {
    let j = i;
    while (j < src.length && STRICT_PLAIN[src[j] as number] === 1) j++;
    if (j > i) this.out.span(src, i, j);
    return j;
  }

  protected cp(c: number): void {
    const out = this.out;
    if (c === 0x09 || c === 0x0a || (c >= 0x20 && c < 0x7f) || c >= 0xa0) out.cp(c);
    else if (c < 0x20) {
      out.byte(ch("^"));
      out.byte(c + 0x40);
    } else if (c === DEL) {
      out.byte(ch("^"));
      out.byte(ch("?"));
    } else {
      out.byte(ch("M"));
      out.byte(ch("-"));
      out.byte(ch("^"));
      out.byte(c - 0x80 + 0x40);
    }
  }

  protected invalid(): void {
    this.out.cp(REPLACEMENT);
  }

  protected finish(): void {}
}

/**
 * Where guest text goes on its way to `stream`: through the filter for `mode` when the stream is a terminal,
 * unchanged otherwise (pipes and files get the exact bytes). The returned function returns what `stream.write`
 * returned, for backpressure (a chunk filtered away entirely returns whether the stream still has room).
 */
export function guestTextSink(stream: NodeJS.WriteStream, mode: "interactive" | "log"): (chunk: Buffer) => boolean {
  if (!stream.isTTY) return (chunk) => stream.write(chunk);
  const filter = mode === "interactive" ? new TerminalFilter() : new StrictTextFilter();
  return (chunk) => {
    const out = filter.push(chunk);
    return out.length > 0 ? stream.write(out) : !stream.writableNeedDrain;
  };
}
