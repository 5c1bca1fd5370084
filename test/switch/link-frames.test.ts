// The link frame codec: exact bytes, round trips of every frame, and every kind of bad input
// rejected with its stable code (never another exception, never a large allocation).

import { describe, expect, it } from "vitest";
import {
  decodeLinkFrame,
  decodeSwitchFrame,
  decodeVmFrame,
  encodeLinkFrame,
  type LinkFrame,
  LINK_DATA_BYTES_MAX,
  LINK_FRAME_BYTES_MAX,
  LINK_OFFSET_MAX,
  LinkFrameError,
  type LinkFrameErrorCode,
  LinkType,
} from "../../host/switch/link-frames.js";
import { Prng } from "../helpers/prng.js";

function errorOf(decode: () => unknown): LinkFrameError {
  try {
    decode();
  } catch (error) {
    expect(error).toBeInstanceOf(LinkFrameError);
    return error as LinkFrameError;
  }
  throw new Error("decoded without an error");
}

function expectCode(bytes: Uint8Array, code: LinkFrameErrorCode, decode: (bytes: Uint8Array) => unknown = decodeLinkFrame): LinkFrameError {
  const error = errorOf(() => decode(bytes));
  expect(error.code, error.message).toBe(code);
  expect(error.message).toContain(`(${code})`);
  expect(error.message).not.toMatch(/[\r\n]/);
  return error;
}

const hello = {
  vm: "kv",
  generation: 2,
  host: "host-2",
  token: "s3cret",
  listening: [6379, 80],
  streams: [{ stream: 7, rx: 100, tx: 2 ** 40, credit: 12 }],
};

const FRAMES: LinkFrame[] = [
  { type: LinkType.Hello, hello },
  { type: LinkType.Hello, hello: { vm: "kv", generation: 1, host: "h", listening: [], streams: [] } },
  { type: LinkType.Listen, vport: 65535 },
  { type: LinkType.VmData, stream: 0xffff_ffff, offset: LINK_OFFSET_MAX - 3, bytes: Uint8Array.of(1, 2, 3) },
  { type: LinkType.VmData, stream: 1, offset: 0, bytes: new Uint8Array(0) },
  { type: LinkType.Ack, stream: 3, offset: 12345 },
  { type: LinkType.Close, stream: 3, offset: 0 },
  { type: LinkType.Pause, stream: 9 },
  { type: LinkType.Resume, stream: 9 },
  { type: LinkType.Welcome, generation: 7 },
  { type: LinkType.Open, stream: 42, vport: 6379 },
  { type: LinkType.ClientData, stream: 42, offset: 2 ** 33, bytes: new Uint8Array(LINK_DATA_BYTES_MAX).fill(0xab) },
  { type: LinkType.Fin, stream: 42, offset: 17 },
  { type: LinkType.Credit, stream: 42, bytes: 0xffff_ffff },
  { type: LinkType.Gone, stream: 42 },
];

/** A frame with its DATA payload as hex: payloads come back as views, and deep equality of big arrays is slow. */
function comparable(frame: LinkFrame): unknown {
  return "bytes" in frame && frame.bytes instanceof Uint8Array ? { ...frame, bytes: Buffer.from(frame.bytes).toString("hex") } : frame;
}

describe("link frames", () => {
  it("round-trip every frame type", () => {
    for (const frame of FRAMES) expect(comparable(decodeLinkFrame(encodeLinkFrame(frame)))).toEqual(comparable(frame));
  });

  it("lay out fields little-endian after the type byte", () => {
    expect(encodeLinkFrame({ type: LinkType.Open, stream: 0x01020304, vport: 0x0506 }).toString("hex")).toBe("1204030201" + "0605");
    expect(encodeLinkFrame({ type: LinkType.Credit, stream: 1, bytes: 2 }).toString("hex")).toBe("15" + "01000000" + "02000000");
    const data = encodeLinkFrame({ type: LinkType.VmData, stream: 5, offset: 1, bytes: Uint8Array.of(0xaa) });
    expect(data.toString("hex")).toBe("03" + "05000000" + "000000000000f03f" + "aa");
    const welcome = encodeLinkFrame({ type: LinkType.Welcome, generation: 3 });
    expect(welcome[0]).toBe(0x11);
    expect(JSON.parse(welcome.subarray(1).toString("utf8"))).toEqual({ generation: 3 });
  });

  it("tell the two directions apart", () => {
    const open = encodeLinkFrame({ type: LinkType.Open, stream: 1, vport: 2 });
    expect(decodeSwitchFrame(open).type).toBe(LinkType.Open);
    expectCode(open, "LINK_WRONG_DIRECTION", decodeVmFrame);
    const ack = encodeLinkFrame({ type: LinkType.Ack, stream: 1, offset: 2 });
    expect(decodeVmFrame(ack).type).toBe(LinkType.Ack);
    expectCode(ack, "LINK_WRONG_DIRECTION", decodeSwitchFrame);
  });

  it("reject empty, unknown and truncated messages", () => {
    expectCode(new Uint8Array(0), "LINK_TRUNCATED");
    for (const type of [0x00, 0x08, 0x10, 0x17, 0xff]) expectCode(Uint8Array.of(type, 0, 0, 0, 0), "LINK_UNKNOWN_TYPE");
    for (const frame of FRAMES) {
      if (frame.type === LinkType.Hello || frame.type === LinkType.Welcome) continue;
      const bytes = encodeLinkFrame(frame);
      const fixed = "bytes" in frame && frame.bytes instanceof Uint8Array ? bytes.length - frame.bytes.length : bytes.length;
      for (let cut = 1; cut < fixed; cut++) expectCode(bytes.subarray(0, cut), "LINK_TRUNCATED");
    }
  });

  it("reject trailing bytes after fixed-size frames", () => {
    for (const frame of FRAMES) {
      if (frame.type === LinkType.VmData || frame.type === LinkType.ClientData || frame.type === LinkType.Hello || frame.type === LinkType.Welcome) continue;
      const bytes = encodeLinkFrame(frame);
      expectCode(Buffer.concat([bytes, Buffer.of(0)]), "LINK_MALFORMED");
    }
  });

  it("reject offsets that are not integers from 0 to 2^53 - 1", () => {
    for (const bad of [-1, 0.5, NaN, Infinity, -Infinity, 2 ** 53, 1e300]) {
      for (const type of [LinkType.Ack, LinkType.Close, LinkType.Fin, LinkType.VmData, LinkType.ClientData]) {
        const bytes = Buffer.alloc(13);
        bytes[0] = type;
        bytes.writeDoubleLE(bad, 5);
        expectCode(bytes, "LINK_MALFORMED");
      }
    }
    // A DATA frame whose last byte would lie past 2^53 - 1.
    const data = Buffer.alloc(15);
    data[0] = LinkType.VmData;
    data.writeDoubleLE(LINK_OFFSET_MAX - 1, 5);
    expectCode(data, "LINK_MALFORMED");
  });

  it("reject oversized DATA payloads and messages before looking further", () => {
    const data = Buffer.alloc(13 + LINK_DATA_BYTES_MAX + 1);
    data[0] = LinkType.ClientData;
    expectCode(data, "LINK_TOO_LARGE");
    const huge = Buffer.alloc(LINK_FRAME_BYTES_MAX + 1);
    huge[0] = LinkType.Hello;
    expectCode(huge, "LINK_TOO_LARGE");
    expect(() => encodeLinkFrame({ type: LinkType.VmData, stream: 1, offset: 0, bytes: new Uint8Array(LINK_DATA_BYTES_MAX + 1) })).toThrow(
      /assertion failed/,
    );
  });

  it("reject HELLO and WELCOME bodies that are not the schema's JSON", () => {
    const json = (type: number, value: unknown) => Buffer.concat([Buffer.of(type), Buffer.from(typeof value === "string" ? value : JSON.stringify(value))]);
    expectCode(Buffer.of(LinkType.Hello), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, "{not json"), "LINK_MALFORMED");
    expectCode(Buffer.of(LinkType.Hello, 0xc3, 0x28), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, [1, 2]), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, { ...hello, generation: -1 }), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, { ...hello, generation: 1.5 }), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, { ...hello, listening: [70000] }), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, { ...hello, streams: [{ stream: 1, rx: -1, tx: 0, credit: 0 }] }), "LINK_MALFORMED");
    expectCode(json(LinkType.Hello, { ...hello, extra: true }), "LINK_MALFORMED");
    const twice = expectCode(json(LinkType.Hello, { ...hello, streams: [hello.streams[0], hello.streams[0]] }), "LINK_MALFORMED");
    expect(twice.message).toContain("named twice");
    const tooMany = Array.from({ length: 4097 }, (_, i) => ({ stream: i, rx: 0, tx: 0, credit: 0 }));
    expectCode(json(LinkType.Hello, { ...hello, streams: tooMany }), "LINK_MALFORMED");
    expectCode(json(LinkType.Welcome, { generation: "2" }), "LINK_MALFORMED");
    // Peer text never reaches the message (it is one line of our own words).
    const sneaky = expectCode(json(LinkType.Hello, { ...hello, vm: 5, "x\ny": 1 }), "LINK_MALFORMED");
    expect(sneaky.message).not.toContain("x\ny");
  });

  it("answer random garbage with a LinkFrameError only", () => {
    const random = new Prng(20240611);
    const types = [1, 2, 3, 4, 5, 6, 7, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16];
    for (let i = 0; i < 5_000; i++) {
      const length = random.below(40);
      const bytes = Uint8Array.from({ length }, () => random.below(256));
      if (length > 0 && random.chance(0.7)) bytes[0] = random.pick(types);
      try {
        decodeLinkFrame(bytes);
      } catch (error) {
        if (!(error instanceof LinkFrameError)) throw error;
      }
    }
  });
});
