import { describe, expect, it } from "vitest";
import { CodecError } from "../../protocol/errors.js";
import {
  BodyReader,
  varintSize,
  varintSizeU64,
  writeVarint,
  writeVarintU64,
  zigzagDecode,
  zigzagEncode,
} from "../../protocol/varint.js";
import { I64_MAX, I64_MIN, U64_MAX } from "./helpers.js";

function encodeU64(value: bigint): Uint8Array {
  const out = new Uint8Array(varintSizeU64(value));
  expect(writeVarintU64(out, 0, value)).toBe(out.length);
  return out;
}

function reader(bytes: number[] | Uint8Array): BodyReader {
  const view = Uint8Array.from(bytes);
  return new BodyReader(view, 0, view.length, 100, 3);
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

describe("unsigned LEB128", () => {
  // Value, canonical encoding: pins the byte format, group by group.
  const golden: [bigint, string][] = [
    [0n, "00"],
    [1n, "01"],
    [127n, "7f"],
    [128n, "8001"],
    [300n, "ac02"],
    [16_383n, "ff7f"],
    [16_384n, "808001"],
    [0xffff_ffffn, "ffffffff0f"],
    [(1n << 49n) - 1n, "ffffffffffff7f"],
    [1n << 49n, "8080808080808001"],
    [(1n << 53n) + 1n, "8180808080808010"],
    [1n << 63n, "80808080808080808001"],
    [U64_MAX, "ffffffffffffffffff01"],
  ];

  it.each(golden)("encodes %s as %s and reads it back", (value, expected) => {
    const encoded = encodeU64(value);
    expect(hex(encoded)).toBe(expected);
    const r = reader(encoded);
    expect(r.u64("v")).toBe(value);
    expect(r.remaining).toBe(0);
  });

  it("sizes every power of two and its neighbours up to 2^64-1", () => {
    for (let bits = 0; bits <= 64; bits++) {
      for (const value of [(1n << BigInt(bits)) - 1n, 1n << BigInt(bits), (1n << BigInt(bits)) + 1n]) {
        if (value > U64_MAX) continue;
        const significant = value === 0n ? 1 : value.toString(2).length;
        expect(varintSizeU64(value), `value ${value}`).toBe(Math.ceil(significant / 7));
        expect(reader(encodeU64(value)).u64("v")).toBe(value);
      }
    }
  });

  it("agrees between the number and bigint paths", () => {
    for (const value of [0, 1, 127, 128, 2 ** 31, 2 ** 32 - 1, 2 ** 49 - 1, 2 ** 49, 2 ** 53 - 1]) {
      const out = new Uint8Array(varintSize(value));
      writeVarint(out, 0, value);
      expect(hex(out)).toBe(hex(encodeU64(BigInt(value))));
    }
  });

  it("rejects values outside u64 when encoding (programmer error)", () => {
    expect(() => varintSizeU64(-1n)).toThrow(/u64 out of range/);
    expect(() => varintSizeU64(U64_MAX + 1n)).toThrow(/u64 out of range/);
    expect(() => varintSize(-1)).toThrow(/varint value out of range/);
    expect(() => varintSize(2 ** 53)).toThrow(/varint value out of range/);
  });
});

describe("BodyReader rejects what no encoder writes", () => {
  const cases: [string, number[], (r: BodyReader) => unknown, RegExp][] = [
    ["a padded zero", [0x80, 0x00], (r) => r.u64("seq"), /seq is not minimally encoded/],
    ["a padded one", [0x81, 0x80, 0x00], (r) => r.u64("seq"), /seq is not minimally encoded/],
    ["a u64 over 2^64-1", [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], (r) => r.u64("icount"), /icount exceeds 2\^64-1/],
    ["an 11-byte u64", [...Array(10).fill(0x80), 0x01], (r) => r.u64("icount"), /icount exceeds 2\^64-1/],
    ["a u32 of 2^32", [0x80, 0x80, 0x80, 0x80, 0x10], (r) => r.u32("a"), /a exceeds 2\^32-1/],
    ["a 6-byte u32", [0x80, 0x80, 0x80, 0x80, 0x80, 0x01], (r) => r.u32("b"), /b exceeds 2\^32-1/],
    ["a varint cut by the end of the body", [0x80, 0x80], (r) => r.u64("seq"), /record ends inside seq/],
    ["a missing byte", [], (r) => r.u8("kind"), /record ends before kind/],
    ["data longer than the body", [1, 2], (r) => r.bytesCopy(3, "data"), /data length 3 exceeds the 2 bytes left/],
  ];

  it.each(cases)("%s", (_name, bytes, read, message) => {
    let caught: unknown;
    try {
      read(reader(bytes));
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(CodecError);
    const error = caught as CodecError;
    expect(error.code).toBe("LOG_MALFORMED");
    expect(error.offset).toBe(100);
    expect(error.recordCount).toBe(3);
    expect(error.message).toMatch(message);
  });

  it("reads u32 up to 2^32-1", () => {
    expect(reader([0xff, 0xff, 0xff, 0xff, 0x0f]).u32("a")).toBe(0xffff_ffff);
  });

  it("copies bytes so that records never alias their source", () => {
    const source = Uint8Array.of(9, 8, 7);
    const copy = new BodyReader(source, 0, 3, 0, 0).bytesCopy(3, "data");
    source[0] = 0;
    expect([...copy]).toEqual([9, 8, 7]);
  });
});

describe("zigzag", () => {
  const golden: [bigint, bigint][] = [
    [0n, 0n],
    [-1n, 1n],
    [1n, 2n],
    [-2n, 3n],
    [2147483647n, 4294967294n],
    [-2147483648n, 4294967295n],
    [I64_MAX, U64_MAX - 1n],
    [I64_MIN, U64_MAX],
  ];

  it.each(golden)("maps %s to %s and back", (signed, unsigned) => {
    expect(zigzagEncode(signed)).toBe(unsigned);
    expect(zigzagDecode(unsigned)).toBe(signed);
  });

  it("reads signed values through both the number and bigint paths", () => {
    for (const value of [0n, -1n, 1n, -(1n << 48n), (1n << 48n) - 1n, 1n << 48n, -(1n << 48n) - 1n, I64_MIN, I64_MAX]) {
      expect(reader(encodeU64(zigzagEncode(value))).i64("value"), `value ${value}`).toBe(value);
    }
  });

  it("rejects values outside i64 when encoding (programmer error)", () => {
    expect(() => zigzagEncode(I64_MAX + 1n)).toThrow(/i64 out of range/);
    expect(() => zigzagEncode(I64_MIN - 1n)).toThrow(/i64 out of range/);
    expect(() => zigzagEncode(1 as unknown as bigint)).toThrow(/i64 out of range/);
  });
});
