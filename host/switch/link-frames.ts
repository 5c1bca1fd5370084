// The frames of the switch's link (docs/switch.md): what a VM's primary and the switch say to
// each other over one WebSocket per VM. Every binary message is one frame,
//
//   type (u8) | fields, little-endian
//
// with no envelope of its own: WebSocket already frames and checksums (TCP) the bytes, and a
// link lives on one machine's network. An `offset` is a float64 holding an integer byte offset
// (0 ≤ offset < 2^53) of the stream in that direction.
//
// Decoding is strict (exact sizes, offsets that are integers, HELLO and WELCOME JSON checked
// against a schema) and cheap first: the size of the message is checked before anything else,
// so garbage costs nothing but the message ws already holds (bounded by LINK_FRAME_BYTES_MAX,
// the link's `maxPayload`). Every failure is a LinkFrameError with a stable code. Encoding a
// frame whose fields are out of range is a programmer error: an assertion.

import { z } from "zod";
import { assert } from "../errors.js";

/** Bytes of one DATA frame's payload, either way: larger writes are split. */
export const LINK_DATA_BYTES_MAX = 256 * 1024;
/** Streams per VM, and so entries of a HELLO's `streams`. */
export const LINK_STREAMS_MAX = 4096;
/** Virtual ports a guest listens on at once, and so entries of a HELLO's `listening`. */
export const LINK_VPORTS_MAX = 1024;
/**
 * A HELLO's JSON: 4096 streams at ~90 bytes each when every number has 16 digits is ~370 KiB,
 * plus the listening ports (~6 bytes each).
 */
export const LINK_HELLO_BYTES_MAX = 1024 * 1024;
/** The largest frame either way; the link's WebSocket `maxPayload`. */
export const LINK_FRAME_BYTES_MAX = 1 + LINK_HELLO_BYTES_MAX;
/** Offsets are exact integers in a float64. */
export const LINK_OFFSET_MAX = Number.MAX_SAFE_INTEGER;
export const LINK_TOKEN_CHARS_MAX = 256;
/** WebSocket close code for a link that broke the protocol (RFC 6455: policy violation). */
export const LINK_CLOSE_POLICY = 1008;

/** Frame types. Values are part of the wire format: never renumber. */
export enum LinkType {
  // VM → switch
  Hello = 0x01,
  Listen = 0x02,
  /** DATA from the VM: output bytes for the client. */
  VmData = 0x03,
  Ack = 0x04,
  Close = 0x05,
  Pause = 0x06,
  Resume = 0x07,
  // switch → VM
  Welcome = 0x11,
  Open = 0x12,
  /** DATA from the switch: the client's bytes. */
  ClientData = 0x13,
  Fin = 0x14,
  Credit = 0x15,
  Gone = 0x16,
}

/** A stream the VM knows, as a HELLO names it. */
export interface HelloStream {
  stream: number;
  /** Client bytes the guest has received. */
  rx: number;
  /** Output bytes the guest has produced. */
  tx: number;
  /** Transmit credit the guest has been given (the sum of the CREDITs it got). */
  credit: number;
}

export interface Hello {
  vm: string;
  generation: number;
  /** Who runs this primary (a host id), for logs and the status API. */
  host: string;
  token?: string;
  listening: number[];
  streams: HelloStream[];
}

export type VmFrame =
  | { type: LinkType.Hello; hello: Hello }
  | { type: LinkType.Listen; vport: number }
  | { type: LinkType.VmData; stream: number; offset: number; bytes: Uint8Array }
  | { type: LinkType.Ack; stream: number; offset: number }
  | { type: LinkType.Close; stream: number; offset: number }
  | { type: LinkType.Pause; stream: number }
  | { type: LinkType.Resume; stream: number };

export type SwitchFrame =
  | { type: LinkType.Welcome; generation: number }
  | { type: LinkType.Open; stream: number; vport: number }
  | { type: LinkType.ClientData; stream: number; offset: number; bytes: Uint8Array }
  | { type: LinkType.Fin; stream: number; offset: number }
  | { type: LinkType.Credit; stream: number; bytes: number }
  | { type: LinkType.Gone; stream: number };

export type LinkFrame = VmFrame | SwitchFrame;

const NAMES: Record<LinkType, string> = {
  [LinkType.Hello]: "HELLO",
  [LinkType.Listen]: "LISTEN",
  [LinkType.VmData]: "DATA",
  [LinkType.Ack]: "ACK",
  [LinkType.Close]: "CLOSE",
  [LinkType.Pause]: "PAUSE",
  [LinkType.Resume]: "RESUME",
  [LinkType.Welcome]: "WELCOME",
  [LinkType.Open]: "OPEN",
  [LinkType.ClientData]: "DATA",
  [LinkType.Fin]: "FIN",
  [LinkType.Credit]: "CREDIT",
  [LinkType.Gone]: "GONE",
};

export function linkTypeName(type: LinkType): string {
  return `${NAMES[type]} (0x${type.toString(16).padStart(2, "0")})`;
}

// ---------------------------------------------------------------------------------------------
// Errors

/** Stable codes of decoding failures. Values are part of the interface: never rename. */
export type LinkFrameErrorCode =
  /** The message ends before the frame's fixed fields (an empty message included). */
  | "LINK_TRUNCATED"
  /** The message, a DATA payload or a HELLO is over its limit. */
  | "LINK_TOO_LARGE"
  /** The type byte names no frame. */
  | "LINK_UNKNOWN_TYPE"
  /** A known frame that the other side sends (a VM sending OPEN...). */
  | "LINK_WRONG_DIRECTION"
  /** Wrong size, an offset that is not an integer in range, JSON that breaks the schema. */
  | "LINK_MALFORMED";

const SUMMARY: Record<LinkFrameErrorCode, string> = {
  LINK_TRUNCATED: "link frame truncated",
  LINK_TOO_LARGE: "link frame too large",
  LINK_UNKNOWN_TYPE: "link frame type unknown",
  LINK_WRONG_DIRECTION: "link frame in the wrong direction",
  LINK_MALFORMED: "link frame malformed",
};

export class LinkFrameError extends Error {
  override readonly name = "LinkFrameError";

  constructor(
    readonly code: LinkFrameErrorCode,
    /** The message without summary and code. */
    readonly detail: string,
  ) {
    super(`${SUMMARY[code]}: ${detail} (${code})`);
  }
}

/** The one place LinkFrameErrors are made; details are one line, built from numbers and fixed words. */
function fail(code: LinkFrameErrorCode, detail: string): LinkFrameError {
  return new LinkFrameError(code, detail.replace(/[\r\n]+/g, " "));
}

export function isLinkFrameError(error: unknown, code?: LinkFrameErrorCode): error is LinkFrameError {
  return error instanceof LinkFrameError && (code === undefined || error.code === code);
}

// ---------------------------------------------------------------------------------------------
// Layouts: the fixed fields after the type byte

type Layout = "json" | "vport" | "stream" | "streamOffset" | "streamOffsetBytes" | "streamVport" | "streamCount";

const LAYOUT: Record<LinkType, Layout> = {
  [LinkType.Hello]: "json",
  [LinkType.Listen]: "vport",
  [LinkType.VmData]: "streamOffsetBytes",
  [LinkType.Ack]: "streamOffset",
  [LinkType.Close]: "streamOffset",
  [LinkType.Pause]: "stream",
  [LinkType.Resume]: "stream",
  [LinkType.Welcome]: "json",
  [LinkType.Open]: "streamVport",
  [LinkType.ClientData]: "streamOffsetBytes",
  [LinkType.Fin]: "streamOffset",
  [LinkType.Credit]: "streamCount",
  [LinkType.Gone]: "stream",
};

/** Frame size after the type byte; DATA's is its header, the payload follows. */
const FIXED_BYTES: Record<Exclude<Layout, "json">, number> = {
  vport: 2,
  stream: 4,
  streamOffset: 12,
  streamOffsetBytes: 12,
  streamVport: 6,
  streamCount: 8,
};

const DATA_HEADER_BYTES = 1 + FIXED_BYTES.streamOffsetBytes;

// ---------------------------------------------------------------------------------------------
// Encoding

const utf8 = new TextEncoder();

function isU32(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff;
}

function isU16(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= 0xffff;
}

function isOffset(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

export function encodeLinkFrame(frame: LinkFrame): Buffer {
  const type = frame.type;
  switch (frame.type) {
    case LinkType.Hello:
    case LinkType.Welcome: {
      const body = frame.type === LinkType.Hello ? frame.hello : { generation: frame.generation };
      const schema = frame.type === LinkType.Hello ? HelloSchema : WelcomeSchema;
      assert(schema.safeParse(body).success, `a valid ${linkTypeName(type)}`);
      const json = utf8.encode(JSON.stringify(body));
      assert(json.length <= LINK_HELLO_BYTES_MAX, `${linkTypeName(type)} within ${LINK_HELLO_BYTES_MAX} bytes`);
      const out = Buffer.allocUnsafe(1 + json.length);
      out[0] = type;
      out.set(json, 1);
      return out;
    }
    case LinkType.Listen: {
      assert(isU16(frame.vport), "vport is a u16");
      const out = Buffer.allocUnsafe(3);
      out[0] = type;
      out.writeUInt16LE(frame.vport, 1);
      return out;
    }
    case LinkType.VmData:
    case LinkType.ClientData: {
      assert(frame.bytes.length <= LINK_DATA_BYTES_MAX, `DATA of at most ${LINK_DATA_BYTES_MAX} bytes (split larger writes)`);
      assert(isOffset(frame.offset) && frame.offset + frame.bytes.length <= LINK_OFFSET_MAX, "DATA offset in range");
      const out = Buffer.allocUnsafe(DATA_HEADER_BYTES + frame.bytes.length);
      writeStreamOffset(out, type, frame.stream, frame.offset);
      out.set(frame.bytes, DATA_HEADER_BYTES);
      return out;
    }
    case LinkType.Ack:
    case LinkType.Close:
    case LinkType.Fin: {
      const out = Buffer.allocUnsafe(1 + FIXED_BYTES.streamOffset);
      writeStreamOffset(out, type, frame.stream, frame.offset);
      return out;
    }
    case LinkType.Pause:
    case LinkType.Resume:
    case LinkType.Gone: {
      assert(isU32(frame.stream), "stream id is a u32");
      const out = Buffer.allocUnsafe(5);
      out[0] = type;
      out.writeUInt32LE(frame.stream, 1);
      return out;
    }
    case LinkType.Open: {
      assert(isU32(frame.stream) && isU16(frame.vport), "OPEN: stream u32, vport u16");
      const out = Buffer.allocUnsafe(7);
      out[0] = type;
      out.writeUInt32LE(frame.stream, 1);
      out.writeUInt16LE(frame.vport, 5);
      return out;
    }
    case LinkType.Credit: {
      assert(isU32(frame.stream) && isU32(frame.bytes), "CREDIT: stream u32, bytes u32");
      const out = Buffer.allocUnsafe(9);
      out[0] = type;
      out.writeUInt32LE(frame.stream, 1);
      out.writeUInt32LE(frame.bytes, 5);
      return out;
    }
  }
}

function writeStreamOffset(out: Buffer, type: LinkType, stream: number, offset: number): void {
  assert(isU32(stream), "stream id is a u32");
  assert(isOffset(offset), "offset is an integer from 0 to 2^53 - 1");
  out[0] = type;
  out.writeUInt32LE(stream, 1);
  out.writeDoubleLE(offset, 5);
}

// ---------------------------------------------------------------------------------------------
// Decoding

const u32 = z.number().int().min(0).max(0xffff_ffff);
const offset = z.number().int().min(0).max(LINK_OFFSET_MAX);

export const HelloSchema = z.strictObject({
  vm: z.string().min(1).max(64),
  generation: z.number().int().min(0).max(LINK_OFFSET_MAX),
  host: z.string().min(1).max(256),
  token: z.string().max(LINK_TOKEN_CHARS_MAX).optional(),
  listening: z.array(z.number().int().min(0).max(0xffff)).max(LINK_VPORTS_MAX),
  streams: z
    .array(z.strictObject({ stream: u32, rx: offset, tx: offset, credit: offset }))
    .max(LINK_STREAMS_MAX)
    .refine((streams) => new Set(streams.map((s) => s.stream)).size === streams.length, "a stream is named twice"),
});

const WelcomeSchema = z.strictObject({ generation: z.number().int().min(0).max(LINK_OFFSET_MAX) });

const SWITCH_TYPES = new Set<number>([LinkType.Welcome, LinkType.Open, LinkType.ClientData, LinkType.Fin, LinkType.Credit, LinkType.Gone]);

/** A frame a VM sent: what the switch reads. */
export function decodeVmFrame(bytes: Uint8Array): VmFrame {
  const frame = decodeLinkFrame(bytes);
  if (SWITCH_TYPES.has(frame.type)) throw fail("LINK_WRONG_DIRECTION", `${linkTypeName(frame.type)} is sent by the switch, not by a VM`);
  return frame as VmFrame;
}

/** A frame the switch sent: what a VM reads. */
export function decodeSwitchFrame(bytes: Uint8Array): SwitchFrame {
  const frame = decodeLinkFrame(bytes);
  if (!SWITCH_TYPES.has(frame.type)) throw fail("LINK_WRONG_DIRECTION", `${linkTypeName(frame.type)} is sent by a VM, not by the switch`);
  return frame as SwitchFrame;
}

/** Any frame. A DATA frame's `bytes` is a view into `bytes`, not a copy. */
export function decodeLinkFrame(bytes: Uint8Array): LinkFrame {
  if (bytes.length > LINK_FRAME_BYTES_MAX) throw fail("LINK_TOO_LARGE", `${bytes.length} bytes, the limit is ${LINK_FRAME_BYTES_MAX}`);
  if (bytes.length === 0) throw fail("LINK_TRUNCATED", "an empty message");
  const type = bytes[0]! as LinkType;
  const layout = LAYOUT[type] as Layout | undefined;
  if (layout === undefined) throw fail("LINK_UNKNOWN_TYPE", `type 0x${bytes[0]!.toString(16).padStart(2, "0")}`);
  const name = linkTypeName(type);
  if (layout === "json") return decodeJson(type as LinkType.Hello | LinkType.Welcome, bytes.subarray(1));
  const fixed = FIXED_BYTES[layout];
  if (bytes.length < 1 + fixed) throw fail("LINK_TRUNCATED", `${name} of ${bytes.length} bytes, it has ${1 + fixed}${layout === "streamOffsetBytes" ? " or more" : ""}`);
  if (layout !== "streamOffsetBytes" && bytes.length !== 1 + fixed) {
    throw fail("LINK_MALFORMED", `${name} of ${bytes.length} bytes, it has exactly ${1 + fixed}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (layout === "vport") return { type: type as LinkType.Listen, vport: view.getUint16(1, true) };
  const stream = view.getUint32(1, true);
  switch (layout) {
    case "stream":
      return { type: type as LinkType.Pause | LinkType.Resume | LinkType.Gone, stream };
    case "streamVport":
      return { type: LinkType.Open, stream, vport: view.getUint16(5, true) };
    case "streamCount":
      return { type: LinkType.Credit, stream, bytes: view.getUint32(5, true) };
    case "streamOffset":
      return { type: type as LinkType.Ack | LinkType.Close | LinkType.Fin, stream, offset: readOffset(view, name) };
    case "streamOffsetBytes": {
      const payload = bytes.length - DATA_HEADER_BYTES;
      if (payload > LINK_DATA_BYTES_MAX) throw fail("LINK_TOO_LARGE", `${name} of ${payload} payload bytes, the limit is ${LINK_DATA_BYTES_MAX}`);
      const at = readOffset(view, name);
      if (at + payload > LINK_OFFSET_MAX) throw fail("LINK_MALFORMED", `${name} ends past offset 2^53 - 1`);
      return { type: type as LinkType.VmData | LinkType.ClientData, stream, offset: at, bytes: bytes.subarray(DATA_HEADER_BYTES) };
    }
  }
}

function readOffset(view: DataView, name: string): number {
  const value = view.getFloat64(5, true);
  if (!isOffset(value)) throw fail("LINK_MALFORMED", `${name} offset ${Number.isFinite(value) ? value : String(value)} is not an integer from 0 to 2^53 - 1`);
  return value;
}

const utf8Strict = new TextDecoder("utf-8", { fatal: true });

function decodeJson(type: LinkType.Hello | LinkType.Welcome, body: Uint8Array): LinkFrame {
  const name = linkTypeName(type);
  if (body.length > LINK_HELLO_BYTES_MAX) throw fail("LINK_TOO_LARGE", `${name} of ${body.length} bytes, the limit is ${LINK_HELLO_BYTES_MAX}`);
  let value: unknown;
  try {
    value = JSON.parse(utf8Strict.decode(body));
  } catch {
    throw fail("LINK_MALFORMED", `${name} is not UTF-8 JSON`);
  }
  if (type === LinkType.Welcome) {
    const parsed = WelcomeSchema.safeParse(value);
    if (!parsed.success) throw fail("LINK_MALFORMED", `${name}: ${describe(parsed.error)}`);
    return { type, generation: parsed.data.generation };
  }
  const parsed = HelloSchema.safeParse(value);
  if (!parsed.success) throw fail("LINK_MALFORMED", `${name}: ${describe(parsed.error)}`);
  return { type, hello: parsed.data };
}

/** The first schema issue, with its path: field names are ours, never the peer's text. */
function describe(error: z.ZodError): string {
  const issue = error.issues[0];
  if (issue === undefined) return "invalid";
  const where = issue.path.length === 0 ? "(root)" : issue.path.map(String).join(".");
  return `${where}: ${issue.code}${issue.code === "custom" ? ` (${issue.message})` : ""}`;
}
