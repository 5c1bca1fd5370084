// A backup's logging channel is a listening socket: whatever connects may be a confused or
// hostile peer. Each bad connection is refused on its own, with a reason in the log, and the
// backup still pairs with its real primary afterwards.

import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { encodeChannelMessage } from "../../protocol/channel-frames.js";
import { storageArbiter } from "../../host/ft/arbiter.js";
import { BackupDriver } from "../../host/ft/backup-driver.js";
import type { HelloMessage } from "../../host/ft/messages.js";
import { PrimaryDriver } from "../../host/ft/primary-driver.js";
import { StorageClient } from "../../host/storage/client.js";
import { startStorageServer, type StorageServer } from "../../host/storage/server.js";
import { loadGuest } from "../../host/vm/guest.js";
import { tempDir } from "../helpers/cli.js";

const VM = "counter-hostile";
const GENERATION = 3;
const TOKEN = "s3cret";

let storage: StorageServer;
let client: StorageClient;
let backup: BackupDriver;
let url: string;
const logs: Record<string, unknown>[] = [];

beforeAll(async () => {
  storage = await startStorageServer({ dir: tempDir("hostile-channel"), port: 0 });
  client = await StorageClient.connect(storage.url, { clientId: "host-b" });
  backup = new BackupDriver({
    vmId: VM,
    hostId: "host-b",
    generation: GENERATION,
    // Long enough that this backup does not give up on its primary while it is attacked.
    timeoutMs: 60_000,
    module: loadGuest("counter").module,
    arbiter: storageArbiter(client),
    token: TOKEN,
    log: (line) => logs.push(line),
  });
  url = `ws://127.0.0.1:${await backup.listening}`;
});

afterAll(async () => {
  backup.stop();
  await backup.done;
  await client.close();
  await storage.close();
});

/** Connects, sends `frames`, and resolves with how the backup closed the connection. */
function attack(frames: (Uint8Array | string)[]): Promise<{ code: number; reason: string }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.on("open", () => {
      for (const frame of frames) socket.send(frame, { binary: typeof frame !== "string" });
    });
    socket.on("close", (code, reason) => resolve({ code, reason: reason.toString() }));
    socket.on("error", reject);
  });
}

const hello = (fields: Partial<HelloMessage>): Uint8Array =>
  encodeChannelMessage({ t: "hello", vmId: VM, generation: GENERATION, role: "primary", token: TOKEN, ...fields });

describe("a backup's logging channel under hostile peers", () => {
  it("refuses text, garbage, truncated frames, a missing hello and a wrong token, each with a reason", async () => {
    const valid = hello({});
    const cases: [string, (Uint8Array | string)[], RegExp][] = [
      ["text frame", ["hello?"], /text frame/],
      ["garbage", [randomBytes(64)], /magic|version|length|checksum|frame/i],
      ["truncated hello", [valid.subarray(0, valid.length - 3)], /truncated|length|checksum|frame/i],
      ["heartbeat before hello", [encodeChannelMessage({ t: "heartbeat", vmId: VM, generation: GENERATION })], /heartbeat before hello/],
      ["no token", [hello({ token: undefined })], /wrong token/],
      ["wrong token", [hello({ token: "guess" })], /wrong token/],
    ];
    for (const [name, frames, reason] of cases) {
      const closed = await attack(frames);
      expect(closed.code, name).toBe(1008);
      expect(closed.reason, name).toMatch(reason);
    }
    const rejections = logs.filter((l) => l.msg === "channel rejected");
    expect(rejections.length).toBe(cases.length);
    // Every line says which VM and generation it concerns.
    for (const line of rejections) expect(line).toMatchObject({ vm: VM, generation: GENERATION });
  });

  it("drops a hello for another VM or an older generation with a protocol error, and stays a backup", async () => {
    for (const fields of [{ vmId: "someone-else" }, { generation: GENERATION - 1 }]) {
      const socket = new WebSocket(url);
      await new Promise((resolve) => socket.once("open", resolve));
      const reported = logs.length;
      socket.send(hello(fields));
      // The core reports it on its next pump: wait for the line, not for time.
      await expect.poll(() => logs.slice(reported).find((l) => l.msg === "protocol error"), { timeout: 10_000 }).toBeDefined();
      socket.terminate();
      await new Promise((resolve) => socket.once("close", resolve));
    }
    const codes = logs.filter((l) => l.msg === "protocol error").map((l) => (l.error as { code: string }).code);
    expect(codes).toEqual(["WRONG_VM", "STALE_GENERATION"]);
    expect(backup.core.state).toBe("replaying");
  });

  it("still pairs with the real primary afterwards, whose outputs then flow", async () => {
    const primaryClient = await StorageClient.connect(storage.url, { clientId: "host-a" });
    let ticks = 0;
    let enough: () => void;
    const flowing = new Promise<void>((resolve) => (enough = resolve));
    const primary = new PrimaryDriver({
      vmId: VM,
      hostId: "host-a",
      generation: GENERATION,
      timeoutMs: 60_000,
      module: loadGuest("counter").module,
      backupUrl: url,
      arbiter: storageArbiter(primaryClient),
      token: TOKEN,
      devices: { onConsole: () => ++ticks >= 5 && enough() },
    });
    await flowing;
    expect(backup.core.position().receivedSeq).toBeGreaterThan(0n);
    expect(primary.status().state).toBe("paired");
    primary.machine.stop();
    await primary.done;
    await primaryClient.close();
  });
});
