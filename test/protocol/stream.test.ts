// The decoder must give the same records however the byte stream is cut into chunks: a
// WebSocket message, a file read or a TCP segment can end anywhere in a frame.

import { describe, expect, it } from "vitest";
import { encodeRecord, encodeRecords, RecordDecoder } from "../../protocol/codec.js";
import type { LogRecord } from "../../protocol/records.js";
import { RecordKind } from "../../protocol/records.js";
import { bytes, codecErrorOf, I64_MIN, record, renumber, sampleRecords, U32_MAX, U64_MAX } from "./helpers.js";

/** Decodes `stream` pushed in pieces cut at `cuts` (ascending positions). */
function decodeSplit(stream: Uint8Array, cuts: number[], expectSeq?: bigint): LogRecord[] {
  const decoder = new RecordDecoder(expectSeq === undefined ? {} : { expectSeq });
  const records: LogRecord[] = [];
  let start = 0;
  for (const cut of [...cuts, stream.length]) {
    records.push(...decoder.push(stream.subarray(start, cut)));
    start = cut;
  }
  decoder.finish();
  return records;
}

/**
 * Fast deep equality for hundreds of comparisons: the encoding is canonical (one byte string
 * per record, codec.test.ts), so equal bytes mean equal records. On a mismatch, toEqual says where.
 */
function expectSameRecords(actual: LogRecord[], expected: LogRecord[], context: string): void {
  if (Buffer.from(encodeRecords(actual)).equals(Buffer.from(encodeRecords(expected)))) return;
  expect(actual, context).toEqual(expected);
}

/** Every kind, edge values in every field (multi-byte varints straddle cuts), a larger payload. */
function mixedRecords(): LogRecord[] {
  return renumber([
    ...sampleRecords().filter((r) => r.data.length < 1000),
    record({ kind: RecordKind.Input, icount: U64_MAX, a: U32_MAX, b: U32_MAX, value: I64_MIN, data: bytes(300) }),
    record({ kind: RecordKind.Event, icount: 1n << 50n, a: 3, b: 200, value: 1n << 40n, data: bytes(130) }),
  ]);
}

describe("a stream split at every byte position", () => {
  const records = mixedRecords();
  const stream = encodeRecords(records);

  it("decodes the same in two pieces, for every cut", () => {
    expect(stream.length).toBeGreaterThan(600);
    for (let cut = 0; cut <= stream.length; cut++) {
      expectSameRecords(decodeSplit(stream, [cut], 0n), records, `cut at ${cut}`);
    }
  });

  it("decodes the same one byte at a time", () => {
    const cuts = Array.from({ length: stream.length - 1 }, (_, index) => index + 1);
    expect(decodeSplit(stream, cuts, 0n)).toEqual(records);
  });

  it("decodes the same in three pieces, for every pair of cuts in a short stream", () => {
    const short = renumber(sampleRecords().filter((r) => r.data.length <= 16).slice(0, 6));
    const shortStream = encodeRecords(short);
    for (let first = 0; first <= shortStream.length; first++) {
      for (let second = first; second <= shortStream.length; second++) {
        expectSameRecords(decodeSplit(shortStream, [first, second]), short, `cuts at ${first}, ${second}`);
      }
    }
  });

  it("returns each record as soon as its last byte arrives", () => {
    const decoder = new RecordDecoder();
    let end = 0;
    for (const r of records) {
      const frame = encodeRecord(r);
      // All but the frame's last byte: nothing yet.
      expect(decoder.push(stream.subarray(end, end + frame.length - 1))).toEqual([]);
      expect(decoder.push(stream.subarray(end + frame.length - 1, end + frame.length))).toEqual([r]);
      end += frame.length;
      expect(decoder.goodOffset).toBe(end);
      expect(decoder.recordCount).toBe(records.indexOf(r) + 1);
    }
    decoder.finish();
  });

  it("reuses nothing from a pushed chunk, so callers may overwrite it", () => {
    const decoder = new RecordDecoder();
    const chunk = new Uint8Array(7);
    const decoded: LogRecord[] = [];
    for (let pos = 0; pos < stream.length; pos += chunk.length) {
      const piece = stream.subarray(pos, pos + chunk.length);
      chunk.set(piece);
      decoded.push(...decoder.push(chunk.subarray(0, piece.length)));
      chunk.fill(0xa5);
    }
    decoder.finish();
    expect(decoded).toEqual(records);
  });
});

describe("a stream that ends inside a frame", () => {
  const records = mixedRecords();
  const frameEnds: number[] = [];
  let end = 0;
  for (const r of records) {
    end += encodeRecord(r).length;
    frameEnds.push(end);
  }
  const stream = encodeRecords(records);

  it("finishes cleanly at every frame boundary and reports LOG_TRUNCATED everywhere else", () => {
    for (let length = 0; length <= stream.length; length++) {
      const decoder = new RecordDecoder({ offset: 58 });
      const decoded = decoder.push(stream.subarray(0, length));
      const complete = frameEnds.filter((frameEnd) => frameEnd <= length).length;
      expectSameRecords(decoded, records.slice(0, complete), `length ${length}`);
      if (length === 0 || frameEnds.includes(length)) {
        decoder.finish();
        continue;
      }
      const error = codecErrorOf(() => decoder.finish(), "LOG_TRUNCATED");
      expect(error.recordCount).toBe(complete);
      expect(error.offset).toBe(58 + (complete === 0 ? 0 : frameEnds[complete - 1]!));
      expect(error.message).toMatch(
        new RegExp(`^log truncated at byte \\d+: partial record \\(\\d+ (of \\d+ bytes|bytes, inside the length)\\) after ${complete} complete records \\(LOG_TRUNCATED\\)$`),
      );
    }
  });
});
