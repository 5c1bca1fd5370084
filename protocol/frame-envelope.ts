// The envelope every WebSocket frame of Lockstep shares (storage and logging channel):
//
//   magic (2 bytes) | version (u8) | type (u8) | body length (varint) | body | crc32 (u32 LE)
//
// The CRC covers every byte before it. Opening is strict and cheap first: magic over the bytes
// present, then version (another version may lay out the rest differently), then the length,
// checked against the limit at every byte before anything is allocated, then the exact size,
// then the checksum. Each codec maps the faults to its own stable error codes.

import { crc32 } from "node:zlib";
import { varintSize, writeVarint } from "./varint.js";

export const ENVELOPE_HEADER_BYTES = 4;
export const ENVELOPE_CHECKSUM_BYTES = 4;

export type EnvelopeFault = "BAD_MAGIC" | "TRUNCATED" | "BAD_VERSION" | "TOO_LARGE" | "MALFORMED" | "CHECKSUM";

export interface EnvelopeFormat {
  magic: Uint8Array;
  version: number;
  bodyBytesMax: number;
  fail(fault: EnvelopeFault, offset: number, detail: string): Error;
}

/** The bytes of one frame around a body of `bodyBytes` that `writeBody` writes at `pos`. */
export function sealFrame(
  format: EnvelopeFormat,
  type: number,
  bodyBytes: number,
  writeBody: (out: Uint8Array, pos: number) => number,
): Uint8Array {
  const out = new Uint8Array(ENVELOPE_HEADER_BYTES + varintSize(bodyBytes) + bodyBytes + ENVELOPE_CHECKSUM_BYTES);
  out.set(format.magic, 0);
  out[2] = format.version;
  out[3] = type;
  const pos = writeBody(out, writeVarint(out, ENVELOPE_HEADER_BYTES, bodyBytes));
  if (pos !== out.length - ENVELOPE_CHECKSUM_BYTES) throw new Error("assertion failed: frame size miscounted");
  writeU32LE(out, pos, crc32(out.subarray(0, pos)));
  return out;
}

/** Checks one whole frame's envelope; returns its type and where its body lies. */
export function openFrame(bytes: Uint8Array, format: EnvelopeFormat): { type: number; bodyStart: number; bodyEnd: number } {
  const magic = format.magic;
  const magicAvailable = Math.min(bytes.length, magic.length);
  for (let index = 0; index < magicAvailable; index++) {
    if (bytes[index] !== magic[index]) {
      throw format.fail("BAD_MAGIC", index, `bytes do not start with "${String.fromCharCode(...magic)}"`);
    }
  }
  if (bytes.length < ENVELOPE_HEADER_BYTES + 1) {
    const least = ENVELOPE_HEADER_BYTES + 1 + ENVELOPE_CHECKSUM_BYTES;
    throw format.fail("TRUNCATED", bytes.length, `${bytes.length} bytes, a frame has at least ${least}`);
  }
  const version = bytes[2]!;
  if (version !== format.version) {
    throw format.fail("BAD_VERSION", 2, `version ${version}, this peer speaks version ${format.version} only`);
  }
  const lengthBytesMax = varintSize(format.bodyBytesMax);
  let pos = ENVELOPE_HEADER_BYTES;
  let length = 0;
  for (let index = 0; ; index++) {
    if (pos >= bytes.length) throw format.fail("TRUNCATED", pos, "frame ends inside the body length");
    const byte = bytes[pos++]!;
    length += (byte & 0x7f) * 2 ** (7 * index);
    if (length > format.bodyBytesMax) {
      throw format.fail("TOO_LARGE", ENVELOPE_HEADER_BYTES, `body length ${length} exceeds limit ${format.bodyBytesMax}`);
    }
    if ((byte & 0x80) === 0) {
      if (byte === 0 && index > 0) throw format.fail("MALFORMED", ENVELOPE_HEADER_BYTES, "body length is not minimally encoded");
      break;
    }
    if (index + 1 === lengthBytesMax) {
      throw format.fail("TOO_LARGE", ENVELOPE_HEADER_BYTES, `body length prefix longer than ${lengthBytesMax} bytes`);
    }
  }
  const bodyStart = pos;
  const bodyEnd = bodyStart + length;
  const frameBytes = bodyEnd + ENVELOPE_CHECKSUM_BYTES;
  if (bytes.length < frameBytes) throw format.fail("TRUNCATED", bytes.length, `${bytes.length} of ${frameBytes} bytes`);
  if (bytes.length > frameBytes) throw format.fail("MALFORMED", frameBytes, `${bytes.length - frameBytes} bytes after the frame`);
  if (readU32LE(bytes, bodyEnd) !== crc32(bytes.subarray(0, bodyEnd))) throw format.fail("CHECKSUM", bodyEnd, "checksum mismatch");
  return { type: bytes[3]!, bodyStart, bodyEnd };
}

// Fixed-width little-endian u32 (the checksum). Not DataView: `bytes` may be a Buffer view.

function readU32LE(bytes: Uint8Array, pos: number): number {
  return (bytes[pos]! | (bytes[pos + 1]! << 8) | (bytes[pos + 2]! << 16) | (bytes[pos + 3]! << 24)) >>> 0;
}

function writeU32LE(out: Uint8Array, pos: number, value: number): void {
  out[pos] = value & 0xff;
  out[pos + 1] = (value >>> 8) & 0xff;
  out[pos + 2] = (value >>> 16) & 0xff;
  out[pos + 3] = value >>> 24;
}
