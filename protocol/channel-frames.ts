// The binary frames of the logging channel (docs/log-format.md "The logging channel"): the
// messages of host/ft/messages.ts as a primary and its backup exchange them over a WebSocket.
// Every WebSocket message is one binary frame, laid out like a storage frame:
//
//   magic "LC" | version (u8) | type (u8) | body length (varint) | body | crc32 (u32 LE)
//
// The CRC covers every byte before it. The version is checked before anything that could
// change in a later version, and every length is checked against its limit before anything
// is allocated for it. The records of an `entries` frame are the log's own record frames
// (protocol/codec.ts `writeRecord`, decoded by `decodeRecords`), so a batch costs on the wire
// what it costs in a log file, plus a few bytes of envelope.
//
// Decoding is strict: a frame has exactly one encoding (canonical varints, no trailing bytes,
// unused flag bits zero). Every decoding failure is a ChannelError built by `channelError`,
// with a stable code. Encoding a message whose fields are out of range is a programmer error:
// an assertion. The codec checks the frame, not the protocol: whether an entries batch is
// non-empty and dense is the FT core's check (BAD_BATCH), not this file's.

import assert from "node:assert/strict";
import type {
  AckMessage,
  ChannelMessage,
  EntriesMessage,
  HeartbeatMessage,
  HelloMessage,
  RenewMessage,
  Role,
} from "../host/ft/messages.js";
import { decodeRecords, encodedRecordBytes, writeRecord, FRAME_BYTES_MAX as RECORD_FRAME_BYTES_MAX } from "./codec.js";
import { CodecError } from "./errors.js";
import { openFrame, sealFrame, type EnvelopeFormat } from "./frame-envelope.js";
import type { LogRecord } from "./records.js";
import { OWNER_BYTES_MAX, TOKEN_BYTES_MAX, VM_ID_BYTES_MAX } from "./storage-frames.js";
import { U64_MAX, VARINT_U32_BYTES_MAX, VARINT_U64_BYTES_MAX, varintSize, varintSizeU64, writeVarint, writeVarintU64 } from "./varint.js";

export { OWNER_BYTES_MAX, TOKEN_BYTES_MAX, VM_ID_BYTES_MAX } from "./storage-frames.js";

/** Channel protocol version written by this codec and the only one it reads. */
export const CHANNEL_VERSION = 1;
/** "LC": the first two bytes of every channel frame, in every version. */
export const CHANNEL_MAGIC = Uint8Array.of(0x4c, 0x43);

/** Largest frame (32 MiB): the channel's WebSocket message limit (`maxPayload`). */
export const CHANNEL_FRAME_BYTES_MAX = 32 * 1024 * 1024;
/** Records in one entries frame. The FT default batch is 1024 (`batchRecordsMax`). */
export const CHANNEL_RECORDS_MAX = 65_536;

/** Bytes before the body length: magic, version, type. */
const HEADER_FIXED_BYTES = 4;
const CHECKSUM_BYTES = 4;
const LENGTH_BYTES_MAX = varintSize(CHANNEL_FRAME_BYTES_MAX);
/** Largest body: what is left of the frame limit after header, length and checksum. */
export const CHANNEL_BODY_BYTES_MAX = CHANNEL_FRAME_BYTES_MAX - HEADER_FIXED_BYTES - LENGTH_BYTES_MAX - CHECKSUM_BYTES;
/** vmId (length + bytes) and generation (≤ 2^53-1: 8 bytes). */
const ENVELOPE_BYTES_MAX = varintSize(VM_ID_BYTES_MAX) + VM_ID_BYTES_MAX + 8;
/**
 * Record-frame bytes an entries frame always has room for, whatever its vmId: a sender that
 * keeps the sum of `encodedRecordBytes` of a batch at or below this never trips the frame limit.
 */
export const CHANNEL_RECORD_BYTES_MAX = CHANNEL_BODY_BYTES_MAX - ENVELOPE_BYTES_MAX - varintSize(CHANNEL_RECORDS_MAX);

// The largest single record must fit one frame, or a producer could make a record no frame carries.
assert(RECORD_FRAME_BYTES_MAX <= CHANNEL_RECORD_BYTES_MAX, "CHANNEL_FRAME_BYTES_MAX too small for one record");

/** Frame types. Values are part of the wire format: never renumber. */
export enum ChannelFrameType {
  Hello = 1,
  Heartbeat = 2,
  Entries = 3,
  Ack = 4,
  /** A primary with several backups settles a generation and keeps this backup (host/ft/messages.ts). */
  Renew = 5,
}

/** Hello `role` byte. Values are part of the wire format: never renumber. */
const ROLE_CODES: Record<Role, number> = { primary: 1, backup: 2 };
const ROLES_BY_CODE: Readonly<Record<number, Role>> = { 1: "primary", 2: "backup" };

/** Ack flag bit 0: `resend`. Other bits must be zero. */
const ACK_FLAG_RESEND = 1;

// ---------------------------------------------------------------------------------------------
// Errors

/** Stable codes of decoding failures. Values are part of the interface: never rename. */
export type ChannelErrorCode =
  /** The bytes do not start with "LC". */
  | "CHANNEL_BAD_MAGIC"
  /** A protocol version this peer does not speak. */
  | "CHANNEL_BAD_VERSION"
  /** The frame's CRC (or the CRC of a record inside it) does not match its bytes. */
  | "CHANNEL_CHECKSUM"
  /** The message ends before the frame its header announces. */
  | "CHANNEL_TRUNCATED"
  /** A length or count over its limit; rejected before anything is allocated for it. */
  | "CHANNEL_TOO_LARGE"
  /** The checksum matched but the contents break the format. */
  | "CHANNEL_MALFORMED"
  /** A frame type this version does not define. */
  | "CHANNEL_UNKNOWN_TYPE";

const CHANNEL_SUMMARY: Record<ChannelErrorCode, string> = {
  CHANNEL_BAD_MAGIC: "not a channel frame",
  CHANNEL_BAD_VERSION: "channel protocol version unsupported",
  CHANNEL_CHECKSUM: "channel frame corrupt",
  CHANNEL_TRUNCATED: "channel frame truncated",
  CHANNEL_TOO_LARGE: "channel frame too large",
  CHANNEL_MALFORMED: "channel frame malformed",
  CHANNEL_UNKNOWN_TYPE: "channel frame type unknown",
};

export class ChannelError extends Error {
  override readonly name = "ChannelError";

  constructor(
    readonly code: ChannelErrorCode,
    /** Offset in the frame of the offending byte or field (for records: the record frame's first byte). */
    readonly offset: number,
    /** The message without summary and code. */
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`${CHANNEL_SUMMARY[code]} at byte ${offset}: ${detail} (${code})`, options);
  }
}

/** The one place ChannelErrors are made. Returns the error; the caller throws it. */
export function channelError(code: ChannelErrorCode, offset: number, detail: string, cause?: unknown): ChannelError {
  // One line, always: a detail never carries decoded strings, but guard anyway.
  return new ChannelError(code, offset, detail.replace(/[\r\n]+/g, " "), cause === undefined ? undefined : { cause });
}

const CHANNEL_FORMAT: EnvelopeFormat = {
  magic: CHANNEL_MAGIC,
  version: CHANNEL_VERSION,
  bodyBytesMax: CHANNEL_BODY_BYTES_MAX,
  fail: (fault, offset, detail) => channelError(`CHANNEL_${fault}`, offset, detail),
};

export function isChannelError(error: unknown, code?: ChannelErrorCode): error is ChannelError {
  return error instanceof ChannelError && (code === undefined || error.code === code);
}

// ---------------------------------------------------------------------------------------------
// Encoding

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Field encodings of one body, collected before the frame is sized. */
class BodyWriter {
  private readonly parts: (Uint8Array | number | bigint | readonly LogRecord[])[] = [];
  size = 0;

  u8(value: number, field: string): this {
    if (!(Number.isInteger(value) && value >= 0 && value <= 0xff)) assert.fail(`${field} out of range: ${value}`);
    this.parts.push(Uint8Array.of(value));
    this.size += 1;
    return this;
  }

  /** A varint of a non-negative integer at most `max` (≤ 2^53-1). */
  uint(value: number, max: number, field: string): this {
    if (!(Number.isSafeInteger(value) && value >= 0 && value <= max)) assert.fail(`${field} out of range: ${value}`);
    this.parts.push(value);
    this.size += varintSize(value);
    return this;
  }

  u64(value: bigint, field: string): this {
    if (!(typeof value === "bigint" && value >= 0n && value <= U64_MAX)) assert.fail(`${field} out of range: ${String(value)}`);
    this.parts.push(value);
    this.size += varintSizeU64(value);
    return this;
  }

  text(value: string, bytesMax: number, field: string): this {
    assert(typeof value === "string", `${field} must be a string`);
    const bytes = utf8Encoder.encode(value);
    if (bytes.length > bytesMax) assert.fail(`${field} is ${bytes.length} bytes, limit ${bytesMax}`);
    this.uint(bytes.length, bytesMax, `${field} length`);
    this.parts.push(bytes);
    this.size += bytes.length;
    return this;
  }

  /** Record frames back to back, written in place by the log codec (which asserts each record). */
  records(records: readonly LogRecord[]): this {
    for (const record of records) this.size += encodedRecordBytes(record);
    this.parts.push(records);
    return this;
  }

  writeTo(out: Uint8Array, pos: number): number {
    for (const part of this.parts) {
      if (typeof part === "number") {
        pos = writeVarint(out, pos, part);
      } else if (typeof part === "bigint") {
        pos = writeVarintU64(out, pos, part);
      } else if (part instanceof Uint8Array) {
        out.set(part, pos);
        pos += part.length;
      } else {
        for (const record of part) pos = writeRecord(out, pos, record);
      }
    }
    return pos;
  }
}

function envelope(message: ChannelMessage): BodyWriter {
  return new BodyWriter()
    .text(message.vmId, VM_ID_BYTES_MAX, "vmId")
    .uint(message.generation, Number.MAX_SAFE_INTEGER, "generation");
}

function bodyOf(message: ChannelMessage): { type: ChannelFrameType; body: BodyWriter } {
  switch (message.t) {
    case "hello": {
      const role = ROLE_CODES[message.role];
      assert(role !== undefined, `unknown role ${String(message.role)}`);
      const body = envelope(message).u8(role, "role");
      if (message.token === undefined) {
        body.u8(0, "token present");
      } else {
        body.u8(1, "token present").text(message.token, TOKEN_BYTES_MAX, "token");
      }
      return { type: ChannelFrameType.Hello, body };
    }
    case "heartbeat":
      return { type: ChannelFrameType.Heartbeat, body: envelope(message) };
    case "entries": {
      assert(Array.isArray(message.records), "records must be an array");
      const count = message.records.length;
      if (count > CHANNEL_RECORDS_MAX) assert.fail(`${count} records in one frame, limit ${CHANNEL_RECORDS_MAX}`);
      return {
        type: ChannelFrameType.Entries,
        body: envelope(message).uint(count, CHANNEL_RECORDS_MAX, "record count").records(message.records),
      };
    }
    case "renew":
      // The owner is a test-and-set register's owner: the storage server's limit applies.
      return { type: ChannelFrameType.Renew, body: envelope(message).text(message.owner, OWNER_BYTES_MAX, "owner") };
    case "ack":
      assert(typeof message.resend === "boolean", "resend must be a boolean");
      return {
        type: ChannelFrameType.Ack,
        body: envelope(message)
          .u64(message.ackSeq, "ackSeq")
          .u64(message.windowEndSeq, "windowEndSeq")
          .u64(message.replayedSeq, "replayedSeq")
          .u64(message.replayedIcount, "replayedIcount")
          .u8(message.resend ? ACK_FLAG_RESEND : 0, "flags"),
      };
    default:
      return assert.fail(`unknown channel message type ${String((message as { t: unknown }).t)}`);
  }
}

/** Encodes one message as one frame (one WebSocket binary message). */
export function encodeChannelMessage(message: ChannelMessage): Uint8Array {
  const { type, body } = bodyOf(message);
  // A batch over the limit is the sender's bug: it sizes batches (CHANNEL_RECORD_BYTES_MAX).
  if (body.size > CHANNEL_BODY_BYTES_MAX) assert.fail(`channel frame body is ${body.size} bytes, limit ${CHANNEL_BODY_BYTES_MAX}`);
  return sealFrame(CHANNEL_FORMAT, type, body.size, (out, pos) => body.writeTo(out, pos));
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** Reads the fields of a body that has passed its checksum; failures are CHANNEL_MALFORMED. */
class BodyReader {
  constructor(
    private readonly bytes: Uint8Array,
    public pos: number,
    private readonly end: number,
  ) {}

  get remaining(): number {
    return this.end - this.pos;
  }

  u8(field: string): number {
    if (this.pos >= this.end) throw this.malformed(`body ends before ${field}`);
    return this.bytes[this.pos++]!;
  }

  /** A canonical varint at most `max` (≤ 2^53-1); exact in doubles (refused at 2^53). */
  uint(field: string, max: number, code: ChannelErrorCode = "CHANNEL_MALFORMED"): number {
    const start = this.pos;
    let value = 0;
    let scale = 1;
    for (let index = 0; index < 8; index++) {
      if (this.pos >= this.end) throw this.malformed(`body ends inside ${field}`, start);
      const byte = this.bytes[this.pos++]!;
      if (index === 7 && byte >= 0x10) throw this.malformed(`${field} exceeds 2^53-1`, start);
      value += (byte & 0x7f) * scale;
      scale *= 0x80;
      if ((byte & 0x80) === 0) {
        if (byte === 0 && index > 0) throw this.malformed(`${field} is not minimally encoded`, start);
        if (value > max) throw channelError(code, start, `${field} ${value} exceeds ${max}`);
        return value;
      }
    }
    throw this.malformed(`${field} exceeds 2^53-1`, start);
  }

  /** A canonical varint of at most 10 bytes, at most 2^64-1. */
  u64(field: string): bigint {
    const start = this.pos;
    let value = 0n;
    for (let index = 0; index < VARINT_U64_BYTES_MAX; index++) {
      if (this.pos >= this.end) throw this.malformed(`body ends inside ${field}`, start);
      const byte = this.bytes[this.pos++]!;
      value |= BigInt(byte & 0x7f) << BigInt(7 * index);
      if ((byte & 0x80) === 0) {
        if (byte === 0 && index > 0) throw this.malformed(`${field} is not minimally encoded`, start);
        if (value > U64_MAX) throw this.malformed(`${field} exceeds 2^64-1`, start);
        return value;
      }
    }
    throw this.malformed(`${field} exceeds 2^64-1`, start);
  }

  text(field: string, bytesMax: number): string {
    const start = this.pos;
    const length = this.uint(`${field} length`, bytesMax);
    if (length > this.remaining) throw this.malformed(`${field} length ${length} exceeds the ${this.remaining} bytes left`, start);
    const bytes = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    try {
      return utf8Decoder.decode(bytes);
    } catch {
      throw this.malformed(`${field} is not valid UTF-8`, start);
    }
  }

  malformed(detail: string, offset = this.pos): ChannelError {
    return channelError("CHANNEL_MALFORMED", offset, detail);
  }
}

/** Decodes one frame: `bytes` must hold exactly one frame (one WebSocket message). */
export function decodeChannelMessage(bytes: Uint8Array): ChannelMessage {
  const { type, bodyStart, bodyEnd } = openFrame(bytes, CHANNEL_FORMAT);
  if (!(type >= ChannelFrameType.Hello && type <= ChannelFrameType.Renew)) {
    throw channelError("CHANNEL_UNKNOWN_TYPE", 3, `frame type ${type}`);
  }
  const reader = new BodyReader(bytes, bodyStart, bodyEnd);
  const vmId = reader.text("vmId", VM_ID_BYTES_MAX);
  const generation = reader.uint("generation", Number.MAX_SAFE_INTEGER);
  let message: ChannelMessage;
  switch (type as ChannelFrameType) {
    case ChannelFrameType.Hello: {
      const roleAt = reader.pos;
      const roleCode = reader.u8("role");
      const role = ROLES_BY_CODE[roleCode];
      if (role === undefined) throw reader.malformed(`unknown role ${roleCode}`, roleAt);
      const presentAt = reader.pos;
      const present = reader.u8("token present");
      const hello: HelloMessage = { t: "hello", vmId, generation, role };
      if (present === 1) {
        hello.token = reader.text("token", TOKEN_BYTES_MAX);
      } else if (present !== 0) {
        throw reader.malformed(`token present byte ${present}, not 0 or 1`, presentAt);
      }
      message = hello;
      break;
    }
    case ChannelFrameType.Heartbeat:
      message = { t: "heartbeat", vmId, generation } satisfies HeartbeatMessage;
      break;
    case ChannelFrameType.Entries: {
      const count = reader.uint("record count", CHANNEL_RECORDS_MAX, "CHANNEL_TOO_LARGE");
      message = { t: "entries", vmId, generation, records: decodeEntries(bytes, reader.pos, bodyEnd, count) } satisfies EntriesMessage;
      reader.pos = bodyEnd;
      break;
    }
    case ChannelFrameType.Ack: {
      const ack = {
        ackSeq: reader.u64("ackSeq"),
        windowEndSeq: reader.u64("windowEndSeq"),
        replayedSeq: reader.u64("replayedSeq"),
        replayedIcount: reader.u64("replayedIcount"),
      };
      const flagsAt = reader.pos;
      const flags = reader.u8("flags");
      if ((flags & ~ACK_FLAG_RESEND) !== 0) throw reader.malformed(`unknown ack flags 0x${flags.toString(16)}`, flagsAt);
      message = { t: "ack", vmId, generation, ...ack, resend: flags === ACK_FLAG_RESEND } satisfies AckMessage;
      break;
    }
    case ChannelFrameType.Renew:
      message = { t: "renew", vmId, generation, owner: reader.text("owner", OWNER_BYTES_MAX) } satisfies RenewMessage;
      break;
  }
  if (reader.remaining !== 0) throw reader.malformed(`${reader.remaining} unexpected bytes at the end of the body`);
  return message;
}

/**
 * The `count` record frames filling `bytes[start, end)`. The frames are counted first by their
 * length prefixes alone, so a body holding more (or fewer) frames than announced is rejected
 * before a single record is built; then the log codec decodes them (each frame's own CRC,
 * canonical fields, data limit). Sequence numbers are not checked here: the FT core does.
 */
function decodeEntries(bytes: Uint8Array, start: number, end: number, count: number): LogRecord[] {
  let pos = start;
  for (let frames = 0; pos < end; frames++) {
    if (frames === count) throw channelError("CHANNEL_MALFORMED", pos, `more than the ${count} records announced`);
    const frameStart = pos;
    let length = 0;
    for (let index = 0; ; index++) {
      if (index === VARINT_U32_BYTES_MAX) throw channelError("CHANNEL_MALFORMED", frameStart, "record length prefix too long");
      if (pos >= end) throw channelError("CHANNEL_MALFORMED", frameStart, "body ends inside a record length");
      const byte = bytes[pos++]!;
      length += (byte & 0x7f) * 2 ** (7 * index);
      if ((byte & 0x80) === 0) break;
    }
    if (length + CHECKSUM_BYTES > end - pos) {
      throw channelError("CHANNEL_MALFORMED", frameStart, `record of ${length} bytes overruns the body`);
    }
    pos += length + CHECKSUM_BYTES;
    if (pos === end && frames + 1 !== count) {
      throw channelError("CHANNEL_MALFORMED", frameStart, `${frames + 1} records, ${count} announced`);
    }
  }
  if (count > 0 && start === end) throw channelError("CHANNEL_MALFORMED", start, `no records, ${count} announced`);
  try {
    return decodeRecords(bytes.subarray(start, end));
  } catch (error) {
    if (!(error instanceof CodecError)) throw error;
    const code: ChannelErrorCode =
      error.code === "LOG_CHECKSUM" ? "CHANNEL_CHECKSUM" : error.code === "LOG_TOO_LARGE" ? "CHANNEL_TOO_LARGE" : "CHANNEL_MALFORMED";
    throw channelError(code, start + error.offset, `record ${error.recordCount}: ${error.detail} (${error.code})`, error);
  }
}
