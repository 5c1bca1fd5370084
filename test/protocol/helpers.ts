// Shared fixtures for the protocol tests: sample records, a seeded PRNG, hand-built frames.

import { crc32 } from "node:zlib";
import { CodecError, type CodecErrorCode } from "../../protocol/errors.js";
import {
  ControlKind,
  EMPTY_BYTES,
  EventKind,
  InputKind,
  type LogHeader,
  type LogRecord,
  RecordKind,
  StopReason,
} from "../../protocol/records.js";

export const U64_MAX = (1n << 64n) - 1n;
export const I64_MIN = -(1n << 63n);
export const I64_MAX = (1n << 63n) - 1n;
export const U32_MAX = 0xffff_ffff;

export function header(overrides: Partial<LogHeader> = {}): LogHeader {
  return {
    version: 1,
    moduleHash: Uint8Array.from({ length: 32 }, (_, index) => index * 7 + 1),
    createdMs: 1_700_000_000_123,
    config: JSON.stringify({ guest: "kv", diskBlocks: 256, note: "ünïcødé ✓" }),
    ...overrides,
  };
}

export function record(fields: Partial<LogRecord> & Pick<LogRecord, "kind">): LogRecord {
  return { seq: 0n, icount: 0n, a: 0, b: 0, value: 0n, data: EMPTY_BYTES, ...fields };
}

export function bytes(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  for (let index = 0; index < length; index++) out[index] = (index * 31 + seed * 17) & 0xff;
  return out;
}

/** One record of every kind, as the host produces them, with dense seqs from `firstSeq`. */
export function sampleRecords(firstSeq = 0n): LogRecord[] {
  const records: Omit<LogRecord, "seq">[] = [
    { kind: RecordKind.Event, icount: 1_000n, a: EventKind.Timer, b: 0, value: 0n, data: EMPTY_BYTES },
    { kind: RecordKind.Event, icount: 2_345n, a: EventKind.NicAccept, b: 1, value: 8080n, data: EMPTY_BYTES },
    { kind: RecordKind.Event, icount: 9_999n, a: EventKind.NicData, b: 1, value: 16n, data: bytes(16) },
    { kind: RecordKind.Event, icount: 10_500n, a: EventKind.NicClosed, b: 1, value: 0n, data: EMPTY_BYTES },
    { kind: RecordKind.Event, icount: 12_000n, a: EventKind.NicTxCredit, b: 1, value: 65_536n, data: EMPTY_BYTES },
    { kind: RecordKind.Event, icount: 50_000n, a: EventKind.DiskDone, b: 7, value: 0n, data: bytes(4096, 2) },
    { kind: RecordKind.Input, icount: 50_001n, a: InputKind.ClockMonotonic, b: 0, value: 1_234_567_890n, data: EMPTY_BYTES },
    { kind: RecordKind.Input, icount: 50_002n, a: InputKind.ClockWall, b: 0, value: 1_700_000_000_123_456_789n, data: EMPTY_BYTES },
    { kind: RecordKind.Input, icount: 50_003n, a: InputKind.Random, b: 0, value: 0n, data: bytes(32, 3) },
    { kind: RecordKind.Input, icount: 50_004n, a: InputKind.Seed, b: 0, value: -42n, data: EMPTY_BYTES },
    { kind: RecordKind.Input, icount: 50_005n, a: InputKind.MemoryGrow, b: 0, value: -1n, data: EMPTY_BYTES },
    { kind: RecordKind.Digest, icount: 60_000n, a: 0, b: 0, value: 0n, data: bytes(32, 4) },
    { kind: RecordKind.Control, icount: 60_001n, a: ControlKind.Pause, b: 0, value: 250n, data: EMPTY_BYTES },
    { kind: RecordKind.Control, icount: 60_002n, a: ControlKind.Resume, b: 0, value: 0n, data: EMPTY_BYTES },
    { kind: RecordKind.End, icount: 70_000n, a: StopReason.Trap, b: 0, value: 1n, data: new TextEncoder().encode("unreachable ✗") },
  ];
  return records.map((fields, index) => ({ ...fields, seq: firstSeq + BigInt(index) }));
}

/** Same records with `seq` renumbered densely from `firstSeq`. */
export function renumber(records: LogRecord[], firstSeq = 0n): LogRecord[] {
  return records.map((r, index) => ({ ...r, seq: firstSeq + BigInt(index) }));
}

/** LEB128 of a small non-negative number, written independently of the codec. */
export function leb(value: number): number[] {
  const out: number[] = [];
  while (value >= 0x80) {
    out.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  out.push(value);
  return out;
}

/** A frame around an arbitrary body, with a correct length prefix and checksum. */
export function frameAround(body: number[], lengthPrefix: number[] = leb(body.length)): Uint8Array {
  const covered = Uint8Array.from([...lengthPrefix, ...body]);
  const out = new Uint8Array(covered.length + 4);
  out.set(covered);
  new DataView(out.buffer).setUint32(covered.length, crc32(covered), true);
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let pos = 0;
  for (const part of parts) {
    out.set(part, pos);
    pos += part.length;
  }
  return out;
}

/** Runs `fn` and returns the CodecError it throws; fails if it throws anything else or nothing. */
export function codecErrorOf(fn: () => unknown, code?: CodecErrorCode): CodecError {
  try {
    fn();
  } catch (error) {
    if (!(error instanceof CodecError)) throw new Error(`expected a CodecError, got ${String(error)}`, { cause: error });
    if (code !== undefined && error.code !== code) {
      throw new Error(`expected ${code}, got: ${error.message}`, { cause: error });
    }
    return error;
  }
  throw new Error(`expected a CodecError${code === undefined ? "" : ` ${code}`}, nothing was thrown`);
}

export async function codecErrorOfAsync(fn: () => Promise<unknown>, code?: CodecErrorCode): Promise<CodecError> {
  try {
    await fn();
  } catch (error) {
    if (!(error instanceof CodecError)) throw new Error(`expected a CodecError, got ${String(error)}`, { cause: error });
    if (code !== undefined && error.code !== code) {
      throw new Error(`expected ${code}, got: ${error.message}`, { cause: error });
    }
    return error;
  }
  throw new Error(`expected a CodecError${code === undefined ? "" : ` ${code}`}, nothing was thrown`);
}

export { Prng } from "../helpers/prng.js";

/** The seed for a fuzz run: LOCKSTEP_SEED if set (to replay a failure), else a fixed one. */
export function fuzzSeed(fallback: number): number {
  const fromEnv = process.env["LOCKSTEP_SEED"];
  return fromEnv === undefined ? fallback : Number(fromEnv) >>> 0;
}
