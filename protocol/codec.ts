// The binary codec of the execution log: one header, then record frames (docs/log-format.md).
//
// The same bytes serve a log file and the logging channel: a file is the header followed by
// frames; on the channel the header is the first message and every later message is a batch
// of whole frames. Each frame carries its own length and CRC32, so a reader can check and
// hand over each record as soon as its last byte arrives, and a torn tail (crash while
// writing) is told apart from corruption.
//
// Decoding never trusts a length before checking it against a limit: a hostile or corrupt
// length is rejected with LOG_TOO_LARGE before anything is allocated for it.

import assert from "node:assert/strict";
import { crc32 } from "node:zlib";
import { codecError, type CodecError } from "./errors.js";
import { type LogHeader, type LogRecord, RecordKind } from "./records.js";
import {
  BodyReader,
  I64_MAX,
  I64_MIN,
  U32_MAX,
  U64_MAX,
  VARINT_U32_BYTES_MAX,
  VARINT_U64_BYTES_MAX,
  varintSize,
  varintSizeU64,
  writeVarint,
  writeVarintU64,
  zigzagEncode,
} from "./varint.js";

export { CodecError, type CodecErrorCode, isCodecError } from "./errors.js";

/** Format version written by this codec and the only one it reads. */
export const LOG_VERSION = 1;

/** "LSTPLOG\0": identifies a log file; never changes across versions. */
export const LOG_MAGIC = Uint8Array.of(0x4c, 0x53, 0x54, 0x50, 0x4c, 0x4f, 0x47, 0x00);

export const MODULE_HASH_BYTES = 32;
/** The VM configuration JSON, UTF-8. Generous: a config is a few hundred bytes. */
export const CONFIG_BYTES_MAX = 64 * 1024;
/**
 * A record's payload (NIC bytes, disk read data, random bytes, trap message). Producers chunk
 * larger inputs; 16 MiB is 4096 disk blocks, far above any single device transfer.
 */
export const DATA_BYTES_MAX = 16 * 1024 * 1024;
export const CHECKSUM_BYTES = 4;

// Header layout (all fixed-width integers little-endian). Magic and version keep their
// offsets in every version, so that any reader can tell which version it is looking at.
const HEADER_MAGIC_OFFSET = 0;
const HEADER_VERSION_OFFSET = 8;
const HEADER_HASH_OFFSET = 10;
const HEADER_CREATED_OFFSET = 42;
const HEADER_CONFIG_LENGTH_OFFSET = 50;
const HEADER_CONFIG_OFFSET = 54;
/** Bytes before the config string. */
export const HEADER_FIXED_BYTES = HEADER_CONFIG_OFFSET;
export const HEADER_BYTES_MAX = HEADER_FIXED_BYTES + CONFIG_BYTES_MAX + CHECKSUM_BYTES;

/** Largest record body without its data: kind, seq, icount, a, b, value, data length. */
const BODY_FIELDS_BYTES_MAX =
  1 + VARINT_U64_BYTES_MAX * 2 + VARINT_U32_BYTES_MAX * 2 + VARINT_U64_BYTES_MAX + varintSize(DATA_BYTES_MAX);
/** Largest record body, the value a frame's length prefix is checked against. */
export const BODY_BYTES_MAX = BODY_FIELDS_BYTES_MAX + DATA_BYTES_MAX;
/** Largest frame: length prefix, body, checksum. */
export const FRAME_BYTES_MAX = varintSize(BODY_BYTES_MAX) + BODY_BYTES_MAX + CHECKSUM_BYTES;

const KNOWN_KINDS: ReadonlySet<number> = new Set([
  RecordKind.Event,
  RecordKind.Input,
  RecordKind.Digest,
  RecordKind.End,
  RecordKind.Control,
]);

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

// ---------------------------------------------------------------------------------------------
// Header

export interface DecodedHeader {
  header: LogHeader;
  /** Header bytes consumed; records start here. */
  bytesRead: number;
}

export function encodeHeader(header: LogHeader): Uint8Array {
  assert(header.version === LOG_VERSION, `this codec writes version ${LOG_VERSION}, not ${header.version}`);
  assert(header.moduleHash instanceof Uint8Array && header.moduleHash.length === MODULE_HASH_BYTES, "moduleHash must be 32 bytes");
  assert(Number.isSafeInteger(header.createdMs) && header.createdMs >= 0, `createdMs out of range: ${header.createdMs}`);
  const config = utf8Encoder.encode(header.config);
  assert(config.length <= CONFIG_BYTES_MAX, `config is ${config.length} bytes, limit ${CONFIG_BYTES_MAX}`);

  const out = new Uint8Array(HEADER_FIXED_BYTES + config.length + CHECKSUM_BYTES);
  out.set(LOG_MAGIC, HEADER_MAGIC_OFFSET);
  writeU16LE(out, HEADER_VERSION_OFFSET, header.version);
  out.set(header.moduleHash, HEADER_HASH_OFFSET);
  writeU32LE(out, HEADER_CREATED_OFFSET, header.createdMs % 2 ** 32);
  writeU32LE(out, HEADER_CREATED_OFFSET + 4, Math.floor(header.createdMs / 2 ** 32));
  writeU32LE(out, HEADER_CONFIG_LENGTH_OFFSET, config.length);
  out.set(config, HEADER_CONFIG_OFFSET);
  const checksumOffset = HEADER_CONFIG_OFFSET + config.length;
  writeU32LE(out, checksumOffset, crc32(out.subarray(0, checksumOffset)));
  return out;
}

/** Decodes the header at the start of `bytes`; throws LOG_TRUNCATED if `bytes` ends inside it. */
export function decodeHeader(bytes: Uint8Array): DecodedHeader {
  const result = tryDecodeHeader(bytes);
  if (typeof result === "number") {
    throw codecError("LOG_TRUNCATED", bytes.length, `header needs at least ${result} bytes, have ${bytes.length}`);
  }
  return result;
}

/**
 * For streaming readers: decodes the header if `bytes` holds all of it, or else returns how
 * many bytes to have before calling again (a lower bound until the config length is known).
 * Whatever can be checked in the bytes present is checked, so a file that is not a log fails
 * on its first bytes rather than after a long read.
 */
export function tryDecodeHeader(bytes: Uint8Array): DecodedHeader | number {
  const magicAvailable = Math.min(bytes.length, LOG_MAGIC.length);
  for (let index = 0; index < magicAvailable; index++) {
    if (bytes[HEADER_MAGIC_OFFSET + index] !== LOG_MAGIC[index]) {
      throw codecError("LOG_BAD_MAGIC", HEADER_MAGIC_OFFSET + index, 'bytes do not start with "LSTPLOG\\0"');
    }
  }
  if (bytes.length < HEADER_VERSION_OFFSET + 2) return HEADER_FIXED_BYTES + CHECKSUM_BYTES;

  // The version is checked before the checksum: a newer version may lay out (and checksum)
  // the rest of the header differently, so "unsupported version" is the only true statement.
  const version = readU16LE(bytes, HEADER_VERSION_OFFSET);
  if (version !== LOG_VERSION) {
    throw codecError(
      "LOG_BAD_VERSION",
      HEADER_VERSION_OFFSET,
      `version ${version}, this reader knows version ${LOG_VERSION} only`,
    );
  }
  if (bytes.length < HEADER_FIXED_BYTES) return HEADER_FIXED_BYTES + CHECKSUM_BYTES;

  const configBytes = readU32LE(bytes, HEADER_CONFIG_LENGTH_OFFSET);
  if (configBytes > CONFIG_BYTES_MAX) {
    throw codecError("LOG_TOO_LARGE", HEADER_CONFIG_LENGTH_OFFSET, `config length ${configBytes} exceeds ${CONFIG_BYTES_MAX}`);
  }
  const checksumOffset = HEADER_CONFIG_OFFSET + configBytes;
  const headerBytes = checksumOffset + CHECKSUM_BYTES;
  if (bytes.length < headerBytes) return headerBytes;

  if (readU32LE(bytes, checksumOffset) !== crc32(bytes.subarray(0, checksumOffset))) {
    throw codecError("LOG_CHECKSUM", checksumOffset, "header checksum mismatch");
  }
  const createdLow = readU32LE(bytes, HEADER_CREATED_OFFSET);
  const createdHigh = readU32LE(bytes, HEADER_CREATED_OFFSET + 4);
  if (createdHigh >= 2 ** 21) {
    throw codecError("LOG_MALFORMED", HEADER_CREATED_OFFSET, "createdMs exceeds 2^53-1");
  }
  let config: string;
  try {
    config = utf8Decoder.decode(bytes.subarray(HEADER_CONFIG_OFFSET, checksumOffset));
  } catch {
    throw codecError("LOG_MALFORMED", HEADER_CONFIG_OFFSET, "config is not valid UTF-8");
  }
  return {
    header: {
      version,
      moduleHash: copyOf(bytes.subarray(HEADER_HASH_OFFSET, HEADER_HASH_OFFSET + MODULE_HASH_BYTES)),
      createdMs: createdHigh * 2 ** 32 + createdLow,
      config,
    },
    bytesRead: headerBytes,
  };
}

// ---------------------------------------------------------------------------------------------
// Record frames: length (varint) | body | crc32 (u32 LE) over length and body.
// Body: kind (u8) | seq | icount | a | b | zigzag(value) | data length | data.

/** Encoded size of the record's frame; asserts the record is well formed. */
export function encodedRecordBytes(record: LogRecord): number {
  const body = bodyBytes(record, zigzagEncode(record.value));
  return varintSize(body) + body + CHECKSUM_BYTES;
}

export function encodeRecord(record: LogRecord): Uint8Array {
  const out = new Uint8Array(encodedRecordBytes(record));
  const end = writeRecord(out, 0, record);
  assert(end === out.length);
  return out;
}

/** A batch: the records' frames back to back, as one logging-channel message carries them. */
export function encodeRecords(records: readonly LogRecord[]): Uint8Array {
  let total = 0;
  for (const record of records) total += encodedRecordBytes(record);
  const out = new Uint8Array(total);
  let pos = 0;
  for (const record of records) pos = writeRecord(out, pos, record);
  assert(pos === total);
  return out;
}

/**
 * Writes one frame at `pos` (which must have `encodedRecordBytes(record)` bytes of room) and
 * returns the position after it. For writers that fill their own buffers.
 */
export function writeRecord(out: Uint8Array, pos: number, record: LogRecord): number {
  const zigzag = zigzagEncode(record.value);
  const body = bodyBytes(record, zigzag);
  assert(out.length - pos >= varintSize(body) + body + CHECKSUM_BYTES, "no room for the record frame");
  const frameStart = pos;
  pos = writeVarint(out, pos, body);
  const bodyStart = pos;
  out[pos++] = record.kind;
  pos = writeVarintU64(out, pos, record.seq);
  pos = writeVarintU64(out, pos, record.icount);
  pos = writeVarint(out, pos, record.a);
  pos = writeVarint(out, pos, record.b);
  pos = writeVarintU64(out, pos, zigzag);
  pos = writeVarint(out, pos, record.data.length);
  out.set(record.data, pos);
  pos += record.data.length;
  assert(pos - bodyStart === body, "record body size miscounted");
  writeU32LE(out, pos, crc32(out.subarray(frameStart, pos)));
  return pos + CHECKSUM_BYTES;
}

/** Size of the body; asserts every field is in range (a bad record is a programmer error). */
function bodyBytes(record: LogRecord, zigzag: bigint): number {
  // `if (...) assert.fail(...)` rather than assert(): this runs per record, and a template
  // message would be built (bigints formatted) on every call, not only on failure.
  if (!KNOWN_KINDS.has(record.kind)) assert.fail(`unknown record kind ${record.kind}`);
  if (!(typeof record.seq === "bigint" && record.seq >= 0n && record.seq <= U64_MAX)) assert.fail(`seq out of range: ${record.seq}`);
  if (!(typeof record.icount === "bigint" && record.icount >= 0n && record.icount <= U64_MAX)) {
    assert.fail(`icount out of range: ${record.icount}`);
  }
  if (!(Number.isInteger(record.a) && record.a >= 0 && record.a <= U32_MAX)) assert.fail(`a out of range: ${record.a}`);
  if (!(Number.isInteger(record.b) && record.b >= 0 && record.b <= U32_MAX)) assert.fail(`b out of range: ${record.b}`);
  if (!(record.value >= I64_MIN && record.value <= I64_MAX)) assert.fail(`value out of range: ${record.value}`);
  assert(record.data instanceof Uint8Array, "data must be a Uint8Array");
  // Producers bound their payloads (the NIC and disk chunk transfers); reaching this limit is
  // a bug in the producer, not something a reader should ever see.
  if (record.data.length > DATA_BYTES_MAX) assert.fail(`record data is ${record.data.length} bytes, limit ${DATA_BYTES_MAX}`);
  return (
    1 +
    varintSizeU64(record.seq) +
    varintSizeU64(record.icount) +
    varintSize(record.a) +
    varintSize(record.b) +
    varintSizeU64(zigzag) +
    varintSize(record.data.length) +
    record.data.length
  );
}

// ---------------------------------------------------------------------------------------------
// Incremental decoding

export interface RecordDecoderOptions {
  /**
   * Check that sequence numbers are dense and increasing, starting at this one; a gap means
   * lost records (LOG_BAD_SEQ). Omit to accept any sequence numbers.
   */
  expectSeq?: bigint;
  /** Stream offset of the first byte pushed (e.g. the header's size in a file), for errors. */
  offset?: number;
  /** Lowers the data limit for this stream (default and ceiling: DATA_BYTES_MAX). */
  dataBytesMax?: number;
}

// The decoder's states. A frame is read in two steps: its length prefix, a varint that may be
// split across chunks and is read byte by byte; then its body and checksum, whose size is now
// known, collected in one buffer (or read in place when a chunk holds all of it).
const STATE_LENGTH = 0;
const STATE_FRAME = 1;
/** An error was thrown; the stream cannot be resynchronized, so every later call rethrows it. */
const STATE_FAILED = 2;
type State = typeof STATE_LENGTH | typeof STATE_FRAME | typeof STATE_FAILED;

/**
 * Decodes a stream of record frames pushed in chunks split anywhere. Records are returned as
 * soon as their last byte arrives; their `data` never aliases a pushed chunk, so callers may
 * reuse chunk buffers.
 */
export class RecordDecoder {
  private state: State = STATE_LENGTH;
  private error: CodecError | null = null;

  private readonly dataBytesMax: number;
  private readonly bodyBytesMax: number;
  private readonly lengthBytesMax: number;
  private nextSeq: bigint | undefined;

  /** Stream offset of the next byte to be pushed. */
  private streamOffset: number;
  /** Stream offset of the frame being read. */
  private frameOffset: number;
  private decoded = 0;

  // STATE_LENGTH: the length prefix so far (raw bytes kept for the checksum).
  private readonly lengthRaw = new Uint8Array(VARINT_U32_BYTES_MAX);
  private lengthBytes = 0;
  private bodyLength = 0;

  // STATE_FRAME: body + checksum, collected here when split across chunks.
  private frame: Uint8Array | null = null;
  private frameFilled = 0;

  constructor(options: RecordDecoderOptions = {}) {
    const dataBytesMax = options.dataBytesMax ?? DATA_BYTES_MAX;
    assert(Number.isSafeInteger(dataBytesMax) && dataBytesMax >= 0 && dataBytesMax <= DATA_BYTES_MAX, "dataBytesMax out of range");
    const offset = options.offset ?? 0;
    assert(Number.isSafeInteger(offset) && offset >= 0, "offset out of range");
    assert(options.expectSeq === undefined || (options.expectSeq >= 0n && options.expectSeq <= U64_MAX), "expectSeq out of range");
    this.dataBytesMax = dataBytesMax;
    this.bodyBytesMax = BODY_FIELDS_BYTES_MAX + dataBytesMax;
    this.lengthBytesMax = varintSize(this.bodyBytesMax);
    this.nextSeq = options.expectSeq;
    this.streamOffset = offset;
    this.frameOffset = offset;
  }

  /** Complete records decoded so far. */
  get recordCount(): number {
    return this.decoded;
  }

  /** Stream offset just past the last complete frame: everything before it is good. */
  get goodOffset(): number {
    return this.frameOffset;
  }

  /**
   * Decodes the records `chunk` completes and appends them to `records` (a new array by
   * default), which it returns. Throws CodecError on bad bytes, and again on every later call;
   * `records` then holds the good records the chunk completed before the bad frame.
   */
  push(chunk: Uint8Array, records: LogRecord[] = []): LogRecord[] {
    if (this.error !== null) throw this.error;
    const chunkOffset = this.streamOffset;
    this.streamOffset += chunk.length;
    let pos = 0;
    try {
      // Bounded by chunk.length: every pass consumes at least one byte (a frame is never
      // shorter than its checksum).
      while (pos < chunk.length) {
        switch (this.state) {
          case STATE_LENGTH:
            pos = this.readLength(chunk, pos);
            break;
          case STATE_FRAME:
            pos = this.readFrame(chunk, pos, chunkOffset, records);
            break;
          case STATE_FAILED:
            assert.fail("unreachable: failed state with no error");
        }
      }
    } catch (error) {
      this.state = STATE_FAILED;
      this.error = error as CodecError;
      throw error;
    }
    return records;
  }

  /** Declares the end of the stream: throws LOG_TRUNCATED if it ended inside a frame. */
  finish(): void {
    if (this.error !== null) throw this.error;
    if (this.state === STATE_LENGTH && this.lengthBytes === 0) return;
    const have = this.streamOffset - this.frameOffset;
    const frameSize =
      this.state === STATE_FRAME ? `${have} of ${this.lengthBytes + this.bodyLength + CHECKSUM_BYTES} bytes` : `${have} bytes, inside the length`;
    this.state = STATE_FAILED;
    this.error = codecError(
      "LOG_TRUNCATED",
      this.frameOffset,
      `partial record (${frameSize}) after ${this.decoded} complete records`,
      this.decoded,
    );
    throw this.error;
  }

  private readLength(chunk: Uint8Array, pos: number): number {
    // frameOffset already points here: set by the constructor or at the previous frame's end.
    while (pos < chunk.length) {
      const byte = chunk[pos++]!;
      this.lengthRaw[this.lengthBytes] = byte;
      this.bodyLength += (byte & 0x7f) * 2 ** (7 * this.lengthBytes);
      this.lengthBytes += 1;
      // Checked on every byte: later bytes only add to the value, so fail before waiting.
      if (this.bodyLength > this.bodyBytesMax) {
        throw this.fail("LOG_TOO_LARGE", `record length ${this.bodyLength} exceeds limit ${this.bodyBytesMax}`);
      }
      if ((byte & 0x80) === 0) {
        if (byte === 0 && this.lengthBytes > 1) throw this.fail("LOG_MALFORMED", "record length is not minimally encoded");
        this.state = STATE_FRAME;
        return pos;
      }
      if (this.lengthBytes === this.lengthBytesMax) {
        throw this.fail("LOG_TOO_LARGE", `record length prefix longer than ${this.lengthBytesMax} bytes`);
      }
    }
    return pos;
  }

  private readFrame(chunk: Uint8Array, pos: number, chunkOffset: number, records: LogRecord[]): number {
    const frameBytes = this.bodyLength + CHECKSUM_BYTES;
    if (this.frameFilled === 0 && chunk.length - pos >= frameBytes) {
      // The common case on a channel: the whole frame is in this message; read it in place.
      records.push(this.decodeBody(chunk, pos, pos + this.bodyLength));
      pos += frameBytes;
    } else {
      // Allocated only now, after readLength checked the size against the limit.
      this.frame ??= new Uint8Array(frameBytes);
      const take = Math.min(frameBytes - this.frameFilled, chunk.length - pos);
      this.frame.set(chunk.subarray(pos, pos + take), this.frameFilled);
      this.frameFilled += take;
      pos += take;
      if (this.frameFilled < frameBytes) return pos;
      records.push(this.decodeBody(this.frame, 0, this.bodyLength));
    }
    this.state = STATE_LENGTH;
    this.frameOffset = chunkOffset + pos;
    this.lengthBytes = 0;
    this.bodyLength = 0;
    this.frame = null;
    this.frameFilled = 0;
    return pos;
  }

  /** Checks the frame's checksum, then parses `bytes[start, end)`, the body. */
  private decodeBody(bytes: Uint8Array, start: number, end: number): LogRecord {
    const expected = readU32LE(bytes, end);
    const actual = crc32(bytes.subarray(start, end), crc32(this.lengthRaw.subarray(0, this.lengthBytes)));
    if (actual !== expected) throw this.fail("LOG_CHECKSUM", "record checksum mismatch");

    const reader = new BodyReader(bytes, start, end, this.frameOffset, this.decoded);
    const kind = reader.u8("kind");
    if (!KNOWN_KINDS.has(kind)) throw reader.malformed(`unknown record kind ${kind}`);
    const seq = reader.u64("seq");
    const icount = reader.u64("icount");
    const a = reader.u32("a");
    const b = reader.u32("b");
    const value = reader.i64("value");
    const dataLength = reader.u32("data length");
    if (dataLength > this.dataBytesMax) {
      throw this.fail("LOG_TOO_LARGE", `record data length ${dataLength} exceeds limit ${this.dataBytesMax}`);
    }
    const data = reader.bytesCopy(dataLength, "data");
    if (reader.remaining !== 0) throw reader.malformed(`${reader.remaining} unexpected bytes after data`);

    if (this.nextSeq !== undefined) {
      if (seq !== this.nextSeq) {
        const what = seq > this.nextSeq ? "records lost" : "record duplicated or reordered";
        throw this.fail("LOG_BAD_SEQ", `expected seq ${this.nextSeq}, got ${seq} (${what})`);
      }
      this.nextSeq += 1n;
    }
    this.decoded += 1;
    return { kind: kind as RecordKind, seq, icount, a, b, value, data };
  }

  private fail(code: "LOG_TOO_LARGE" | "LOG_MALFORMED" | "LOG_CHECKSUM" | "LOG_BAD_SEQ", detail: string): CodecError {
    return codecError(code, this.frameOffset, detail, this.decoded);
  }
}

/** Decodes a complete batch (a channel message, a whole file's records). */
export function decodeRecords(bytes: Uint8Array, options: RecordDecoderOptions = {}): LogRecord[] {
  const decoder = new RecordDecoder(options);
  const records = decoder.push(bytes);
  decoder.finish();
  return records;
}

// ---------------------------------------------------------------------------------------------
// Fixed-width little-endian integers (header and checksums). Not DataView: `bytes` may be a
// Buffer view into a larger pool, and these keep offsets relative to the view.

/** A plain Uint8Array copy. Not slice(): on a Buffer, slice() is a view of the same memory. */
function copyOf(bytes: Uint8Array): Uint8Array {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy;
}

function readU16LE(bytes: Uint8Array, pos: number): number {
  return bytes[pos]! | (bytes[pos + 1]! << 8);
}

function readU32LE(bytes: Uint8Array, pos: number): number {
  return (bytes[pos]! | (bytes[pos + 1]! << 8) | (bytes[pos + 2]! << 16) | (bytes[pos + 3]! << 24)) >>> 0;
}

function writeU16LE(out: Uint8Array, pos: number, value: number): void {
  out[pos] = value & 0xff;
  out[pos + 1] = value >>> 8;
}

function writeU32LE(out: Uint8Array, pos: number, value: number): void {
  out[pos] = value & 0xff;
  out[pos + 1] = (value >>> 8) & 0xff;
  out[pos + 2] = (value >>> 16) & 0xff;
  out[pos + 3] = value >>> 24;
}
