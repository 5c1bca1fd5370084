// The storage frame codec: exact bytes, round trips, and every kind of bad input rejected with
// its stable code before anything is allocated for it.

import { AssertionError } from "node:assert";
import { crc32 } from "node:zlib";
import { describe, expect, it } from "vitest";
import {
  BODY_BYTES_MAX,
  decodeFrame,
  encodeFrame,
  type Frame,
  FRAME_BYTES_MAX,
  FrameError,
  type FrameErrorCode,
  FrameType,
  IO_DATA_BYTES_MAX,
  Op,
  requestProblem,
  Status,
  STATUS_NAMES,
} from "../../protocol/storage-frames.js";

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

function errorOf(bytes: Uint8Array): FrameError {
  try {
    decodeFrame(bytes);
  } catch (error) {
    expect(error).toBeInstanceOf(FrameError);
    return error as FrameError;
  }
  throw new Error("decoded without an error");
}

function expectCode(bytes: Uint8Array, code: FrameErrorCode): FrameError {
  const error = errorOf(bytes);
  expect(error.code, error.message).toBe(code);
  expect(error.message).toContain(`(${code})`);
  return error;
}

/** A frame around `body` with a correct checksum, to reach the checks behind it. */
function frameAround(type: number, body: number[], version = 1): Uint8Array {
  const head = [0x4c, 0x53, version, type, ...leb(body.length)];
  const bytes = Uint8Array.from([...head, ...body, 0, 0, 0, 0]);
  const end = bytes.length - 4;
  new DataView(bytes.buffer).setUint32(end, crc32(bytes.subarray(0, end)), true);
  return bytes;
}

function leb(value: number): number[] {
  const out: number[] = [];
  do {
    out.push((value & 0x7f) | (value >= 0x80 ? 0x80 : 0));
    value = Math.floor(value / 0x80);
  } while (value > 0);
  return out;
}

const samples: Frame[] = [
  { type: FrameType.Hello, clientId: "host-a", instance: 2 ** 47 - 1, session: 7, token: "sécret" },
  { type: FrameType.Hello, clientId: "h", instance: 0, session: 0, token: "" },
  { type: FrameType.Welcome, serverId: "0123456789abcdef", inflightMax: 64, ioBlocksMax: 256, blockBytes: 4096 },
  { type: FrameType.Request, id: 1, op: Op.OpenDisk, vm: "kv", a: 1 << 24, b: 0, text: "", data: new Uint8Array(0) },
  { type: FrameType.Request, id: 0xffff_ffff, op: Op.Write, vm: "kv.1_A-b", a: 12, b: 2, text: "", data: new Uint8Array(8192).fill(7) },
  { type: FrameType.Request, id: 3, op: Op.TestAndSet, vm: "kv", a: Number.MAX_SAFE_INTEGER, b: 0, text: "host-b", data: new Uint8Array(0) },
  { type: FrameType.Request, id: 4, op: 250, vm: "kv", a: 0, b: 0, text: "", data: new Uint8Array(0) },
  { type: FrameType.Response, id: 9, status: Status.Ok, flags: 1, value: 3, text: "host-a", data: new Uint8Array(0) },
  { type: FrameType.Response, id: 10, status: Status.Ok, flags: 0, value: 0, text: "", data: new Uint8Array(IO_DATA_BYTES_MAX).fill(0xa5) },
  { type: FrameType.Response, id: 11, status: Status.IoError, flags: 0, value: 0, text: "write failed: EFBIG", data: new Uint8Array(0) },
  { type: FrameType.Error, status: Status.Unauthorized, message: "wrong token" },
];

describe("storage frames: encoding", () => {
  it("round-trips every frame type, data copied rather than aliased", () => {
    for (const frame of samples) {
      const bytes = encodeFrame(frame);
      expect(bytes.length).toBeLessThanOrEqual(FRAME_BYTES_MAX);
      const decoded = decodeFrame(bytes);
      // Data compared as bytes (a deep equal of 1 MiB element by element takes seconds).
      const { data: decodedData, ...decodedFields } = decoded as { data?: Uint8Array };
      const { data: frameData, ...frameFields } = frame as { data?: Uint8Array };
      expect(decodedFields).toEqual(frameFields);
      if (frameData !== undefined) {
        expect(decodedData).toBeInstanceOf(Uint8Array);
        expect(Buffer.compare(decodedData!, frameData)).toBe(0);
        bytes.fill(0);
        expect(Buffer.compare(decodedData!, frameData), "decoded data aliases the message").toBe(0);
      }
    }
  });

  it("lays a hello out byte for byte as docs/storage.md says", () => {
    const bytes = encodeFrame({ type: FrameType.Hello, clientId: "a", instance: 300, session: 1, token: "t" });
    //               magic  ver type len  clientId  instance session token   crc32
    expect(hex(bytes.subarray(0, -4))).toBe("4c53" + "01" + "01" + "07" + "0161" + "ac02" + "01" + "0174");
    expect(Buffer.from(bytes).readUInt32LE(bytes.length - 4)).toBe(crc32(bytes.subarray(0, -4)));
  });

  it("lays a request and a response out as documented", () => {
    const request = encodeFrame({ type: FrameType.Request, id: 5, op: Op.Read, vm: "vm", a: 128, b: 2, text: "", data: new Uint8Array(0) });
    expect(hex(request.subarray(0, -4))).toBe("4c53" + "01" + "03" + "0a" + "05" + "02" + "02766d" + "8001" + "02" + "00" + "00");
    const response = encodeFrame({ type: FrameType.Response, id: 5, status: Status.Ok, flags: 1, value: 2, text: "b", data: Uint8Array.of(9) });
    expect(hex(response.subarray(0, -4))).toBe("4c53" + "01" + "04" + "08" + "05" + "00" + "01" + "02" + "0162" + "0109");
  });

  it("refuses to encode out-of-range fields: a programmer error, not a frame", () => {
    const request = samples[3] as Extract<Frame, { type: FrameType.Request }>;
    expect(() => encodeFrame({ ...request, id: 2 ** 32 })).toThrow(AssertionError);
    expect(() => encodeFrame({ ...request, a: 2 ** 53 })).toThrow(AssertionError);
    expect(() => encodeFrame({ ...request, vm: "x".repeat(65) })).toThrow(AssertionError);
    expect(() => encodeFrame({ ...request, data: new Uint8Array(IO_DATA_BYTES_MAX + 1) })).toThrow(AssertionError);
    expect(() => encodeFrame({ type: FrameType.Error, status: Status.Ok, message: "" })).toThrow(AssertionError);
  });

  it("has a stable name for every status", () => {
    expect(Object.values(STATUS_NAMES)).toEqual([
      "OK", "BAD_REQUEST", "NO_DISK", "DISK_MISMATCH", "IO_ERROR", "BUSY", "UNKNOWN_OP", "BAD_FRAME",
      "BAD_VERSION", "UNAUTHORIZED", "TOO_LARGE", "PROTOCOL", "TOO_MANY_CONNECTIONS", "SHUTTING_DOWN", "HELLO_TIMEOUT",
    ]);
  });
});

describe("storage frames: bad bytes", () => {
  const good = encodeFrame(samples[5]!);

  it("garbage fails on its first byte", () => {
    const error = expectCode(Buffer.from("GET / HTTP/1.1\r\n"), "FRAME_BAD_MAGIC");
    expect(error.offset).toBe(0);
    expectCode(Uint8Array.of(0x4c, 0x00), "FRAME_BAD_MAGIC");
  });

  it("a frame cut anywhere is truncated, never decoded", () => {
    for (let length = 0; length < good.length; length++) {
      const code = errorOf(good.subarray(0, length)).code;
      expect(code, `cut at ${length}`).toBe("FRAME_TRUNCATED");
    }
  });

  it("another version is refused before its checksum is read", () => {
    const other = Uint8Array.from(good);
    other[2] = 2;
    expect(expectCode(other, "FRAME_BAD_VERSION").detail).toMatch(/version 2/);
    expectCode(Uint8Array.of(0x4c, 0x53, 0), "FRAME_TRUNCATED");
    expectCode(Uint8Array.of(0x4c, 0x53, 0, 1, 0), "FRAME_BAD_VERSION");
  });

  it("a huge length prefix is refused at the byte that makes it too large", () => {
    // About 2^35 in the length: a reader that trusted it would allocate or wait for 32 GiB.
    // The third byte already makes it 2^21-1, over the limit: refused there, before the rest.
    expect(expectCode(Uint8Array.of(0x4c, 0x53, 1, 3, 0xff, 0xff, 0xff), "FRAME_TOO_LARGE").detail).toMatch(/exceeds limit/);
    expect(expectCode(Uint8Array.of(0x4c, 0x53, 1, 3, 0xff, 0xff, 0xff, 0xff, 0x7f), "FRAME_TOO_LARGE").detail).toMatch(/exceeds limit/);
    // Zero groups that keep saying "more": refused once the prefix is longer than a limit needs.
    expect(expectCode(Uint8Array.of(0x4c, 0x53, 1, 3, 0x80, 0x80, 0x80, 0x80, 0x08), "FRAME_TOO_LARGE").detail).toMatch(/longer than 3 bytes/);
    expectCode(Uint8Array.of(0x4c, 0x53, 1, 3, ...leb(BODY_BYTES_MAX + 1)), "FRAME_TOO_LARGE");
    // Just at the limit is only truncated: the limit itself is allowed.
    expectCode(Uint8Array.of(0x4c, 0x53, 1, 3, ...leb(BODY_BYTES_MAX)), "FRAME_TRUNCATED");
    // A prefix that never ends.
    expectCode(Uint8Array.of(0x4c, 0x53, 1, 3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80), "FRAME_TOO_LARGE");
  });

  it("every flipped bit after the version is caught", () => {
    for (let index = 3; index < good.length; index++) {
      for (let bit = 0; bit < 8; bit++) {
        const bad = Uint8Array.from(good);
        bad[index]! ^= 1 << bit;
        const code = errorOf(bad).code;
        expect(["FRAME_CHECKSUM", "FRAME_TRUNCATED", "FRAME_MALFORMED", "FRAME_TOO_LARGE"], `byte ${index} bit ${bit}`).toContain(code);
      }
    }
  });

  it("trailing bytes, non-canonical varints, unknown types and statuses are malformed", () => {
    expectCode(Uint8Array.from([...good, 0]), "FRAME_MALFORMED");
    expectCode(frameAround(9, []), "FRAME_UNKNOWN_TYPE");
    // Request id 5 as 0x85 0x00: not minimally encoded.
    expectCode(frameAround(FrameType.Request, [0x85, 0x00, 2, 0, 0, 0, 0, 0]), "FRAME_MALFORMED");
    // Response with status 99.
    expect(expectCode(frameAround(FrameType.Response, [1, 99, 0, 0, 0, 0]), "FRAME_MALFORMED").detail).toMatch(/status 99/);
    // Error frame with status OK.
    expectCode(frameAround(FrameType.Error, [0, 0]), "FRAME_MALFORMED");
    // A string length past the body.
    expectCode(frameAround(FrameType.Hello, [50, 0x61]), "FRAME_MALFORMED");
    // Invalid UTF-8 in a string.
    expect(expectCode(frameAround(FrameType.Hello, [1, 0xff, 0, 0, 0]), "FRAME_MALFORMED").detail).toMatch(/UTF-8/);
    // A body with a byte left over.
    expectCode(frameAround(FrameType.Hello, [1, 0x61, 0, 0, 0, 0]), "FRAME_MALFORMED");
    // A 2^53 value in an 8-byte varint.
    expectCode(frameAround(FrameType.Hello, [1, 0x61, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0]), "FRAME_MALFORMED");
  });
});

describe("storage frames: request arguments", () => {
  const base = { vm: "kv", a: 0, b: 0, text: "", data: new Uint8Array(0) };

  it("accepts well-formed requests", () => {
    expect(requestProblem({ ...base, op: Op.OpenDisk, a: 16 })).toBeNull();
    expect(requestProblem({ ...base, op: Op.Read, a: 0, b: 256 })).toBeNull();
    expect(requestProblem({ ...base, op: Op.Write, a: 3, b: 1, data: new Uint8Array(4096) })).toBeNull();
    expect(requestProblem({ ...base, op: Op.TestAndSet, a: 1, text: "host-a" })).toBeNull();
    expect(requestProblem({ ...base, op: Op.ReadGeneration })).toBeNull();
  });

  it("names what is wrong", () => {
    expect(requestProblem({ ...base, vm: "../etc", op: Op.ReadGeneration })).toMatch(/vm id/);
    expect(requestProblem({ ...base, vm: "", op: Op.ReadGeneration })).toMatch(/vm id/);
    expect(requestProblem({ ...base, op: Op.OpenDisk, a: 0 })).toMatch(/disk blocks/);
    expect(requestProblem({ ...base, op: Op.Read, b: 0 })).toMatch(/block count 0/);
    expect(requestProblem({ ...base, op: Op.Read, b: 257 })).toMatch(/block count 257/);
    expect(requestProblem({ ...base, op: Op.Write, b: 2, data: new Uint8Array(4096) })).toMatch(/carries 8192/);
    expect(requestProblem({ ...base, op: Op.TestAndSet, a: 0, text: "x" })).toMatch(/generation/);
    expect(requestProblem({ ...base, op: Op.TestAndSet, a: 1, text: "" })).toMatch(/owner/);
    expect(requestProblem({ ...base, op: Op.TestAndSet, a: 1, text: "x".repeat(257) })).toMatch(/owner/);
    expect(requestProblem({ ...base, op: Op.ReadGeneration, a: 1 })).toMatch(/vm only/);
    expect(requestProblem({ ...base, op: 77 })).toMatch(/unknown op 77/);
  });
});
