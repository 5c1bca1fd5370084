// The live feed's bounds, on a LiveHub over a made-up status source: a client that stops
// reading is dropped once its send buffer is full, while a reading client keeps its feed.

import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import type { ClusterEvent } from "../../host/cluster/embedded.js";
import { LIVE_BUFFER_BYTES_MAX, LiveHub } from "../../host/dashboard/live.js";
import { type Logger, SILENT_LOGGER } from "../../host/log.js";

let server: Server | null = null;
let hub: LiveHub | null = null;

afterEach(async () => {
  hub?.close();
  hub = null;
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve) ?? resolve(undefined));
  server = null;
});

/** A source whose snapshots are big, so that a stalled client fills its buffer quickly. */
function bigSource(): { status: () => Promise<Record<string, unknown>>; onEvent: (l: (e: ClusterEvent) => void) => () => void; emit: (e: ClusterEvent) => void } {
  const listeners = new Set<(e: ClusterEvent) => void>();
  const padding = "x".repeat(256 * 1024);
  return {
    status: async () => ({ hosts: [], vms: [], padding, events: [] }),
    onEvent: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    emit: (event) => listeners.forEach((l) => l(event)),
  };
}

async function listen(live: LiveHub): Promise<string> {
  server = createServer((_req, res) => res.end());
  server.on("upgrade", (req, socket, head) => live.upgrade(req, socket, head));
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return `ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/live`;
}

describe("LiveHub", () => {
  it("drops a client that does not read once its buffer passes the bound, and keeps feeding one that reads", async () => {
    const source = bigSource();
    let dropped!: () => void;
    const droppedOnce = new Promise<void>((resolve) => (dropped = resolve));
    const log: Logger = { ...SILENT_LOGGER, warn: (_msg, fields) => fields?.code === "LIVE_CLIENT_SLOW" && dropped() };
    hub = new LiveHub(source, { token: null, log, intervalMs: 5 });
    const url = await listen(hub);

    // The stalled client: its socket is paused, so the kernel's buffers and then the server's fill.
    const stalled = new WebSocket(url);
    await new Promise((resolve) => stalled.once("open", resolve));
    (stalled as unknown as { _socket: { pause(): void } })._socket.pause();

    const reader = new WebSocket(url);
    let readerMessages = 0;
    reader.on("message", () => readerMessages++);
    await new Promise((resolve) => reader.once("open", resolve));

    await droppedOnce;
    expect(hub.dropped).toBe(1);
    // The reader is still fed: an event pushed now reaches it.
    const got = new Promise<string>((resolve) => reader.on("message", (data) => {
      const message = JSON.parse(data.toString()) as { type: string; event?: { event: string } };
      if (message.type === "event") resolve(message.event!.event);
    }));
    source.emit({ ts: new Date().toISOString(), host: "up", event: "hostKilled", vm: null, generation: null, msg: "test" });
    expect(await got).toBe("hostKilled");
    expect(readerMessages).toBeGreaterThan(LIVE_BUFFER_BYTES_MAX / (256 * 1024));
    reader.close();
    stalled.terminate();
  });

  it("with a token: a first message with the right one admits, a wrong one closes with 4401, binary too", async () => {
    hub = new LiveHub(bigSource(), { token: "t0ken", log: SILENT_LOGGER, intervalMs: 1000 });
    const url = await listen(hub);
    const closeCode = (ws: WebSocket) => new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)));

    const wrong = new WebSocket(url);
    wrong.once("open", () => wrong.send(JSON.stringify({ type: "auth", token: "t0ke" })));
    expect(await closeCode(wrong)).toBe(4401);

    const binary = new WebSocket(url);
    binary.once("open", () => binary.send(Buffer.from(JSON.stringify({ type: "auth", token: "t0ken" }))));
    expect(await closeCode(binary)).toBe(4401);

    const right = new WebSocket(url);
    right.once("open", () => right.send(JSON.stringify({ type: "auth", token: "t0ken" })));
    const first = await new Promise<{ type: string }>((resolve) => right.once("message", (data) => resolve(JSON.parse(data.toString()) as { type: string })));
    expect(first.type).toBe("hello");
    right.close();
  });
});
