/**
 * Property-based fuzzing of the agent frame codec: whatever bytes a hostile guest sends, in whatever pieces, the
 * decoder returns frames or throws AgentError, and never holds more than one partial frame.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  decodeFields,
  encodeFields,
  encodeFrame,
  type Field,
  type Frame,
  FrameDecoder,
  fieldString,
  fieldU32,
  fieldU64,
  HEADER_BYTES,
  MAX_PAYLOAD,
} from "../src/agent/codec.js";
import { AgentError } from "../src/errors.js";

// bounded for CI; FUZZ_RUNS / FUZZ_TIME_MS raise the budget for a longer local hunt
const RUNS = {
  numRuns: Number(process.env.FUZZ_RUNS ?? 300),
  plugins: [fc.interruptAfterTimeLimit(Number(process.env.FUZZ_TIME_MS ?? 20_000))],
};
const MAX_PENDING = MAX_PAYLOAD + HEADER_BYTES;

/** Cut `data` into pieces of the given sizes (0 = an empty push), the rest in one piece. */
function split(data: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let o = 0;
  for (const c of cuts) {
    if (o > data.length) break;
    out.push(data.subarray(o, o + c));
    o += c;
  }
  if (o < data.length) out.push(data.subarray(o));
  return out;
}

/** A payload of `len` bytes without generating each byte: a seeded pattern (fast even at 64 KiB). */
const payloadArb = fc
  .tuple(
    fc.oneof(
      { weight: 6, arbitrary: fc.integer({ min: 0, max: 300 }) },
      { weight: 2, arbitrary: fc.integer({ min: 0, max: MAX_PAYLOAD }) },
      { weight: 1, arbitrary: fc.constantFrom(MAX_PAYLOAD, MAX_PAYLOAD - 1, 0, 1) },
    ),
    fc.integer({ min: 0, max: 255 }),
  )
  .map(([len, seed]) => {
    const b = Buffer.allocUnsafe(len);
    for (let i = 0; i < len; i++) b[i] = (seed + i * 131 + (i >> 8)) & 0xff;
    return b;
  });

const frameArb = fc.record({
  type: fc.integer({ min: 0, max: 255 }),
  stream: fc.nat({ max: 0xffffffff }),
  payload: payloadArb,
});

const cutsArb = fc.array(fc.oneof(fc.integer({ min: 0, max: 16 }), fc.integer({ min: 1, max: 70_000 })), {
  maxLength: 40,
});

/** Byte streams a broken or hostile agent might send: noise, or frame headers with any length, then noise. */
const hostileStreamArb = fc.oneof(
  fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
  fc
    .array(
      fc.tuple(
        fc.oneof(
          fc.integer({ min: 0, max: 16 }),
          fc.integer({ min: MAX_PAYLOAD - 4, max: MAX_PAYLOAD + 16 }),
          fc.nat({ max: 0xffffffff }),
          fc.integer({ min: 5, max: 2000 }),
        ),
        fc.uint8Array({ maxLength: 2100 }),
      ),
      { maxLength: 8 },
    )
    .map((parts) =>
      Buffer.concat(
        parts.flatMap(([len, rest]) => {
          const h = Buffer.alloc(4);
          h.writeUInt32BE(len);
          return [h, Buffer.from(rest)];
        }),
      ),
    ),
);

describe("frame codec fuzzing", () => {
  it("random byte streams in random pieces: frames or AgentError, bounded buffering", () => {
    fc.assert(
      fc.property(hostileStreamArb, cutsArb, (data, cuts) => {
        const d = new FrameDecoder();
        let consumed = 0;
        for (const piece of split(data, cuts)) {
          try {
            for (const f of d.push(piece)) {
              assert.ok(f.payload.length <= MAX_PAYLOAD);
              assert.ok(f.type >= 0 && f.type <= 255 && f.stream >= 0 && f.stream <= 0xffffffff);
              consumed += HEADER_BYTES + f.payload.length;
            }
          } catch (e) {
            assert.ok(e instanceof AgentError, `unexpected ${(e as Error)?.stack}`);
            assert.equal(d.pendingBytes, 0);
            return; // the connection is dropped after a protocol error
          }
          assert.ok(d.pendingBytes < MAX_PENDING, `${d.pendingBytes} bytes pending`);
        }
        assert.equal(consumed + d.pendingBytes, data.length); // nothing lost, nothing invented
      }),
      RUNS,
    );
  });

  it("any sequence of valid frames round-trips under any chunking", () => {
    fc.assert(
      fc.property(fc.array(frameArb, { maxLength: 12 }), cutsArb, (frames, cuts) => {
        const wire = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.stream, f.payload)));
        const d = new FrameDecoder();
        const got: Frame[] = [];
        for (const piece of split(wire, cuts)) {
          got.push(...d.push(piece));
          assert.ok(d.pendingBytes < MAX_PENDING, `${d.pendingBytes} bytes pending`);
        }
        assert.equal(d.pendingBytes, 0);
        assert.equal(got.length, frames.length);
        frames.forEach((f, i) => {
          const g = got[i];
          assert.ok(g);
          assert.equal(g.type, f.type);
          assert.equal(g.stream, f.stream);
          assert.ok(g.payload.equals(f.payload), `payload ${i} differs`);
        });
      }),
      RUNS,
    );
  });

  it("decodeFields on random bytes: fields that re-encode to the same bytes, or AgentError", () => {
    const fieldBytes = fc.oneof(
      fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)),
      // well-formed fields with one length possibly corrupted
      fc
        .tuple(
          fc.array(fc.tuple(fc.integer({ min: 0, max: 255 }), fc.uint8Array({ maxLength: 40 })), { maxLength: 6 }),
          fc.option(fc.tuple(fc.nat(), fc.nat({ max: 0xffffffff }))),
        )
        .map(([fields, corrupt]) => {
          const b = encodeFields(fields.map(([t, v]) => [t, Buffer.from(v)]));
          if (corrupt && b.length >= 5) b.writeUInt32BE(corrupt[1], corrupt[0] % (b.length - 4));
          return b;
        }),
    );
    fc.assert(
      fc.property(fieldBytes, (b) => {
        let fields: Field[];
        try {
          fields = decodeFields(b);
        } catch (e) {
          assert.ok(e instanceof AgentError, `unexpected ${(e as Error)?.stack}`);
          return;
        }
        assert.ok(encodeFields(fields).equals(b));
        for (const tag of [0, 1, 2, 255]) {
          fieldU32(fields, tag);
          fieldU64(fields, tag);
          fieldString(fields, tag);
        }
      }),
      RUNS,
    );
  });

  it("encodeFields / decodeFields round-trip any field list", () => {
    const value = fc.oneof(
      fc.string({ unit: "binary", maxLength: 50 }),
      fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
    );
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 255 }), value), { maxLength: 20 }), (fields) => {
        const back = decodeFields(encodeFields(fields));
        assert.equal(back.length, fields.length);
        fields.forEach(([tag, v], i) => {
          const [t, w] = back[i] as Field;
          assert.equal(t, tag);
          assert.ok(Buffer.from(w).equals(typeof v === "string" ? Buffer.from(v, "utf8") : v));
          if (typeof v === "string") assert.equal(fieldString([[t, w]], t), v);
        });
      }),
      RUNS,
    );
  });
});
