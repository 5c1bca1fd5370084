import { AssertionError } from "node:assert";
import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import {
  BODY_BYTES_MAX,
  CONFIG_BYTES_MAX,
  DATA_BYTES_MAX,
  decodeHeader,
  decodeRecords,
  encodedRecordBytes,
  encodeHeader,
  encodeRecord,
  encodeRecords,
  LOG_VERSION,
  RecordDecoder,
} from "../../protocol/codec.js";
import { CodecError } from "../../protocol/errors.js";
import { EMPTY_BYTES, EventKind, type LogRecord, RecordKind } from "../../protocol/records.js";
import {
  bytes,
  codecErrorOf,
  concat,
  frameAround,
  header,
  I64_MAX,
  I64_MIN,
  leb,
  record,
  sampleRecords,
  U32_MAX,
  U64_MAX,
} from "./helpers.js";

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

function roundTrip(r: LogRecord): LogRecord {
  const encoded = encodeRecord(r);
  expect(encoded.length).toBe(encodedRecordBytes(r));
  const decoded = decodeRecords(encoded);
  expect(decoded).toHaveLength(1);
  return decoded[0]!;
}

/** Header bytes with a field patched and the checksum recomputed, to reach checks behind it. */
function patchedHeader(patch: (view: DataView, out: Uint8Array) => void, configBytes?: Uint8Array): Uint8Array {
  const base = encodeHeader(header({ config: "" }));
  const config = configBytes ?? EMPTY_BYTES;
  const out = new Uint8Array(54 + config.length + 4);
  out.set(base.subarray(0, 54));
  const view = new DataView(out.buffer);
  view.setUint32(50, config.length, true);
  out.set(config, 54);
  patch(view, out);
  view.setUint32(54 + config.length, crc32(out.subarray(0, 54 + config.length)), true);
  return out;
}

describe("header", () => {
  it("round-trips", () => {
    const h = header();
    const encoded = encodeHeader(h);
    expect(decodeHeader(encoded)).toEqual({ header: h, bytesRead: encoded.length });
  });

  it("has a fixed byte layout (golden)", () => {
    const encoded = encodeHeader({
      version: 1,
      moduleHash: new Uint8Array(32).fill(0xab),
      createdMs: 1_700_000_000_000,
      config: '{"guest":"kv"}',
    });
    expect(hex(encoded)).toBe(
      "4c5354504c4f4700" + // magic "LSTPLOG\0"
        "0100" + // version 1, u16 LE
        "ab".repeat(32) + // module hash
        "0068e5cf8b010000" + // createdMs 1700000000000, u64 LE
        "0e000000" + // config length 14, u32 LE
        "7b226775657374223a226b76227d" + // config
        "8c415de7", // crc32 of everything before, u32 LE
    );
  });

  it("round-trips edge values: empty and maximal config, createdMs 0 and 2^53-1", () => {
    for (const h of [
      header({ config: "", createdMs: 0 }),
      header({ config: "x".repeat(CONFIG_BYTES_MAX), createdMs: Number.MAX_SAFE_INTEGER }),
      header({ moduleHash: new Uint8Array(32).fill(0xff) }),
    ]) {
      expect(decodeHeader(encodeHeader(h)).header).toEqual(h);
    }
  });

  it("reports how far it read when records follow, and reads from a Buffer view at an offset", () => {
    const headerBytes = encodeHeader(header());
    const stream = concat(headerBytes, encodeRecords(sampleRecords()));
    const pooled = Buffer.concat([Buffer.alloc(13, 0xee), stream]).subarray(13);
    const { header: h, bytesRead } = decodeHeader(pooled);
    expect(h).toEqual(header());
    expect(bytesRead).toBe(headerBytes.length);
    expect(decodeRecords(pooled.subarray(bytesRead))).toEqual(sampleRecords());
  });

  it("rejects wrong magic at the first differing byte", () => {
    const good = encodeHeader(header());
    for (let index = 0; index < 8; index++) {
      const bad = good.slice();
      bad[index]! ^= 0x20;
      const error = codecErrorOf(() => decodeHeader(bad), "LOG_BAD_MAGIC");
      expect(error.offset).toBe(index);
    }
    const elf = Uint8Array.of(0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0);
    expect(codecErrorOf(() => decodeHeader(elf)).message).toBe(
      'not a Lockstep log at byte 0: bytes do not start with "LSTPLOG\\0" (LOG_BAD_MAGIC)',
    );
  });

  it("rejects a version it does not know, before looking at the rest", () => {
    for (const version of [0, 2, 0xffff]) {
      const bad = encodeHeader(header());
      new DataView(bad.buffer).setUint16(8, version, true);
      // A newer version may lay the rest out differently: the checksum cannot be judged.
      const error = codecErrorOf(() => decodeHeader(bad.subarray(0, 10)), "LOG_BAD_VERSION");
      expect(error.offset).toBe(8);
      expect(error.message).toBe(
        `log version unsupported at byte 8: version ${version}, this reader knows version 1 only (LOG_BAD_VERSION)`,
      );
      codecErrorOf(() => decodeHeader(bad), "LOG_BAD_VERSION");
    }
  });

  it("detects a flipped bit anywhere after the version as a checksum mismatch", () => {
    const good = encodeHeader(header());
    const checksumOffset = good.length - 4;
    for (let index = 10; index < good.length; index++) {
      if (index >= 50 && index < 54) continue; // config length: a larger one waits for more bytes
      const bad = good.slice();
      bad[index]! ^= 0x01;
      const error = codecErrorOf(() => decodeHeader(bad), "LOG_CHECKSUM");
      expect(error.offset).toBe(checksumOffset);
    }
  });

  it("reports every truncation as LOG_TRUNCATED", () => {
    const good = encodeHeader(header());
    for (let length = 0; length < good.length; length++) {
      const error = codecErrorOf(() => decodeHeader(good.subarray(0, length)), "LOG_TRUNCATED");
      expect(error.offset).toBe(length);
      expect(error.message).toMatch(/^log truncated at byte \d+: header needs at least \d+ bytes, have \d+ \(LOG_TRUNCATED\)$/);
    }
  });

  it("rejects a config length over the limit without waiting for the bytes", () => {
    const fixed = encodeHeader(header({ config: "" })).subarray(0, 54).slice();
    new DataView(fixed.buffer).setUint32(50, CONFIG_BYTES_MAX + 1, true);
    const error = codecErrorOf(() => decodeHeader(fixed), "LOG_TOO_LARGE");
    expect(error.offset).toBe(50);
    new DataView(fixed.buffer).setUint32(50, 0xffff_ffff, true);
    codecErrorOf(() => decodeHeader(fixed), "LOG_TOO_LARGE");
  });

  it("rejects a config that is not UTF-8 even with a valid checksum", () => {
    const bad = patchedHeader(() => {}, Uint8Array.of(0x7b, 0xc3, 0x28, 0x7d));
    const error = codecErrorOf(() => decodeHeader(bad), "LOG_MALFORMED");
    expect(error.offset).toBe(54);
  });

  it("rejects createdMs beyond 2^53-1 even with a valid checksum", () => {
    const bad = patchedHeader((view) => view.setUint32(46, 0x0020_0000, true));
    expect(codecErrorOf(() => decodeHeader(bad), "LOG_MALFORMED").offset).toBe(42);
    const edge = patchedHeader((view) => {
      view.setUint32(42, 0xffff_ffff, true);
      view.setUint32(46, 0x001f_ffff, true);
    });
    expect(decodeHeader(edge).header.createdMs).toBe(Number.MAX_SAFE_INTEGER);
  });

  it("refuses to encode a bad header (programmer error)", () => {
    expect(() => encodeHeader(header({ version: LOG_VERSION + 1 }))).toThrow(AssertionError);
    expect(() => encodeHeader(header({ moduleHash: new Uint8Array(31) }))).toThrow(AssertionError);
    expect(() => encodeHeader(header({ createdMs: -1 }))).toThrow(AssertionError);
    expect(() => encodeHeader(header({ createdMs: 1.5 }))).toThrow(AssertionError);
    expect(() => encodeHeader(header({ config: "é".repeat(CONFIG_BYTES_MAX / 2 + 1) }))).toThrow(AssertionError);
  });
});

describe("record round trips", () => {
  it.each(sampleRecords().map((r) => [RecordKind[r.kind], r.a, r] as const))("%s (a=%i)", (_kind, _a, r) => {
    expect(roundTrip(r)).toEqual(r);
  });

  const u64Edges = [0n, 1n, 127n, 128n, 0xffff_ffffn, 1n << 32n, (1n << 49n) - 1n, 1n << 49n, 1n << 53n, 1n << 63n, U64_MAX - 1n, U64_MAX];
  const i64Edges = [0n, 1n, -1n, 63n, -64n, 64n, -65n, 2n ** 31n, -(2n ** 31n), 2n ** 48n, -(2n ** 48n) - 1n, 2n ** 52n, -(2n ** 52n), I64_MAX, I64_MIN, I64_MIN + 1n];
  const u32Edges = [0, 1, 127, 128, 0xffff, 2 ** 31, U32_MAX];

  it("keeps seq and icount exact up to 2^64-1", () => {
    for (const seq of u64Edges) {
      for (const icount of u64Edges) {
        const r = record({ kind: RecordKind.Input, seq, icount, a: 1 });
        expect(roundTrip(r)).toEqual(r);
      }
    }
  });

  it("keeps value exact across the whole i64 range", () => {
    for (const value of i64Edges) {
      const r = record({ kind: RecordKind.End, value, a: 1 });
      expect(roundTrip(r), `value ${value}`).toEqual(r);
    }
  });

  it("keeps a and b exact up to 2^32-1", () => {
    for (const a of u32Edges) {
      for (const b of u32Edges) {
        const r = record({ kind: RecordKind.Event, a, b });
        expect(roundTrip(r)).toEqual(r);
      }
    }
  });

  it("carries empty, small and large data, up to the limit", () => {
    for (const length of [0, 1, 127, 128, 16_383, 16_384, 1 << 20, DATA_BYTES_MAX]) {
      const r = record({ kind: RecordKind.Event, a: EventKind.NicData, data: bytes(length, length) });
      const decoded = roundTrip(r);
      expect(decoded.data.length).toBe(length);
      expect(Buffer.from(decoded.data).equals(Buffer.from(r.data))).toBe(true);
    }
  });

  it("returns data that does not alias the decoded bytes, also when they are a Buffer", () => {
    for (const encoded of [encodeRecord(sampleRecords()[2]!), Buffer.from(encodeRecord(sampleRecords()[2]!))]) {
      const [decoded] = decodeRecords(encoded);
      const before = [...decoded!.data];
      encoded.fill(0);
      expect([...decoded!.data]).toEqual(before);
      // A plain Uint8Array: Buffer's slice() would have been a view.
      expect(Object.getPrototypeOf(decoded!.data)).toBe(Uint8Array.prototype);
    }
    const headerBytes = Buffer.from(encodeHeader(header()));
    const { header: h } = decodeHeader(headerBytes);
    headerBytes.fill(0);
    expect(h.moduleHash).toEqual(header().moduleHash);
    expect(Object.getPrototypeOf(h.moduleHash)).toBe(Uint8Array.prototype);
  });
});

describe("record frame layout", () => {
  it("is fixed byte for byte (golden)", () => {
    const timer = record({ kind: RecordKind.Event, seq: 5n, icount: 300n, a: EventKind.Timer, b: 0, value: -1n });
    expect(hex(encodeRecord(timer))).toBe(
      "08" + // body length 8
        "01" + // kind Event
        "05" + // seq 5
        "ac02" + // icount 300
        "01" + // a: EventKind.Timer
        "00" + // b
        "01" + // value -1, zigzag 1
        "00" + // data length 0
        "5e4dfa76", // crc32 of length + body, u32 LE
    );
  });

  it("is compact for the records a host writes most", () => {
    const timer = record({ kind: RecordKind.Event, seq: 1_000n, icount: 123_456_789n, a: EventKind.Timer });
    const nicData = record({ kind: RecordKind.Event, seq: 1_000n, icount: 123_456_789n, a: EventKind.NicData, b: 3, value: 16n, data: bytes(16) });
    // 1 length + (1 kind + 2 seq + 4 icount + 1 a + 1 b + 1 value + 1 data length) + 4 crc
    expect(encodeRecord(timer).length).toBe(16);
    expect(encodeRecord(nicData).length).toBe(16 + 16);
    expect(encodeRecord({ ...timer, icount: 5_000_000_000n }).length).toBe(17);
  });

  it("batches as frames back to back", () => {
    const records = sampleRecords();
    expect(hex(encodeRecords(records))).toBe(records.map((r) => hex(encodeRecord(r))).join(""));
    expect(encodeRecords([])).toHaveLength(0);
    expect(decodeRecords(encodeRecords(records))).toEqual(records);
    expect(decodeRecords(EMPTY_BYTES)).toEqual([]);
  });

  it("refuses to encode a record with a field out of range (programmer error)", () => {
    const good = record({ kind: RecordKind.Event, a: 1 });
    const bad: Partial<LogRecord>[] = [
      { kind: 0 as RecordKind },
      { kind: 6 as RecordKind },
      { seq: -1n },
      { seq: U64_MAX + 1n },
      { icount: U64_MAX + 1n },
      { a: -1 },
      { a: U32_MAX + 1 },
      { b: 0.5 },
      { value: I64_MAX + 1n },
      { value: I64_MIN - 1n },
      { data: new Uint8Array(DATA_BYTES_MAX + 1) },
      { data: [1, 2] as unknown as Uint8Array },
    ];
    for (const fields of bad) {
      expect(() => encodeRecord({ ...good, ...fields }), JSON.stringify(Object.keys(fields))).toThrow(AssertionError);
    }
  });
});

describe("record decoding errors", () => {
  const timerBody = [RecordKind.Event, 0, 0x64, EventKind.Timer, 0, 0, 0];

  it("says where and what, on one line", () => {
    const stream = encodeRecords(sampleRecords().slice(0, 2));
    const second = encodeRecord(sampleRecords()[0]!).length;
    stream[second + 3]! ^= 0x10;
    const error = codecErrorOf(() => decodeRecords(stream, { offset: 1000 }), "LOG_CHECKSUM");
    expect(error).toBeInstanceOf(CodecError);
    expect(error.message).toBe(`log corrupt at byte ${1000 + second}: record checksum mismatch (LOG_CHECKSUM)`);
    expect(error.offset).toBe(1000 + second);
    expect(error.recordCount).toBe(1);
    expect(error.detail).toBe("record checksum mismatch");
  });

  it("rejects a corrupted checksum field itself", () => {
    const frame = encodeRecord(sampleRecords()[0]!);
    frame[frame.length - 1]! ^= 0x80;
    codecErrorOf(() => decodeRecords(frame), "LOG_CHECKSUM");
  });

  const malformed: [string, Uint8Array, RegExp][] = [
    ["an empty body", frameAround([]), /record ends before kind/],
    ["kind 0", frameAround([0, 0, 0, 0, 0, 0, 0]), /unknown record kind 0/],
    ["kind 6", frameAround([6, 0, 0, 0, 0, 0, 0]), /unknown record kind 6/],
    ["an overlong seq", frameAround([1, 0x80, 0x00, 0, 0, 0, 0, 0]), /seq is not minimally encoded/],
    ["a = 2^32", frameAround([1, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0, 0]), /a exceeds 2\^32-1/],
    ["data length past the body", frameAround([...timerBody.slice(0, 6), 3, 1, 2]), /data length 3 exceeds the 2 bytes left/],
    ["bytes after the data", frameAround([...timerBody, 9, 9]), /2 unexpected bytes after data/],
    ["a missing data length", frameAround(timerBody.slice(0, 6)), /record ends inside data length/],
    ["an overlong length prefix", frameAround(timerBody, [0x87, 0x00]), /record length is not minimally encoded/],
  ];

  it.each(malformed)("rejects %s (checksum valid) as LOG_MALFORMED", (_name, frame, message) => {
    const stream = concat(encodeRecord(record({ kind: RecordKind.Event, a: 1 })), frame);
    const error = codecErrorOf(() => decodeRecords(stream), "LOG_MALFORMED");
    expect(error.message).toMatch(message);
    expect(error.offset).toBe(stream.length - frame.length);
    expect(error.recordCount).toBe(1);
  });

  it("accepts a hand-built frame, proving the fixtures above differ only where they say", () => {
    expect(decodeRecords(frameAround(timerBody))).toEqual([record({ kind: RecordKind.Event, icount: 100n, a: EventKind.Timer })]);
  });

  it("rejects a length prefix over the limit as soon as it is read, without allocating", () => {
    const arrayBuffersBefore = process.memoryUsage().arrayBuffers;
    const decoders: RecordDecoder[] = [];
    for (const length of [BODY_BYTES_MAX + 1, 2 ** 28 - 1, 2 ** 32 - 1]) {
      const decoder = new RecordDecoder();
      decoders.push(decoder); // kept alive so that anything it allocated would still count
      // Only the prefix and a few body bytes are pushed: the error cannot wait for the body.
      const error = codecErrorOf(() => decoder.push(Uint8Array.from([...leb(length), 1, 2, 3])), "LOG_TOO_LARGE");
      expect(error.offset).toBe(0);
      expect(error.message).toMatch(/record length \d+ exceeds limit|record length prefix longer than 4 bytes/);
    }
    // Zeros with the continuation bit: the value stays small, the prefix would not end.
    expect(codecErrorOf(() => new RecordDecoder().push(Uint8Array.of(0x80, 0x80, 0x80, 0x80)), "LOG_TOO_LARGE").message).toMatch(
      /record length prefix longer than 4 bytes/,
    );
    // 2^35-1: had the decoder allocated first, this would be a RangeError, not a CodecError.
    codecErrorOf(() => new RecordDecoder().push(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x7f)), "LOG_TOO_LARGE");
    expect(process.memoryUsage().arrayBuffers - arrayBuffersBefore).toBeLessThan(4 * 1024 * 1024);
    expect(decoders).toHaveLength(3);
  });

  it("accepts a length prefix at the limit (and waits for the body)", () => {
    const decoder = new RecordDecoder();
    expect(decoder.push(Uint8Array.from(leb(BODY_BYTES_MAX)))).toEqual([]);
    codecErrorOf(() => decoder.finish(), "LOG_TRUNCATED");
  });

  it("applies a lower per-stream data limit to the length prefix and the data length", () => {
    const big = encodeRecord(record({ kind: RecordKind.Event, a: EventKind.NicData, data: bytes(1000) }));
    codecErrorOf(() => new RecordDecoder({ dataBytesMax: 100 }).push(big.subarray(0, 2)), "LOG_TOO_LARGE");
    // Within the length bound (short fields leave room) but the data length itself is over.
    const over = encodeRecord(record({ kind: RecordKind.Event, a: EventKind.NicData, data: bytes(110) }));
    expect(codecErrorOf(() => decodeRecords(over, { dataBytesMax: 100 }), "LOG_TOO_LARGE").message).toMatch(
      /record data length 110 exceeds limit 100/,
    );
    expect(decodeRecords(encodeRecord(record({ kind: RecordKind.Event, data: bytes(100) })), { dataBytesMax: 100 })).toHaveLength(1);
  });
});

describe("sequence checking", () => {
  it("accepts dense seqs from the expected start", () => {
    expect(decodeRecords(encodeRecords(sampleRecords()), { expectSeq: 0n })).toEqual(sampleRecords());
    expect(decodeRecords(encodeRecords(sampleRecords(7n)), { expectSeq: 7n })).toEqual(sampleRecords(7n));
    expect(decodeRecords(encodeRecords(sampleRecords(U64_MAX - 1n).slice(0, 2)), { expectSeq: U64_MAX - 1n })).toHaveLength(2);
  });

  it("reports a gap as lost records, at the frame after the gap", () => {
    const records = sampleRecords();
    const withGap = [...records.slice(0, 3), ...records.slice(4)];
    const stream = encodeRecords(withGap);
    const error = codecErrorOf(() => decodeRecords(stream, { expectSeq: 0n }), "LOG_BAD_SEQ");
    expect(error.recordCount).toBe(3);
    expect(error.offset).toBe(encodeRecords(withGap.slice(0, 3)).length);
    expect(error.message).toMatch(/expected seq 3, got 4 \(records lost\) \(LOG_BAD_SEQ\)$/);
  });

  it("reports a duplicate and a wrong start", () => {
    const records = sampleRecords();
    const duplicated = encodeRecords([records[0]!, records[1]!, records[1]!]);
    expect(codecErrorOf(() => decodeRecords(duplicated, { expectSeq: 0n }), "LOG_BAD_SEQ").message).toMatch(
      /expected seq 2, got 1 \(record duplicated or reordered\)/,
    );
    codecErrorOf(() => decodeRecords(encodeRecords(records), { expectSeq: 1n }), "LOG_BAD_SEQ");
  });

  it("checks across pushes and accepts any seqs when not asked", () => {
    const records = sampleRecords();
    const decoder = new RecordDecoder({ expectSeq: 0n });
    expect(decoder.push(encodeRecords(records.slice(0, 2)))).toHaveLength(2);
    codecErrorOf(() => decoder.push(encodeRecord(records[3]!)), "LOG_BAD_SEQ");
    const shuffled = [records[5]!, records[0]!, records[0]!];
    expect(decodeRecords(encodeRecords(shuffled))).toEqual(shuffled);
  });
});

describe("decoder after an error", () => {
  it("rethrows the same error on every later call, whatever it is given", () => {
    const decoder = new RecordDecoder();
    const bad = encodeRecord(sampleRecords()[0]!);
    bad[2]! ^= 1;
    const error = codecErrorOf(() => decoder.push(bad), "LOG_CHECKSUM");
    expect(() => decoder.push(encodeRecord(sampleRecords()[0]!))).toThrow(error);
    try {
      decoder.finish();
      expect.unreachable();
    } catch (again) {
      expect(again).toBe(error);
    }
  });
});

describe("records before an error in the same chunk", () => {
  it("are kept in the array passed to push", () => {
    const records = sampleRecords();
    const stream = encodeRecords(records);
    const third = encodeRecords(records.slice(0, 3)).length;
    stream[third + 2]! ^= 0x04;
    const kept: LogRecord[] = [];
    const error = codecErrorOf(() => new RecordDecoder().push(stream, kept), "LOG_CHECKSUM");
    expect(kept).toEqual(records.slice(0, 3));
    expect(error.recordCount).toBe(3);
    expect(error.offset).toBe(third);
  });
});
