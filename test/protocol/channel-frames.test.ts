// The logging-channel frame codec: every message type round-trips exactly, and bad bytes
// (truncated, flipped, garbage, hostile lengths, other versions) are rejected with a
// ChannelError, never a crash or an unbounded allocation. Randomized cases print their seed;
// rerun one with LOCKSTEP_SEED=<seed>.

import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import type { ChannelMessage } from "../../host/ft/messages.js";
import {
  CHANNEL_BODY_BYTES_MAX,
  CHANNEL_FRAME_BYTES_MAX,
  CHANNEL_MAGIC,
  CHANNEL_RECORD_BYTES_MAX,
  CHANNEL_RECORDS_MAX,
  CHANNEL_VERSION,
  ChannelError,
  type ChannelErrorCode,
  ChannelFrameType,
  decodeChannelMessage,
  encodeChannelMessage,
} from "../../protocol/channel-frames.js";
import { DATA_BYTES_MAX, encodeRecords } from "../../protocol/codec.js";
import { RecordKind } from "../../protocol/records.js";
import { bytes, fuzzSeed, leb, Prng, record, renumber, sampleRecords, U64_MAX } from "./helpers.js";

function channelErrorOf(fn: () => unknown, code?: ChannelErrorCode): ChannelError {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof ChannelError)) throw new Error(`expected a ChannelError, got ${String(error)}`, { cause: error });
    if (code !== undefined && error.code !== code) throw new Error(`expected ${code}, got: ${error.message}`, { cause: error });
    return error;
  }
  throw new Error(`expected a ChannelError${code === undefined ? "" : ` ${code}`}, nothing was thrown`);
}

/** A frame built by hand: header, length prefix, body, correct CRC. */
function frame(type: number, body: number[] | Uint8Array, options: { version?: number; lengthPrefix?: number[] } = {}): Uint8Array {
  const bodyBytes = Uint8Array.from(body);
  const head = [...CHANNEL_MAGIC, options.version ?? CHANNEL_VERSION, type, ...(options.lengthPrefix ?? leb(bodyBytes.length))];
  const out = new Uint8Array(head.length + bodyBytes.length + 4);
  out.set(head);
  out.set(bodyBytes, head.length);
  new DataView(out.buffer).setUint32(out.length - 4, crc32(out.subarray(0, out.length - 4)), true);
  return out;
}

/** Re-seals a frame's CRC after its bytes were edited. */
function reseal(frameBytes: Uint8Array): Uint8Array {
  const out = Uint8Array.from(frameBytes);
  new DataView(out.buffer).setUint32(out.length - 4, crc32(out.subarray(0, out.length - 4)), true);
  return out;
}

const envelope = { vmId: "kv-1", generation: 3 };
/** "kv-1" and generation 3, as body bytes. */
const ENVELOPE_BYTES = [4, 0x6b, 0x76, 0x2d, 0x31, 3];

/** Edge values of every message type. */
function samples(): [string, ChannelMessage][] {
  const maxGen = Number.MAX_SAFE_INTEGER;
  return [
    ["hello primary, no token", { t: "hello", ...envelope, role: "primary" }],
    ["hello backup, token", { t: "hello", ...envelope, role: "backup", token: "s3cr3t-✓" }],
    ["hello, empty token", { t: "hello", ...envelope, role: "primary", token: "" }],
    ["hello, 256-byte token, 64-byte vmId", { t: "hello", vmId: "v".repeat(64), generation: maxGen, role: "backup", token: "t".repeat(256) }],
    ["heartbeat", { t: "heartbeat", ...envelope }],
    ["heartbeat, generation 0, empty vmId", { t: "heartbeat", vmId: "", generation: 0 }],
    ["entries, empty", { t: "entries", ...envelope, records: [] }],
    ["entries, one record", { t: "entries", ...envelope, records: sampleRecords().slice(0, 1) }],
    ["entries, every kind", { t: "entries", ...envelope, records: sampleRecords(1_000n) }],
    [
      "entries, seq and icount near 2^64-1",
      {
        t: "entries",
        ...envelope,
        generation: maxGen,
        records: [
          record({ kind: RecordKind.Event, seq: U64_MAX - 1n, icount: U64_MAX, a: 3, b: 1, value: 4n, data: bytes(4) }),
          record({ kind: RecordKind.End, seq: U64_MAX, icount: U64_MAX, a: 1 }),
        ],
      },
    ],
    ["ack, zeros", { t: "ack", ...envelope, ackSeq: 0n, windowEndSeq: 0n, replayedSeq: 0n, replayedIcount: 0n, resend: false }],
    [
      "ack, 2^64-1 and resend",
      { t: "ack", ...envelope, ackSeq: U64_MAX, windowEndSeq: U64_MAX, replayedSeq: U64_MAX - 1n, replayedIcount: U64_MAX, resend: true },
    ],
    ["renew", { t: "renew", ...envelope, owner: "host-1" }],
    ["renew, 256-byte owner", { t: "renew", vmId: "v".repeat(64), generation: maxGen, owner: "o".repeat(256) }],
    [
      "ack, 2^49 boundaries",
      { t: "ack", ...envelope, ackSeq: (1n << 49n) - 1n, windowEndSeq: 1n << 49n, replayedSeq: 1n << 63n, replayedIcount: 127n, resend: false },
    ],
  ];
}

describe("channel frames: round trip", () => {
  it.each(samples())("%s", (_name, message) => {
    const encoded = encodeChannelMessage(message);
    expect([...encoded.subarray(0, 4)]).toEqual([0x4c, 0x43, CHANNEL_VERSION, encoded[3]]);
    const decoded = decodeChannelMessage(encoded);
    expect(decoded).toEqual(message);
    // Absent stays absent: no `token: undefined` key appears.
    if (message.t === "hello") expect("token" in decoded).toBe("token" in message);
    // Canonical: re-encoding gives the same bytes.
    expect(encodeChannelMessage(decoded)).toEqual(encoded);
    // From a Buffer view into a larger pool, as ws hands them out.
    const pool = Buffer.alloc(encoded.length + 16, 0xee);
    pool.set(encoded, 7);
    expect(decodeChannelMessage(pool.subarray(7, 7 + encoded.length))).toEqual(message);
  });

  it("entries bytes are the log's own record frames", () => {
    const records = sampleRecords(5n);
    const encoded = encodeChannelMessage({ t: "entries", ...envelope, records });
    const logBytes = encodeRecords(records);
    // header 4 + length prefix + envelope + count (1 byte) + records + CRC 4
    const lengthBytes = leb(ENVELOPE_BYTES.length + 1 + logBytes.length).length;
    expect(encoded.length).toBe(4 + lengthBytes + ENVELOPE_BYTES.length + 1 + logBytes.length + 4);
    expect([...encoded.subarray(4 + lengthBytes, 4 + lengthBytes + ENVELOPE_BYTES.length + 1)]).toEqual([...ENVELOPE_BYTES, records.length]);
    expect(encoded.subarray(4 + lengthBytes + ENVELOPE_BYTES.length + 1, encoded.length - 4)).toEqual(logBytes);
  });

  it("decoded record data does not alias the frame", () => {
    const encoded = encodeChannelMessage({ t: "entries", ...envelope, records: sampleRecords() });
    const decoded = decodeChannelMessage(encoded);
    encoded.fill(0);
    expect(decoded).toEqual({ t: "entries", ...envelope, records: sampleRecords() });
  });

  it("golden bytes: heartbeat, ack, hello and renew", () => {
    const heartbeat = encodeChannelMessage({ t: "heartbeat", ...envelope });
    expect(heartbeat).toEqual(frame(ChannelFrameType.Heartbeat, ENVELOPE_BYTES));
    const ack = encodeChannelMessage({ t: "ack", ...envelope, ackSeq: 10n, windowEndSeq: 300n, replayedSeq: 9n, replayedIcount: 0n, resend: true });
    expect(ack).toEqual(frame(ChannelFrameType.Ack, [...ENVELOPE_BYTES, 10, 0xac, 0x02, 9, 0, 1]));
    const hello = encodeChannelMessage({ t: "hello", ...envelope, role: "backup", token: "ab" });
    expect(hello).toEqual(frame(ChannelFrameType.Hello, [...ENVELOPE_BYTES, 2, 1, 2, 0x61, 0x62]));
    const renew = encodeChannelMessage({ t: "renew", ...envelope, owner: "ab" });
    expect(renew).toEqual(frame(ChannelFrameType.Renew, [...ENVELOPE_BYTES, 2, 0x61, 0x62]));
  });

  it("a large batch: many records, and one record at the data limit", { timeout: 60_000 }, () => {
    // Compared through bytes: a deep toEqual over millions of elements is what exhausts memory.
    const many = renumber(Array.from({ length: 20_000 }, (_, index) => record({ kind: RecordKind.Event, icount: BigInt(index), a: 1, data: bytes(index % 64) })), 7n);
    const manyFrame = encodeChannelMessage({ t: "entries", ...envelope, records: many });
    const manyDecoded = decodeChannelMessage(manyFrame);
    expect(manyDecoded.t === "entries" && manyDecoded.records.length).toBe(many.length);
    expect(manyDecoded.t === "entries" && manyDecoded.records[19_999]).toEqual(many[19_999]);
    expect(Buffer.from(encodeChannelMessage(manyDecoded)).equals(manyFrame)).toBe(true);

    const big = record({ kind: RecordKind.Event, seq: 1n, icount: 5n, a: 6, data: bytes(DATA_BYTES_MAX, 9) });
    const encoded = encodeChannelMessage({ t: "entries", ...envelope, records: [big] });
    expect(encoded.length).toBeLessThanOrEqual(CHANNEL_FRAME_BYTES_MAX);
    const decoded = decodeChannelMessage(encoded);
    if (decoded.t !== "entries") throw new Error("not entries");
    expect(decoded.records.length).toBe(1);
    const { data, ...fields } = decoded.records[0]!;
    const { data: bigData, ...bigFields } = big;
    expect(fields).toEqual(bigFields);
    expect(Buffer.from(data).equals(bigData)).toBe(true);
  });

  it("encoding out-of-range fields is an assertion, not a ChannelError", () => {
    const bad: unknown[] = [
      { t: "hello", ...envelope, role: "arbiter" },
      { t: "hello", ...envelope, role: "primary", token: "x".repeat(257) },
      { t: "heartbeat", vmId: "v".repeat(65), generation: 0 },
      { t: "heartbeat", vmId: "v", generation: -1 },
      { t: "heartbeat", vmId: "v", generation: 1.5 },
      { t: "ack", ...envelope, ackSeq: U64_MAX + 1n, windowEndSeq: 0n, replayedSeq: 0n, replayedIcount: 0n, resend: false },
      { t: "ack", ...envelope, ackSeq: -1n, windowEndSeq: 0n, replayedSeq: 0n, replayedIcount: 0n, resend: false },
      { t: "entries", ...envelope, records: Array.from({ length: CHANNEL_RECORDS_MAX + 1 }, () => record({ kind: RecordKind.End })) },
      { t: "nope", ...envelope },
    ];
    for (const message of bad) {
      expect(() => encodeChannelMessage(message as ChannelMessage)).toThrow(expect.objectContaining({ code: "ERR_ASSERTION" }));
    }
  });

  it("limits are consistent", () => {
    expect(CHANNEL_FRAME_BYTES_MAX).toBe(32 * 1024 * 1024);
    expect(CHANNEL_BODY_BYTES_MAX).toBe(CHANNEL_FRAME_BYTES_MAX - 12);
    expect(CHANNEL_RECORD_BYTES_MAX).toBeGreaterThan(DATA_BYTES_MAX + 64);
    expect(CHANNEL_RECORD_BYTES_MAX).toBeLessThan(CHANNEL_BODY_BYTES_MAX);
  });
});

describe("channel frames: rejection", () => {
  it("every truncation of every sample frame is rejected", () => {
    for (const [name, message] of samples()) {
      const encoded = encodeChannelMessage(message);
      for (let length = 0; length < encoded.length; length++) {
        const error = channelErrorOf(() => decodeChannelMessage(encoded.subarray(0, length)));
        expect(error.code, `${name}, ${length} of ${encoded.length} bytes`).toBe("CHANNEL_TRUNCATED");
      }
    }
  });

  it("trailing bytes are rejected", () => {
    const encoded = encodeChannelMessage({ t: "heartbeat", ...envelope });
    channelErrorOf(() => decodeChannelMessage(Uint8Array.from([...encoded, 0])), "CHANNEL_MALFORMED");
  });

  it("wrong magic and wrong version", () => {
    const encoded = encodeChannelMessage({ t: "heartbeat", ...envelope });
    expect(channelErrorOf(() => decodeChannelMessage(Uint8Array.from([0x4c, 0x53, ...encoded.subarray(2)])), "CHANNEL_BAD_MAGIC").offset).toBe(1);
    channelErrorOf(() => decodeChannelMessage(Uint8Array.of(0x00)), "CHANNEL_BAD_MAGIC");
    // A log header or a log batch sent by mistake is not a channel frame.
    channelErrorOf(() => decodeChannelMessage(Uint8Array.of(0x4c, 0x53, 0x54, 0x50, 0x4c, 0x4f, 0x47, 0)), "CHANNEL_BAD_MAGIC");
    channelErrorOf(() => decodeChannelMessage(encodeRecords(sampleRecords())), "CHANNEL_BAD_MAGIC");
    for (const version of [0, 2, 255]) {
      const other = Uint8Array.from(encoded);
      other[2] = version;
      // Checked before the CRC: a version-2 frame says "version", not "corrupt".
      expect(channelErrorOf(() => decodeChannelMessage(other), "CHANNEL_BAD_VERSION").offset).toBe(2);
      channelErrorOf(() => decodeChannelMessage(reseal(other)), "CHANNEL_BAD_VERSION");
    }
  });

  it("unknown types", () => {
    for (const type of [0, 6, 255]) channelErrorOf(() => decodeChannelMessage(frame(type, ENVELOPE_BYTES)), "CHANNEL_UNKNOWN_TYPE");
  });

  it("huge and garbage length prefixes are rejected without allocating", () => {
    // 32 MiB: one past the body limit; 2^35-1 in five bytes; an endless prefix; a non-canonical one.
    const cases: [number[], ChannelErrorCode][] = [
      [leb(CHANNEL_BODY_BYTES_MAX + 1), "CHANNEL_TOO_LARGE"],
      [[0xff, 0xff, 0xff, 0xff, 0x7f], "CHANNEL_TOO_LARGE"],
      [[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80], "CHANNEL_TOO_LARGE"],
      [[0x86, 0x00], "CHANNEL_MALFORMED"],
    ];
    for (const [prefix, code] of cases) {
      const bad = Uint8Array.from([...CHANNEL_MAGIC, CHANNEL_VERSION, ChannelFrameType.Heartbeat, ...prefix, 1, 2, 3, 4]);
      const before = process.memoryUsage().arrayBuffers;
      const error = channelErrorOf(() => decodeChannelMessage(bad), code);
      expect(error.offset).toBe(4);
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(1024 * 1024);
    }
    // The limit itself passes the length check and then waits for bytes that are not there.
    const atLimit = Uint8Array.from([...CHANNEL_MAGIC, CHANNEL_VERSION, 2, ...leb(CHANNEL_BODY_BYTES_MAX), 0, 0, 0, 0]);
    channelErrorOf(() => decodeChannelMessage(atLimit), "CHANNEL_TRUNCATED");
  });

  it("hostile counts and lengths inside a checksummed body", () => {
    const oneRecord = encodeRecords(sampleRecords().slice(0, 1));
    const cases: [string, number, number[], ChannelErrorCode][] = [
      ["record count over the limit", ChannelFrameType.Entries, [...ENVELOPE_BYTES, ...leb(CHANNEL_RECORDS_MAX + 1)], "CHANNEL_TOO_LARGE"],
      ["count 2, one record", ChannelFrameType.Entries, [...ENVELOPE_BYTES, 2, ...oneRecord], "CHANNEL_MALFORMED"],
      ["count 0, one record", ChannelFrameType.Entries, [...ENVELOPE_BYTES, 0, ...oneRecord], "CHANNEL_MALFORMED"],
      ["count 1, no records", ChannelFrameType.Entries, [...ENVELOPE_BYTES, 1], "CHANNEL_MALFORMED"],
      ["record length 2^35-1", ChannelFrameType.Entries, [...ENVELOPE_BYTES, 1, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0], "CHANNEL_MALFORMED"],
      ["record length prefix endless", ChannelFrameType.Entries, [...ENVELOPE_BYTES, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80], "CHANNEL_MALFORMED"],
      ["record cut short", ChannelFrameType.Entries, [...ENVELOPE_BYTES, 1, ...oneRecord.subarray(0, oneRecord.length - 1)], "CHANNEL_MALFORMED"],
      ["vmId of 65 bytes", ChannelFrameType.Heartbeat, [65, ...new Array<number>(65).fill(0x61), 0], "CHANNEL_MALFORMED"],
      ["vmId length past the body", ChannelFrameType.Heartbeat, [10, 0x61, 0], "CHANNEL_MALFORMED"],
      ["vmId not UTF-8", ChannelFrameType.Heartbeat, [2, 0xc3, 0x28, 0], "CHANNEL_MALFORMED"],
      ["generation 2^53", ChannelFrameType.Heartbeat, [0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10], "CHANNEL_MALFORMED"],
      ["generation not canonical", ChannelFrameType.Heartbeat, [0, 0x83, 0x00], "CHANNEL_MALFORMED"],
      ["heartbeat with a trailing byte", ChannelFrameType.Heartbeat, [...ENVELOPE_BYTES, 0], "CHANNEL_MALFORMED"],
      ["empty body", ChannelFrameType.Heartbeat, [], "CHANNEL_MALFORMED"],
      ["role 3", ChannelFrameType.Hello, [...ENVELOPE_BYTES, 3, 0], "CHANNEL_MALFORMED"],
      ["token flag 2", ChannelFrameType.Hello, [...ENVELOPE_BYTES, 1, 2], "CHANNEL_MALFORMED"],
      ["token of 257 bytes", ChannelFrameType.Hello, [...ENVELOPE_BYTES, 1, 1, ...leb(257), ...new Array<number>(257).fill(0x61)], "CHANNEL_MALFORMED"],
      ["absent token with bytes after", ChannelFrameType.Hello, [...ENVELOPE_BYTES, 1, 0, 0], "CHANNEL_MALFORMED"],
      ["ack seq of 2^64", ChannelFrameType.Ack, [...ENVELOPE_BYTES, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02, 0, 0, 0, 0], "CHANNEL_MALFORMED"],
      ["ack seq of 11 bytes", ChannelFrameType.Ack, [...ENVELOPE_BYTES, ...new Array<number>(10).fill(0x80), 0, 0, 0, 0, 0], "CHANNEL_MALFORMED"],
      ["ack seq not canonical", ChannelFrameType.Ack, [...ENVELOPE_BYTES, 0x80, 0x00, 0, 0, 0, 0], "CHANNEL_MALFORMED"],
      ["ack unknown flag", ChannelFrameType.Ack, [...ENVELOPE_BYTES, 0, 0, 0, 0, 2], "CHANNEL_MALFORMED"],
      ["ack without flags", ChannelFrameType.Ack, [...ENVELOPE_BYTES, 0, 0, 0, 0], "CHANNEL_MALFORMED"],
      ["renew without owner", ChannelFrameType.Renew, [...ENVELOPE_BYTES], "CHANNEL_MALFORMED"],
      ["renew owner of 257 bytes", ChannelFrameType.Renew, [...ENVELOPE_BYTES, ...leb(257), ...new Array<number>(257).fill(0x61)], "CHANNEL_MALFORMED"],
      ["renew with a trailing byte", ChannelFrameType.Renew, [...ENVELOPE_BYTES, 1, 0x61, 0], "CHANNEL_MALFORMED"],
    ];
    for (const [name, type, body, code] of cases) {
      const error = channelErrorOf(() => decodeChannelMessage(frame(type, body)));
      expect(error.code, name).toBe(code);
      expect(error.message, name).not.toMatch(/[\r\n]/);
    }
  });

  it("a bad record inside a good frame carries the log codec's error as its cause", () => {
    const records = encodeRecords(sampleRecords().slice(0, 2));
    const corrupt = Uint8Array.from(records);
    corrupt[3] ^= 0x01; // inside the first record's body: its own CRC catches it
    const error = channelErrorOf(() => decodeChannelMessage(frame(ChannelFrameType.Entries, [...ENVELOPE_BYTES, 2, ...corrupt])), "CHANNEL_CHECKSUM");
    expect(error.cause).toMatchObject({ code: "LOG_CHECKSUM" });
    expect(error.offset).toBe(4 + 1 + ENVELOPE_BYTES.length + 1);
  });

  it("seeded single-byte flips are always rejected", () => {
    const seed = fuzzSeed(0x5eed_c4a1);
    const prng = new Prng(seed);
    const frames = samples().map(([, message]) => encodeChannelMessage(message));
    try {
      for (let iteration = 0; iteration < 5_000; iteration++) {
        const encoded = Uint8Array.from(prng.pick(frames));
        const at = prng.below(encoded.length);
        encoded[at] ^= 1 + prng.below(255);
        channelErrorOf(() => decodeChannelMessage(encoded));
      }
    } catch (error) {
      console.error(`channel flip fuzz failed, seed ${seed} (LOCKSTEP_SEED=${seed})`);
      throw error;
    }
  });

  it("seeded flips behind a resealed CRC: a ChannelError or a canonical frame, never a crash", () => {
    const seed = fuzzSeed(0x0b0d_f1e5);
    const prng = new Prng(seed);
    const frames = samples().map(([, message]) => encodeChannelMessage(message));
    let rejected = 0;
    try {
      for (let iteration = 0; iteration < 5_000; iteration++) {
        const encoded = Uint8Array.from(prng.pick(frames));
        const flips = 1 + prng.below(4);
        for (let flip = 0; flip < flips; flip++) {
          // Bodies only, so the header checks do not absorb every case.
          const at = 4 + prng.below(encoded.length - 8);
          encoded[at] = prng.chance(0.5) ? prng.u32() & 0xff : encoded[at]! ^ (1 << prng.below(8));
        }
        const mutated = reseal(encoded);
        let decoded: ChannelMessage;
        try {
          decoded = decodeChannelMessage(mutated);
        } catch (error) {
          if (!(error instanceof ChannelError)) throw error;
          rejected += 1;
          continue;
        }
        // What decodes is a frame this codec could have written, byte for byte.
        expect(encodeChannelMessage(decoded)).toEqual(mutated);
      }
    } catch (error) {
      console.error(`channel resealed fuzz failed, seed ${seed} (LOCKSTEP_SEED=${seed})`);
      throw error;
    }
    expect(rejected).toBeGreaterThan(0);
  });

  it("seeded random garbage is rejected", () => {
    const seed = fuzzSeed(0x6a5b_a6e0);
    const prng = new Prng(seed);
    try {
      for (let iteration = 0; iteration < 3_000; iteration++) {
        const garbage = prng.bytes(prng.below(64));
        if (prng.chance(0.7)) garbage.set([...CHANNEL_MAGIC, CHANNEL_VERSION].slice(0, garbage.length));
        channelErrorOf(() => decodeChannelMessage(prng.chance(0.5) && garbage.length > 8 ? reseal(garbage) : garbage));
      }
    } catch (error) {
      console.error(`channel garbage fuzz failed, seed ${seed} (LOCKSTEP_SEED=${seed})`);
      throw error;
    }
  });
});
