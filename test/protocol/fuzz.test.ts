// Mutated streams must never crash, hang or allocate without bound: the decoder either
// returns records that are themselves valid, or throws a CodecError. Every failure prints
// its seed; rerun one with LOCKSTEP_SEED=<seed>.

import { describe, expect, it } from "vitest";
import {
  DATA_BYTES_MAX,
  decodeHeader,
  encodeHeader,
  encodeRecord,
  encodeRecords,
  RecordDecoder,
} from "../../protocol/codec.js";
import { CodecError } from "../../protocol/errors.js";
import { type LogRecord, RecordKind } from "../../protocol/records.js";
import { codecErrorOf, concat, fuzzSeed, header, I64_MAX, I64_MIN, Prng, record, renumber, sampleRecords, U32_MAX, U64_MAX } from "./helpers.js";

const ITERATIONS = 3000;

function randomRecord(prng: Prng): LogRecord {
  const u64 = () => prng.pick([0n, 1n, BigInt(prng.u32()), prng.u64(), U64_MAX]);
  return record({
    kind: prng.pick([RecordKind.Event, RecordKind.Input, RecordKind.Digest, RecordKind.End, RecordKind.Control]),
    icount: u64(),
    a: prng.pick([0, 1, 6, prng.u32(), U32_MAX]),
    b: prng.pick([0, prng.below(300), prng.u32()]),
    value: prng.pick([0n, -1n, BigInt(prng.u32()) - 2n ** 31n, prng.u64() - 2n ** 63n, I64_MIN, I64_MAX]),
    data: prng.bytes(prng.pick([0, 0, 1, 16, 32, prng.below(400)])),
  });
}

/** One random mutation; the kinds of damage a disk, a network or a bug does. */
function mutate(prng: Prng, input: Uint8Array): { bytes: Uint8Array; what: string } {
  const at = prng.below(input.length + 1);
  switch (prng.below(7)) {
    case 0: {
      const bytes = input.slice();
      const bit = prng.below(input.length * 8);
      bytes[bit >> 3]! ^= 1 << (bit & 7);
      return { bytes, what: `flip bit ${bit}` };
    }
    case 1:
      return { bytes: input.slice(0, at), what: `truncate to ${at}` };
    case 2: {
      const inserted = prng.bytes(1 + prng.below(8));
      return { bytes: concat(input.subarray(0, at), inserted, input.subarray(at)), what: `insert ${inserted.length} at ${at}` };
    }
    case 3: {
      const length = 1 + prng.below(16);
      return { bytes: concat(input.subarray(0, at), input.subarray(at + length)), what: `delete ${length} at ${at}` };
    }
    case 4: {
      // Bytes that make long or huge varints where a length may be.
      const bytes = input.slice();
      const fill = prng.pick([0x00, 0x80, 0xff, 0x7f]);
      for (let index = at; index < Math.min(bytes.length, at + 1 + prng.below(6)); index++) bytes[index] = fill;
      return { bytes, what: `fill 0x${fill.toString(16)} at ${at}` };
    }
    case 5: {
      const length = 1 + prng.below(40);
      const slice = input.subarray(at, at + length);
      return { bytes: concat(input.subarray(0, at), slice, input.subarray(at)), what: `duplicate ${slice.length} at ${at}` };
    }
    default: {
      const bytes = input.slice();
      const index = prng.below(Math.max(1, input.length));
      if (index < bytes.length) bytes[index] = prng.u32() & 0xff;
      return { bytes, what: `set byte ${index}` };
    }
  }
}

function check(condition: boolean, message: string): void {
  if (!condition) throw new Error(message);
}

/** Runs `body` per iteration, with the seed and iteration in any failure's message. */
function fuzz(name: string, fallbackSeed: number, body: (prng: Prng, iteration: number, trail: string[]) => void): void {
  const seed = fuzzSeed(fallbackSeed);
  const prng = new Prng(seed);
  for (let iteration = 0; iteration < ITERATIONS; iteration++) {
    const trail: string[] = [];
    try {
      body(prng, iteration, trail);
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(`${name} failed: seed=${seed} iteration=${iteration} mutations=[${trail.join("; ")}]: ${message}`, {
        cause: error,
      });
    }
  }
}

describe("fuzz: mutated record streams", () => {
  it("only ever throw CodecError, and whatever decodes is a valid record", () => {
    const outcomes = { decoded: 0, errors: new Map<string, number>() };
    fuzz("record stream fuzz", 0x5eed_0001, (prng, _iteration, trail) => {
      const records = renumber(Array.from({ length: 1 + prng.below(6) }, () => randomRecord(prng)));
      let bytes = encodeRecords(records);
      for (let count = 1 + prng.below(3); count > 0; count--) {
        const mutation = mutate(prng, bytes);
        bytes = mutation.bytes;
        trail.push(mutation.what);
      }
      const decoder = new RecordDecoder({
        ...(prng.chance(0.5) ? { expectSeq: 0n } : {}),
        ...(prng.chance(0.3) ? { dataBytesMax: prng.below(64) } : {}),
      });
      const decoded: LogRecord[] = [];
      try {
        for (let pos = 0; pos < bytes.length; ) {
          const length = 1 + prng.below(48);
          decoder.push(bytes.subarray(pos, pos + length), decoded);
          pos += length;
        }
        decoder.finish();
        outcomes.decoded += 1;
      } catch (error) {
        if (!(error instanceof CodecError)) throw error;
        outcomes.errors.set(error.code, (outcomes.errors.get(error.code) ?? 0) + 1);
        // Plain checks, not expect(): this runs thousands of times.
        check(!error.message.includes("\n") && error.message.endsWith(`(${error.code})`), `bad message: ${error.message}`);
        check(error.offset >= 0 && error.offset <= bytes.length, `offset ${error.offset} outside the stream`);
        check(error.recordCount === decoded.length, `recordCount ${error.recordCount}, decoded ${decoded.length}`);
      }
      // Anything the decoder hands out must be a record the encoder accepts (every field in
      // range, data within its limit), so that no consumer sees an impossible record.
      for (const r of decoded) {
        check(r.data.length <= DATA_BYTES_MAX, "data over the limit");
        encodeRecord(r);
      }
    });
    // The mutations must actually exercise the error paths, or this test proves nothing.
    expect(outcomes.errors.get("LOG_CHECKSUM")).toBeGreaterThan(100);
    expect(outcomes.errors.get("LOG_TRUNCATED")).toBeGreaterThan(100);
    expect(outcomes.errors.get("LOG_TOO_LARGE")).toBeGreaterThan(0);
    expect(outcomes.decoded).toBeGreaterThan(0);
  });

  it("random bytes are rejected or decode to valid records, never anything else", () => {
    fuzz("random bytes fuzz", 0x5eed_0002, (prng) => {
      const bytes = prng.bytes(prng.below(200));
      try {
        const decoder = new RecordDecoder();
        for (const r of decoder.push(bytes)) encodeRecord(r);
        decoder.finish();
      } catch (error) {
        if (!(error instanceof CodecError)) throw error;
      }
    });
  });
});

describe("fuzz: mutated headers", () => {
  it("only ever throw CodecError", () => {
    fuzz("header fuzz", 0x5eed_0003, (prng, _iteration, trail) => {
      let bytes = concat(encodeHeader(header({ config: "x".repeat(prng.below(100)) })), encodeRecord(sampleRecords()[0]!));
      const mutation = mutate(prng, bytes);
      bytes = mutation.bytes;
      trail.push(mutation.what);
      try {
        const { header: h } = decodeHeader(bytes);
        encodeHeader(h); // valid if accepted
      } catch (error) {
        if (!(error instanceof CodecError)) throw error;
      }
    });
  });
});

describe("exhaustive damage to a short stream", () => {
  const records = renumber(sampleRecords().filter((r) => r.data.length <= 32).slice(0, 5));
  const stream = encodeRecords(records);

  it("detects every single-bit flip", () => {
    // CRC32 catches every single-bit error inside a frame; a flip in a length prefix moves the
    // frame's end, which the checksum or the end of the stream then catches.
    for (let bit = 0; bit < stream.length * 8; bit++) {
      const damaged = stream.slice();
      damaged[bit >> 3]! ^= 1 << (bit & 7);
      const decoder = new RecordDecoder();
      codecErrorOf(() => {
        decoder.push(damaged);
        decoder.finish();
      });
    }
  });

  it("detects every dropped byte", () => {
    for (let index = 0; index < stream.length; index++) {
      const damaged = concat(stream.subarray(0, index), stream.subarray(index + 1));
      codecErrorOf(() => {
        const decoder = new RecordDecoder();
        decoder.push(damaged);
        decoder.finish();
      });
    }
  });
});
