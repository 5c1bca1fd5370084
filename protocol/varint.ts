// LEB128 varints and zigzag, the integer encodings of a record frame (docs/log-format.md).
//
// Unsigned LEB128: 7 bits per byte, least significant group first, high bit set on every
// byte but the last. Only the canonical (shortest) form is accepted, so every value has
// exactly one encoding and a record's bytes are a function of the record: golden tests and
// digests over log bytes depend on that.
//
// Most fields are small (kinds, connection ids, sequence numbers and instruction counts below
// 2^53), so the hot paths use doubles; BigInt arithmetic only runs for values above 2^49.

import assert from "node:assert/strict";
import { codecError } from "./errors.js";

export const U32_MAX = 0xffff_ffff;
export const U64_MAX = (1n << 64n) - 1n;
export const I64_MIN = -(1n << 63n);
export const I64_MAX = (1n << 63n) - 1n;

/** Longest canonical encodings. */
export const VARINT_U32_BYTES_MAX = 5;
export const VARINT_U64_BYTES_MAX = 10;

/** Values below 2^49 fit 7 groups of 7 bits and stay exact in a double through every step. */
const LOW_LIMIT_BIG = 1n << 49n;
const LOW_MASK_BIG = LOW_LIMIT_BIG - 1n;

/** Encoded size of a non-negative integer below 2^53. */
export function varintSize(value: number): number {
  if (!(Number.isSafeInteger(value) && value >= 0)) assert.fail(`varint value out of range: ${value}`);
  let size = 1;
  // At most 8 iterations: 2^53 needs 8 groups of 7 bits.
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    size += 1;
  }
  return size;
}

/** Writes a non-negative integer below 2^53 at `pos`; returns the position after it. */
export function writeVarint(out: Uint8Array, pos: number, value: number): number {
  while (value >= 0x80) {
    out[pos++] = (value % 0x80) | 0x80;
    value = Math.floor(value / 0x80);
  }
  out[pos++] = value;
  return pos;
}

export function varintSizeU64(value: bigint): number {
  if (!(value >= 0n && value <= U64_MAX)) assert.fail(`u64 out of range: ${value}`);
  if (value < LOW_LIMIT_BIG) return varintSize(Number(value));
  // Seven full groups for the low bits, then the rest.
  return 7 + varintSize(Number(value >> 49n));
}

export function writeVarintU64(out: Uint8Array, pos: number, value: bigint): number {
  if (value < LOW_LIMIT_BIG) return writeVarint(out, pos, Number(value));
  let low = Number(value & LOW_MASK_BIG);
  for (let group = 0; group < 7; group++) {
    out[pos++] = (low % 0x80) | 0x80;
    low = Math.floor(low / 0x80);
  }
  return writeVarint(out, pos, Number(value >> 49n));
}

/** Zigzag maps signed to unsigned so that small magnitudes of either sign stay short. */
export function zigzagEncode(value: bigint): bigint {
  if (!(typeof value === "bigint" && value >= I64_MIN && value <= I64_MAX)) assert.fail(`i64 out of range: ${value}`);
  return value >= 0n ? value << 1n : (-value << 1n) - 1n;
}

export function zigzagDecode(value: bigint): bigint {
  return (value & 1n) === 0n ? value >> 1n : -((value + 1n) >> 1n);
}

/**
 * Reads the fields of one record body, `bytes[pos, end)`. The body has passed its checksum,
 * so a failure here means a buggy or hostile encoder: every failure is LOG_MALFORMED, at the
 * offset of the frame that holds the body.
 */
export class BodyReader {
  constructor(
    private readonly bytes: Uint8Array,
    public pos: number,
    private readonly end: number,
    /** Stream offset of the frame, for errors. */
    private readonly frameOffset: number,
    /** Records decoded before this one, for errors. */
    private readonly recordCount: number,
  ) {}

  get remaining(): number {
    return this.end - this.pos;
  }

  u8(field: string): number {
    if (this.pos >= this.end) throw this.malformed(`record ends before ${field}`);
    return this.bytes[this.pos++]!;
  }

  u32(field: string): number {
    const value = this.unsigned(field, VARINT_U32_BYTES_MAX);
    if (typeof value === "bigint" || value > U32_MAX) {
      throw this.malformed(`${field} exceeds 2^32-1`);
    }
    return value;
  }

  u64(field: string): bigint {
    const value = this.unsigned(field, VARINT_U64_BYTES_MAX);
    return typeof value === "bigint" ? value : BigInt(value);
  }

  i64(field: string): bigint {
    const value = this.unsigned(field, VARINT_U64_BYTES_MAX);
    if (typeof value === "number") {
      // Exact in doubles: value < 2^49.
      return BigInt(value % 2 === 0 ? value / 2 : -(value + 1) / 2);
    }
    return zigzagDecode(value);
  }

  /** A copy, so that records never alias a caller's (possibly reused) chunk. */
  bytesCopy(length: number, field: string): Uint8Array {
    if (length > this.remaining) {
      throw this.malformed(`${field} length ${length} exceeds the ${this.remaining} bytes left in the record`);
    }
    // Not slice(): on a Buffer (what fs and ws hand out) slice() is a view, not a copy.
    const copy = new Uint8Array(length);
    copy.set(this.bytes.subarray(this.pos, this.pos + length));
    this.pos += length;
    return copy;
  }

  malformed(detail: string) {
    return codecError("LOG_MALFORMED", this.frameOffset, detail, this.recordCount);
  }

  /**
   * A canonical unsigned varint of at most `bytesMax` bytes. Returns a number below 2^49, or a
   * bigint at or above it (at most 2^64-1).
   */
  private unsigned(field: string, bytesMax: number): number | bigint {
    let low = 0;
    let high = 0;
    let scale = 1;
    for (let index = 0; index < bytesMax; index++) {
      if (this.pos >= this.end) throw this.malformed(`record ends inside ${field}`);
      const byte = this.bytes[this.pos++]!;
      if (index < 7) {
        low += (byte & 0x7f) * scale;
      } else {
        high += (byte & 0x7f) * scale;
      }
      scale = index === 6 ? 1 : scale * 0x80;
      if ((byte & 0x80) === 0) {
        if (byte === 0 && index > 0) throw this.malformed(`${field} is not minimally encoded`);
        if (index === VARINT_U64_BYTES_MAX - 1 && byte > 1) throw this.malformed(`${field} exceeds 2^64-1`);
        if (index < 7) return low;
        return BigInt(low) + (BigInt(high) << 49n);
      }
    }
    // The last allowed byte still said "more": the value needs more bits than the field has.
    throw this.malformed(`${field} exceeds ${bytesMax === VARINT_U32_BYTES_MAX ? "2^32-1" : "2^64-1"}`);
  }
}
