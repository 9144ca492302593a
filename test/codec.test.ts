import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  decodeFields,
  encodeFields,
  encodeFrame,
  F,
  FrameDecoder,
  HEADER_BYTES,
  MAX_PAYLOAD,
  T,
} from "../src/agent/codec.js";
import { AgentError } from "../src/errors.js";

describe("frame codec", () => {
  it("round-trips frames split at every byte boundary", () => {
    const frames = [
      encodeFrame(T.EXEC, 0x01000001, encodeFields([[F.SHELL, "echo hi"]])),
      encodeFrame(T.STDOUT, 0x01000001, Buffer.from("hello\n")),
      encodeFrame(T.EXIT, 0x01000001, Buffer.alloc(8)),
    ];
    const wire = Buffer.concat(frames);
    for (let cut = 0; cut <= wire.length; cut++) {
      const d = new FrameDecoder();
      const got = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))];
      assert.equal(got.length, 3);
      assert.equal(got[1]?.payload.toString(), "hello\n");
      assert.equal(got[2]?.type, T.EXIT);
      assert.equal(d.pendingBytes, 0);
    }
  });

  it("rejects a length beyond the protocol maximum before buffering it", () => {
    const d = new FrameDecoder();
    const h = Buffer.alloc(HEADER_BYTES);
    h.writeUInt32BE(MAX_PAYLOAD + 6, 0);
    assert.throws(() => d.push(h), AgentError);
    assert.equal(d.pendingBytes, 0);
  });

  it("rejects a length too small to hold type and stream", () => {
    const d = new FrameDecoder();
    assert.throws(() => d.push(Buffer.from([0, 0, 0, 4, 1, 0, 0, 0])), AgentError);
  });

  it("refuses to encode an oversized payload", () => {
    assert.throws(() => encodeFrame(T.STDIN, 1, Buffer.alloc(MAX_PAYLOAD + 1)), RangeError);
  });

  it("decodes fields and rejects a field running past the payload", () => {
    const p = encodeFields([
      [F.ARG, "ls"],
      [F.ARG, "-l"],
      [F.ENV, "A=1"],
    ]);
    assert.deepEqual(
      decodeFields(p).map(([t, v]) => [t, v.toString()]),
      [
        [F.ARG, "ls"],
        [F.ARG, "-l"],
        [F.ENV, "A=1"],
      ],
    );
    const bad = Buffer.from(p);
    bad.writeUInt32BE(1000, 1);
    assert.throws(() => decodeFields(bad), AgentError);
  });
});
