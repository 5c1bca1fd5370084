// Bad peers: raw bytes fed to a real server. Each bad connection gets an error frame, a close
// and one JSON log line naming the problem; the server keeps serving everyone else.

import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  decodeFrame,
  encodeFrame,
  FRAME_BYTES_MAX,
  FrameType,
  Op,
  type ResponseFrame,
  Status,
} from "../../protocol/storage-frames.js";
import type { StorageClient } from "../../host/storage/client.js";
import { isStorageError } from "../../host/storage/errors.js";
import { client, expectStructuredLogs, killAll, pattern, RawPeer, StorageProcess, tempDir } from "./helpers.js";

const TOKEN = "correct horse";
let server: StorageProcess;
let url: string;
/** Connected before any bad peer, used after each: it must never notice them. */
let bystander: StorageClient;

beforeAll(async () => {
  ({ server, url } = await StorageProcess.start({
    dir: tempDir("hostile"),
    token: TOKEN,
    args: ["--connections-max", "6", "--inflight-max", "4", "--hello-timeout-ms", "300"],
  }));
  bystander = await client(url, { clientId: "bystander", token: TOKEN });
  await bystander.openDisk("kv", 64);
  await bystander.write("kv", 0, pattern(42));
});

afterAll(async () => {
  await bystander.close();
  const exit = await server.kill("SIGTERM");
  await killAll();
  expect(exit.code).toBe(0);
  expectStructuredLogs(server);
});

/** The next rejection logged after this point, for the connection that caused it. */
function nextRejection(code: string) {
  const seen = server.logs.length;
  return server.waitForLog((line) => server.logs.indexOf(line) >= seen && line.msg === "connection rejected" && line.code === code);
}

/** The bystander still reads what it wrote. */
async function stillServing(): Promise<void> {
  expect(Buffer.compare(await bystander.read("kv", 0, 1), pattern(42))).toBe(0);
}

async function expectRejected(peer: RawPeer, status: Status, closeCode: number): Promise<string> {
  const error = await peer.frame();
  expect(error.type).toBe(FrameType.Error);
  if (error.type !== FrameType.Error) throw new Error("unreachable");
  expect(error.status).toBe(status);
  expect((await peer.closed).code).toBe(closeCode);
  return error.message;
}

describe("bad bytes and bad peers", () => {
  it("garbage bytes: BAD_FRAME, closed, logged", async () => {
    const logged = nextRejection("FRAME_BAD_MAGIC");
    const peer = await RawPeer.connect(url);
    peer.send(Buffer.from("\x00\x01garbage, not a frame at all"));
    expect(await expectRejected(peer, Status.BadFrame, 1002)).toMatch(/FRAME_BAD_MAGIC/);
    expect(await logged).toMatchObject({ level: "warn", bytes: 29, detail: 'bytes do not start with "LS"' });
    await stillServing();
  });

  it("a truncated frame: BAD_FRAME (FRAME_TRUNCATED)", async () => {
    const peer = await RawPeer.hello(url, { token: TOKEN });
    const logged = nextRejection("FRAME_TRUNCATED");
    const frame = encodeFrame({ type: FrameType.Request, id: 1, op: Op.Write, vm: "kv", a: 0, b: 1, text: "", data: pattern(1) });
    peer.send(frame.subarray(0, frame.length - 100));
    expect(await expectRejected(peer, Status.BadFrame, 1002)).toMatch(/FRAME_TRUNCATED/);
    expect((await logged).client).toBe("raw");
    // The truncated write never ran.
    expect(Buffer.compare(await bystander.read("kv", 0, 1), pattern(42))).toBe(0);
    await stillServing();
  });

  it("a corrupted frame: BAD_FRAME (FRAME_CHECKSUM)", async () => {
    const peer = await RawPeer.hello(url, { token: TOKEN });
    const logged = nextRejection("FRAME_CHECKSUM");
    const frame = encodeFrame({ type: FrameType.Request, id: 1, op: Op.Write, vm: "kv", a: 0, b: 1, text: "", data: pattern(1) });
    frame[frame.length - 10]! ^= 0x01;
    peer.send(frame);
    expect(await expectRejected(peer, Status.BadFrame, 1002)).toMatch(/FRAME_CHECKSUM/);
    await logged;
    await stillServing();
  });

  it("a huge length prefix: TOO_LARGE, refused before anything is waited for", async () => {
    const peer = await RawPeer.connect(url);
    const logged = nextRejection("FRAME_TOO_LARGE");
    peer.send(Uint8Array.of(0x4c, 0x53, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f));
    expect(await expectRejected(peer, Status.TooLarge, 1009)).toMatch(/exceeds limit/);
    expect(await logged).toMatchObject({ bytes: 9 });
    await stillServing();
  });

  it("a message over the frame limit is cut off by the WebSocket layer, logged", async () => {
    const peer = await RawPeer.connect(url);
    const logged = server.waitForLog((line) => line.msg === "connection rejected" && line.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH");
    peer.send(new Uint8Array(FRAME_BYTES_MAX + 1));
    expect((await peer.closed).code).toBe(1009);
    expect((await logged).detail).toMatch(/Max payload size exceeded/);
    await stillServing();
  });

  it("a wrong token: UNAUTHORIZED, and the client library gives up for good", async () => {
    const peer = await RawPeer.connect(url);
    const logged = nextRejection("UNAUTHORIZED");
    peer.send(encodeFrame({ type: FrameType.Hello, clientId: "intruder", instance: 1, session: 1, token: "guess" }));
    expect(await expectRejected(peer, Status.Unauthorized, 1008)).toBe("wrong token");
    const line = await logged;
    expect(line.client).toBe("intruder");
    expect(JSON.stringify(server.logs)).not.toContain("guess");

    const error = await client(url, { clientId: "wrong", token: "nope" }).catch((e: unknown) => e);
    expect(isStorageError(error, "UNAUTHORIZED"), String(error)).toBe(true);
    expect((error as { retryable: boolean }).retryable).toBe(false);
    await stillServing();
  });

  it("another protocol version: BAD_VERSION", async () => {
    const peer = await RawPeer.connect(url);
    const hello = encodeFrame({ type: FrameType.Hello, clientId: "future", instance: 1, session: 1, token: TOKEN });
    hello[2] = 2;
    const logged = nextRejection("FRAME_BAD_VERSION");
    peer.send(hello);
    expect(await expectRejected(peer, Status.BadVersion, 1002)).toMatch(/version 2/);
    await logged;
    await stillServing();
  });

  it("a text message, a request before hello, a second hello: rejected", async () => {
    const text = await RawPeer.connect(url);
    const textLogged = nextRejection("FRAME_TEXT");
    text.send("hello?");
    await expectRejected(text, Status.BadFrame, 1003);
    await textLogged;

    const early = await RawPeer.connect(url);
    early.send(encodeFrame({ type: FrameType.Request, id: 1, op: Op.ReadGeneration, vm: "kv", a: 0, b: 0, text: "", data: new Uint8Array(0) }));
    expect(await expectRejected(early, Status.Protocol, 1002)).toMatch(/expected a hello/);

    const twice = await RawPeer.hello(url, { token: TOKEN, clientId: "twice" });
    twice.send(encodeFrame({ type: FrameType.Hello, clientId: "twice", instance: 1, session: 2, token: TOKEN }));
    expect(await expectRejected(twice, Status.Protocol, 1002)).toMatch(/expected a request/);
    await stillServing();
  });

  it("an unknown op: answered UNKNOWN_OP, then closed", async () => {
    const peer = await RawPeer.hello(url, { token: TOKEN });
    const logged = nextRejection("UNKNOWN_OP");
    peer.send(encodeFrame({ type: FrameType.Request, id: 77, op: 200, vm: "kv", a: 0, b: 0, text: "", data: new Uint8Array(0) }));
    const answer = (await peer.frame()) as ResponseFrame;
    expect(answer).toMatchObject({ type: FrameType.Response, id: 77, status: Status.UnknownOp });
    await expectRejected(peer, Status.UnknownOp, 1002);
    expect(await logged).toMatchObject({ op: 200 });
    await stillServing();
  });

  it("a peer that never says hello is closed after the hello timeout", async () => {
    const peer = await RawPeer.connect(url);
    const logged = nextRejection("HELLO_TIMEOUT");
    expect(await expectRejected(peer, Status.HelloTimeout, 1008)).toMatch(/no hello within 300 ms/);
    await logged;
    await stillServing();
  });

  it("bytes that are not even HTTP: answered 400, logged", async () => {
    const logged = server.waitForLog((line) => line.msg === "connection rejected" && String(line.code).startsWith("HPE_"));
    const reply = await rawHttp("GARBAGE\r\n\r\n");
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
    expect((await logged).remote).toMatch(/^127\.0\.0\.1:\d+$/);
    await stillServing();
  });

  it("plain HTTP without an upgrade: answered 426, logged", async () => {
    const logged = nextRejection("NOT_WEBSOCKET");
    const reply = await rawHttp("GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    expect(reply).toMatch(/^HTTP\/1\.1 426/);
    expect((await logged).detail).toBe("GET without a WebSocket upgrade");
    await stillServing();
  });
});

/** Sends `text` on a raw TCP connection; resolves with everything received until it closes. */
function rawHttp(text: string): Promise<string> {
  const { port } = new URL(url);
  return new Promise<string>((resolve, reject) => {
    const socket = net.connect(Number(port), "127.0.0.1", () => socket.write(text));
    let data = "";
    socket.setEncoding("utf8").on("data", (chunk: string) => (data += chunk));
    socket.on("close", () => resolve(data));
    socket.on("error", reject);
  });
}

describe("limits", () => {
  it("requests beyond the in-flight limit are answered BUSY, none lost", async () => {
    const peer = await RawPeer.hello(url, { token: TOKEN, clientId: "flood" });
    const count = 200;
    for (let id = 1; id <= count; id++) {
      peer.send(encodeFrame({ type: FrameType.Request, id, op: Op.Read, vm: "kv", a: id % 64, b: 1, text: "", data: new Uint8Array(0) }));
    }
    const answers = new Map<number, ResponseFrame>();
    while (answers.size < count) {
      const frame = decodeFrame(await peer.message()) as ResponseFrame;
      expect(answers.has(frame.id), `a second answer to ${frame.id}`).toBe(false);
      answers.set(frame.id, frame);
    }
    const statuses = [...answers.values()].map((answer) => answer.status);
    const ok = statuses.filter((status) => status === Status.Ok).length;
    const busy = statuses.filter((status) => status === Status.Busy).length;
    expect(ok + busy).toBe(count);
    expect(ok).toBeGreaterThanOrEqual(4);
    expect(busy).toBeGreaterThan(0);
    expect([...answers.values()].find((answer) => answer.status === Status.Busy)!.text).toMatch(/limits 4 and/);
    peer.ws.close();
    await peer.closed;
    await stillServing();
  });

  it("the client library keeps within the limit by itself: 100 concurrent reads, no BUSY", async () => {
    const reads = await Promise.all(Array.from({ length: 100 }, (_, index) => bystander.read("kv", index % 64, 1)));
    expect(reads).toHaveLength(100);
  });

  it("a connection beyond the limit is refused TOO_MANY_CONNECTIONS; a slot freed is usable again", async () => {
    // The bystander holds one slot of six.
    const peers = await Promise.all(Array.from({ length: 5 }, (_, index) => RawPeer.hello(url, { token: TOKEN, clientId: `slot-${index}` })));
    const logged = nextRejection("TOO_MANY_CONNECTIONS");
    const extra = await RawPeer.connect(url);
    expect(await expectRejected(extra, Status.TooManyConnections, 1013)).toMatch(/6 connections, limit 6/);
    await logged;

    const freed = server.waitForLog((line) => line.msg === "connection closed" && line.client === "slot-0");
    peers[0]!.ws.close();
    await freed;
    const again = await RawPeer.hello(url, { token: TOKEN, clientId: "again" });
    for (const peer of [again, ...peers.slice(1)]) {
      peer.ws.close();
      await peer.closed;
    }
    await stillServing();
  });
});
