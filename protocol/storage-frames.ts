// The binary frames of the storage protocol (docs/storage.md): what a host and the storage
// server say to each other over a WebSocket. Every WebSocket message is one binary frame:
//
//   magic "LS" | version (u8) | type (u8) | body length (varint) | body | crc32 (u32 LE)
//
// The CRC covers every byte before it. The version is checked before anything that could
// change in a later version (like the log header, protocol/codec.ts), and a length is checked
// against its limit before anything is allocated or awaited for it.
//
// Decoding is strict: a frame has exactly one encoding (canonical varints, no trailing bytes,
// unused fields zero), so that garbage is told apart from frames and golden tests are exact.
// Every decoding failure is a FrameError built by `frameError`, with a stable code.
// Encoding a frame whose fields are out of range is a programmer error: an assertion.

import assert from "node:assert/strict";
import { openFrame, sealFrame, type EnvelopeFormat } from "./frame-envelope.js";
import { varintSize, writeVarint } from "./varint.js";

/** Protocol version written by this codec and the only one it reads. */
export const STORAGE_VERSION = 1;
/** "LS": the first two bytes of every storage frame, in every version. */
export const STORAGE_MAGIC = Uint8Array.of(0x4c, 0x53);

export const BLOCK_BYTES = 4096;
/** Blocks per read or write request (1 MiB), the same bound as a guest's disk IO. */
export const IO_BLOCKS_MAX = 256;
export const IO_DATA_BYTES_MAX = IO_BLOCKS_MAX * BLOCK_BYTES;
/** A virtual disk's size bound (64 GiB), the same as `--disk-blocks`. */
export const DISK_BLOCKS_MAX = 1 << 24;

/** VM ids name files on the server: letters, digits, `.`, `_`, `-`; starting alphanumeric. */
export const VM_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const VM_ID_BYTES_MAX = 64;
export const CLIENT_ID_BYTES_MAX = 128;
export const TOKEN_BYTES_MAX = 256;
export const OWNER_BYTES_MAX = 256;
/** Request `text` (an owner) and response `text` (an owner, or an error message). */
export const TEXT_BYTES_MAX = 1024;
export const SERVER_ID_BYTES_MAX = 64;

/** Bytes before the body length: magic, version, type. */
const HEADER_FIXED_BYTES = 4;
const CHECKSUM_BYTES = 4;
/** Upper bound of a body without its data; asserted below against the largest layout. */
const BODY_FIELDS_BYTES_MAX = 2048;
export const BODY_BYTES_MAX = BODY_FIELDS_BYTES_MAX + IO_DATA_BYTES_MAX;
const LENGTH_BYTES_MAX = varintSize(BODY_BYTES_MAX);
/** Largest frame; the server's and client's WebSocket message limit (`maxPayload`). */
export const FRAME_BYTES_MAX = HEADER_FIXED_BYTES + LENGTH_BYTES_MAX + BODY_BYTES_MAX + CHECKSUM_BYTES;

/** Frame types. Values are part of the wire format: never renumber. */
export enum FrameType {
  /** Client → server, first on every connection. */
  Hello = 1,
  /** Server → client, the answer to an accepted hello. */
  Welcome = 2,
  Request = 3,
  Response = 4,
  /** Server → client: the connection is being closed, and why. */
  Error = 5,
}

/** Request operations. Values are part of the wire format: never renumber. */
export enum Op {
  /** Open (create sparse if new) the disk of `vm` with `a` blocks. */
  OpenDisk = 1,
  /** Read `b` blocks at block `a`. */
  Read = 2,
  /** Write `data` (`b` blocks) at block `a`. */
  Write = 3,
  /** Test-and-set register (`vm`, generation `a`) to owner `text`. */
  TestAndSet = 4,
  /** The highest generation set for `vm`, and its owner. */
  ReadGeneration = 5,
}

export const OP_NAMES: Readonly<Record<number, string>> = {
  [Op.OpenDisk]: "open",
  [Op.Read]: "read",
  [Op.Write]: "write",
  [Op.TestAndSet]: "test-and-set",
  [Op.ReadGeneration]: "read-generation",
};

/** Response and error statuses. Values are part of the wire format: never renumber. */
export enum Status {
  Ok = 0,
  /** An argument is out of range (block beyond the disk, count 0 or above 256, bad vm id...). */
  BadRequest = 1,
  /** The VM has no disk on this server: open it first. */
  NoDisk = 2,
  /** The disk exists with a different block count. */
  DiskMismatch = 3,
  /** The server's file system failed the operation (full, read-only, failing device). */
  IoError = 4,
  /** Too many requests in flight (per connection or server-wide); nothing was done. */
  Busy = 5,
  UnknownOp = 6,
  /** Bytes that are not a well-formed frame (magic, checksum, truncation, layout). */
  BadFrame = 7,
  BadVersion = 8,
  Unauthorized = 9,
  /** A frame or message larger than the limits. */
  TooLarge = 10,
  /** A well-formed frame at the wrong moment (request before hello, second hello...). */
  Protocol = 11,
  TooManyConnections = 12,
  ShuttingDown = 13,
  HelloTimeout = 14,
}

/** Stable names of the statuses, as logs and StorageError codes spell them. */
export const STATUS_NAMES = {
  [Status.Ok]: "OK",
  [Status.BadRequest]: "BAD_REQUEST",
  [Status.NoDisk]: "NO_DISK",
  [Status.DiskMismatch]: "DISK_MISMATCH",
  [Status.IoError]: "IO_ERROR",
  [Status.Busy]: "BUSY",
  [Status.UnknownOp]: "UNKNOWN_OP",
  [Status.BadFrame]: "BAD_FRAME",
  [Status.BadVersion]: "BAD_VERSION",
  [Status.Unauthorized]: "UNAUTHORIZED",
  [Status.TooLarge]: "TOO_LARGE",
  [Status.Protocol]: "PROTOCOL",
  [Status.TooManyConnections]: "TOO_MANY_CONNECTIONS",
  [Status.ShuttingDown]: "SHUTTING_DOWN",
  [Status.HelloTimeout]: "HELLO_TIMEOUT",
} as const satisfies Record<Status, string>;

export type StatusName = (typeof STATUS_NAMES)[Status];

/** Response flag bit 0: the test-and-set was won / the disk was created by this open. */
export const FLAG_WON = 1;
export const FLAG_CREATED = 1;

export interface HelloFrame {
  type: FrameType.Hello;
  /** Who the client is, for logs (a host id). */
  clientId: string;
  /** Random per client object; with `clientId` names the client across its reconnects. */
  instance: number;
  /** Counts the client's connections: a newer session fences (closes) older ones. */
  session: number;
  /** Empty when the client has none. */
  token: string;
}

export interface WelcomeFrame {
  type: FrameType.Welcome;
  /** Random per server process: a change tells a client the server restarted. */
  serverId: string;
  /** Requests the server accepts in flight on one connection; beyond it answers BUSY. */
  inflightMax: number;
  ioBlocksMax: number;
  blockBytes: number;
}

export interface RequestFrame {
  type: FrameType.Request;
  id: number;
  /** An Op; any u8 decodes, so that the server can answer UNKNOWN_OP to the right id. */
  op: number;
  vm: string;
  /** OpenDisk: blocks; Read/Write: first block; TestAndSet: generation; else 0. */
  a: number;
  /** Read/Write: block count; else 0. */
  b: number;
  /** TestAndSet: owner; else empty. */
  text: string;
  /** Write: the blocks; else empty. */
  data: Uint8Array;
}

export interface ResponseFrame {
  type: FrameType.Response;
  id: number;
  status: Status;
  /** FLAG_WON / FLAG_CREATED. */
  flags: number;
  /** OpenDisk: blocks; TestAndSet/ReadGeneration: a generation (0: none); else 0. */
  value: number;
  /** TestAndSet/ReadGeneration: an owner; an error status: the message; else empty. */
  text: string;
  /** Read: the blocks; else empty. */
  data: Uint8Array;
}

export interface ErrorFrame {
  type: FrameType.Error;
  status: Status;
  message: string;
}

export type Frame = HelloFrame | WelcomeFrame | RequestFrame | ResponseFrame | ErrorFrame;

// ---------------------------------------------------------------------------------------------
// Errors

/** Stable codes of decoding failures. Values are part of the interface: never rename. */
export type FrameErrorCode =
  | "FRAME_BAD_MAGIC"
  | "FRAME_BAD_VERSION"
  | "FRAME_TRUNCATED"
  | "FRAME_TOO_LARGE"
  | "FRAME_CHECKSUM"
  | "FRAME_UNKNOWN_TYPE"
  | "FRAME_MALFORMED";

const FRAME_SUMMARY: Record<FrameErrorCode, string> = {
  FRAME_BAD_MAGIC: "not a storage frame",
  FRAME_BAD_VERSION: "storage protocol version unsupported",
  FRAME_TRUNCATED: "storage frame truncated",
  FRAME_TOO_LARGE: "storage frame too large",
  FRAME_CHECKSUM: "storage frame corrupt",
  FRAME_UNKNOWN_TYPE: "storage frame type unknown",
  FRAME_MALFORMED: "storage frame malformed",
};

/** The status a peer answers a decoding failure with. */
export const FRAME_ERROR_STATUS: Record<FrameErrorCode, Status> = {
  FRAME_BAD_MAGIC: Status.BadFrame,
  FRAME_BAD_VERSION: Status.BadVersion,
  FRAME_TRUNCATED: Status.BadFrame,
  FRAME_TOO_LARGE: Status.TooLarge,
  FRAME_CHECKSUM: Status.BadFrame,
  FRAME_UNKNOWN_TYPE: Status.BadFrame,
  FRAME_MALFORMED: Status.BadFrame,
};

export class FrameError extends Error {
  override readonly name = "FrameError";

  constructor(
    readonly code: FrameErrorCode,
    /** Offset in the frame of the offending byte or field. */
    readonly offset: number,
    /** The message without summary and code. */
    readonly detail: string,
  ) {
    super(`${FRAME_SUMMARY[code]} at byte ${offset}: ${detail} (${code})`);
  }
}

/** The one place FrameErrors are made. Returns the error; the caller throws it. */
export function frameError(code: FrameErrorCode, offset: number, detail: string): FrameError {
  // One line, always: a detail never carries decoded strings, but guard anyway.
  return new FrameError(code, offset, detail.replace(/[\r\n]+/g, " "));
}

const STORAGE_FORMAT: EnvelopeFormat = {
  magic: STORAGE_MAGIC,
  version: STORAGE_VERSION,
  bodyBytesMax: BODY_BYTES_MAX,
  fail: (fault, offset, detail) => frameError(`FRAME_${fault}`, offset, detail),
};

export function isFrameError(error: unknown, code?: FrameErrorCode): error is FrameError {
  return error instanceof FrameError && (code === undefined || error.code === code);
}

// ---------------------------------------------------------------------------------------------
// Encoding

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const EMPTY = new Uint8Array(0);

/** Field encodings of one body, collected before the frame is sized. */
class BodyWriter {
  private readonly parts: (Uint8Array | number)[] = [];
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

  text(value: string, bytesMax: number, field: string): this {
    assert(typeof value === "string", `${field} must be a string`);
    return this.bytes(utf8Encoder.encode(value), bytesMax, field);
  }

  bytes(value: Uint8Array, bytesMax: number, field: string): this {
    assert(value instanceof Uint8Array, `${field} must be a Uint8Array`);
    if (value.length > bytesMax) assert.fail(`${field} is ${value.length} bytes, limit ${bytesMax}`);
    this.uint(value.length, bytesMax, `${field} length`);
    this.parts.push(value);
    this.size += value.length;
    return this;
  }

  writeTo(out: Uint8Array, pos: number): number {
    for (const part of this.parts) {
      if (typeof part === "number") {
        pos = writeVarint(out, pos, part);
      } else {
        out.set(part, pos);
        pos += part.length;
      }
    }
    return pos;
  }
}

const U32_MAX = 0xffff_ffff;

function bodyOf(frame: Frame): BodyWriter {
  const body = new BodyWriter();
  switch (frame.type) {
    case FrameType.Hello:
      return body
        .text(frame.clientId, CLIENT_ID_BYTES_MAX, "clientId")
        .uint(frame.instance, Number.MAX_SAFE_INTEGER, "instance")
        .uint(frame.session, U32_MAX, "session")
        .text(frame.token, TOKEN_BYTES_MAX, "token");
    case FrameType.Welcome:
      return body
        .text(frame.serverId, SERVER_ID_BYTES_MAX, "serverId")
        .uint(frame.inflightMax, U32_MAX, "inflightMax")
        .uint(frame.ioBlocksMax, U32_MAX, "ioBlocksMax")
        .uint(frame.blockBytes, U32_MAX, "blockBytes");
    case FrameType.Request:
      return body
        .uint(frame.id, U32_MAX, "id")
        .u8(frame.op, "op")
        .text(frame.vm, VM_ID_BYTES_MAX, "vm")
        .uint(frame.a, Number.MAX_SAFE_INTEGER, "a")
        .uint(frame.b, U32_MAX, "b")
        .text(frame.text, TEXT_BYTES_MAX, "text")
        .bytes(frame.data, IO_DATA_BYTES_MAX, "data");
    case FrameType.Response:
      assert(frame.status in STATUS_NAMES, `unknown status ${frame.status}`);
      return body
        .uint(frame.id, U32_MAX, "id")
        .u8(frame.status, "status")
        .u8(frame.flags, "flags")
        .uint(frame.value, Number.MAX_SAFE_INTEGER, "value")
        .text(frame.text, TEXT_BYTES_MAX, "text")
        .bytes(frame.data, IO_DATA_BYTES_MAX, "data");
    case FrameType.Error:
      assert(frame.status in STATUS_NAMES && frame.status !== Status.Ok, `bad error status ${frame.status}`);
      return body.u8(frame.status, "status").text(frame.message, TEXT_BYTES_MAX, "message");
  }
}

export function encodeFrame(frame: Frame): Uint8Array {
  const body = bodyOf(frame);
  assert(body.size <= BODY_BYTES_MAX, "body over its limit");
  return sealFrame(STORAGE_FORMAT, frame.type, body.size, (out, pos) => body.writeTo(out, pos));
}

/**
 * A message's text cut to fit TEXT_BYTES_MAX (and one line), for error statuses whose
 * message is built from outside input such as file-system error strings.
 */
export function boundedText(text: string, bytesMax = TEXT_BYTES_MAX): string {
  let line = text.replace(/[\r\n]+/g, " ");
  while (utf8Encoder.encode(line).length > bytesMax) line = line.slice(0, Math.floor(line.length * 0.9));
  return line;
}

// ---------------------------------------------------------------------------------------------
// Decoding

/** Reads the fields of a body that has passed its checksum; every failure is FRAME_MALFORMED. */
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

  /**
   * A canonical varint at most `max` (≤ 2^53-1). Eight bytes carry 56 bits; a value reaching
   * 2^53 is refused at the byte that makes it so, so the arithmetic stays exact in doubles.
   */
  uint(field: string, max: number): number {
    const start = this.pos;
    let value = 0;
    let scale = 1;
    for (let index = 0; index < 8; index++) {
      if (this.pos >= this.end) throw this.malformed(`body ends inside ${field}`);
      const byte = this.bytes[this.pos++]!;
      if (index === 7 && byte >= 0x10) throw this.malformed(`${field} exceeds 2^53-1`, start);
      value += (byte & 0x7f) * scale;
      scale *= 0x80;
      if ((byte & 0x80) === 0) {
        if (byte === 0 && index > 0) throw this.malformed(`${field} is not minimally encoded`, start);
        if (value > max) throw this.malformed(`${field} ${value} exceeds ${max}`, start);
        return value;
      }
    }
    throw this.malformed(`${field} exceeds 2^53-1`, start);
  }

  bytesCopy(field: string, bytesMax: number): Uint8Array {
    const length = this.uint(`${field} length`, bytesMax);
    if (length > this.remaining) throw this.malformed(`${field} length ${length} exceeds the ${this.remaining} bytes left`);
    if (length === 0) return EMPTY;
    // A copy, not a view: frames outlive the message buffer (ws may reuse or pool it).
    const copy = new Uint8Array(length);
    copy.set(this.bytes.subarray(this.pos, this.pos + length));
    this.pos += length;
    return copy;
  }

  text(field: string, bytesMax: number): string {
    const start = this.pos;
    const length = this.uint(`${field} length`, bytesMax);
    if (length > this.remaining) throw this.malformed(`${field} length ${length} exceeds the ${this.remaining} bytes left`);
    const bytes = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    try {
      return utf8Decoder.decode(bytes);
    } catch {
      throw this.malformed(`${field} is not valid UTF-8`, start);
    }
  }

  malformed(detail: string, offset = this.pos): FrameError {
    return frameError("FRAME_MALFORMED", offset, detail);
  }
}

/** Decodes one frame: `bytes` must hold exactly one frame (one WebSocket message). */
export function decodeFrame(bytes: Uint8Array): Frame {
  const { type, bodyStart, bodyEnd } = openFrame(bytes, STORAGE_FORMAT);
  const reader = new BodyReader(bytes, bodyStart, bodyEnd);
  let frame: Frame;
  switch (type) {
    case FrameType.Hello:
      frame = {
        type,
        clientId: reader.text("clientId", CLIENT_ID_BYTES_MAX),
        instance: reader.uint("instance", Number.MAX_SAFE_INTEGER),
        session: reader.uint("session", U32_MAX),
        token: reader.text("token", TOKEN_BYTES_MAX),
      };
      break;
    case FrameType.Welcome:
      frame = {
        type,
        serverId: reader.text("serverId", SERVER_ID_BYTES_MAX),
        inflightMax: reader.uint("inflightMax", U32_MAX),
        ioBlocksMax: reader.uint("ioBlocksMax", U32_MAX),
        blockBytes: reader.uint("blockBytes", U32_MAX),
      };
      break;
    case FrameType.Request:
      frame = {
        type,
        id: reader.uint("id", U32_MAX),
        op: reader.u8("op"),
        vm: reader.text("vm", VM_ID_BYTES_MAX),
        a: reader.uint("a", Number.MAX_SAFE_INTEGER),
        b: reader.uint("b", U32_MAX),
        text: reader.text("text", TEXT_BYTES_MAX),
        data: reader.bytesCopy("data", IO_DATA_BYTES_MAX),
      };
      break;
    case FrameType.Response: {
      const id = reader.uint("id", U32_MAX);
      const status = readStatus(reader);
      frame = {
        type,
        id,
        status,
        flags: reader.u8("flags"),
        value: reader.uint("value", Number.MAX_SAFE_INTEGER),
        text: reader.text("text", TEXT_BYTES_MAX),
        data: reader.bytesCopy("data", IO_DATA_BYTES_MAX),
      };
      break;
    }
    case FrameType.Error: {
      const status = readStatus(reader);
      if (status === Status.Ok) throw reader.malformed("an error frame with status OK", bodyStart);
      frame = { type, status, message: reader.text("message", TEXT_BYTES_MAX) };
      break;
    }
    default:
      throw frameError("FRAME_UNKNOWN_TYPE", 3, `frame type ${type}`);
  }
  if (reader.remaining !== 0) throw reader.malformed(`${reader.remaining} unexpected bytes at the end of the body`);
  return frame;
}

function readStatus(reader: BodyReader): Status {
  const at = reader.pos;
  const status = reader.u8("status");
  if (!(status in STATUS_NAMES)) throw reader.malformed(`unknown status ${status}`, at);
  return status as Status;
}

export function statusName(status: Status): StatusName {
  return STATUS_NAMES[status];
}

// The fields bound: the largest body (a request or response) without its data must fit
// BODY_FIELDS_BYTES_MAX, or BODY_BYTES_MAX would reject frames this codec writes.
assert(
  Math.max(
    varintSize(U32_MAX) + 1 + 1 + VM_ID_BYTES_MAX + 8 + varintSize(U32_MAX) + varintSize(TEXT_BYTES_MAX) + TEXT_BYTES_MAX,
    varintSize(U32_MAX) + 1 + 1 + 8 + varintSize(TEXT_BYTES_MAX) + TEXT_BYTES_MAX,
  ) +
    varintSize(IO_DATA_BYTES_MAX) <=
    BODY_FIELDS_BYTES_MAX,
  "BODY_FIELDS_BYTES_MAX too small",
);

// ---------------------------------------------------------------------------------------------
// Request arguments

/**
 * What is wrong with a request's arguments, or null if nothing is. The server answers
 * BAD_REQUEST with this text; the client checks the same before sending. The disk's own size
 * is checked by the server when the IO runs. Unused fields must be zero or empty.
 */
export function requestProblem(request: Omit<RequestFrame, "type" | "id">): string | null {
  const { op, vm, a, b, text, data } = request;
  if (!VM_ID_PATTERN.test(vm)) return `vm id must match ${VM_ID_PATTERN.source}`;
  const textBytes = utf8Encoder.encode(text).length;
  switch (op) {
    case Op.OpenDisk:
      if (!(a >= 1 && a <= DISK_BLOCKS_MAX)) return `disk blocks ${a} out of range 1..${DISK_BLOCKS_MAX}`;
      return b === 0 && textBytes === 0 && data.length === 0 ? null : "open takes blocks only";
    case Op.Read:
    case Op.Write: {
      if (!(b >= 1 && b <= IO_BLOCKS_MAX)) return `block count ${b} out of range 1..${IO_BLOCKS_MAX}`;
      if (a + b > DISK_BLOCKS_MAX) return `blocks [${a}, ${a + b}) beyond the largest disk`;
      if (textBytes !== 0) return `${OP_NAMES[op]} takes no text`;
      const dataBytes = op === Op.Read ? 0 : b * BLOCK_BYTES;
      return data.length === dataBytes ? null : `${OP_NAMES[op]} of ${b} blocks carries ${dataBytes} data bytes, not ${data.length}`;
    }
    case Op.TestAndSet:
      if (!(a >= 1)) return "generation must be at least 1";
      if (!(textBytes >= 1 && textBytes <= OWNER_BYTES_MAX)) return `owner must be 1..${OWNER_BYTES_MAX} bytes`;
      return b === 0 && data.length === 0 ? null : "test-and-set takes a generation and an owner only";
    case Op.ReadGeneration:
      return a === 0 && b === 0 && textBytes === 0 && data.length === 0 ? null : "read-generation takes a vm only";
    default:
      return `unknown op ${op}`;
  }
}
