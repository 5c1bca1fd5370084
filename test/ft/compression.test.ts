// Log compression on the logging channel (permessage-deflate, host/ft/channel.ts): a real kv
// primary and backup over a real WebSocket, clients writing compressible values. With both ends
// willing the pair compresses, and says so; the backup still replays to exactly the primary's
// state; what TCP carries is less than the frames. If either end refuses, the pair runs
// uncompressed and works the same.

import path from "node:path";
import { describe, expect, it } from "vitest";
import { ControlKind } from "../../protocol/records.js";
import { RespClient } from "../../host/checker/resp-client.js";
import { storageArbiter } from "../../host/ft/arbiter.js";
import { channelDeflate, LOG_COMPRESSION_ENV, logCompressionDefault } from "../../host/ft/channel.js";
import { BackupDriver, type BackupStatus } from "../../host/ft/backup-driver.js";
import { PrimaryDriver, type PrimaryStatus } from "../../host/ft/primary-driver.js";
import { StorageClient } from "../../host/storage/client.js";
import { startStorageServer } from "../../host/storage/server.js";
import { loadGuest } from "../../host/vm/guest.js";
import { tempDir } from "../helpers/cli.js";

const KEYS = 40;
const DISK_BLOCKS = 4096;

/** A value that deflates well, as most of a real log does: a repeated pattern, unique per key. */
const valueOf = (key: number) => `key ${key}: ${"lockstep replays every input; ".repeat(40)}`;

interface PairRun {
  primary: PrimaryStatus;
  backup: BackupStatus;
  replies: unknown[];
  primaryResult: { stop: string; icount: bigint; digest: string };
  backupResult: { stop: string; icount: bigint; digest: string };
}

/** A kv pair with each end's compression setting; KEYS SETs and GETs, then a power-off. */
async function runPair(primaryCompression: boolean, backupCompression: boolean): Promise<PairRun> {
  const dir = tempDir("compression");
  const storage = await startStorageServer({ dir: path.join(dir, "storage"), port: 0 });
  const clientA = await StorageClient.connect(storage.url, { clientId: "host-a" });
  const clientB = await StorageClient.connect(storage.url, { clientId: "host-b" });
  const module = loadGuest("kv").module;
  try {
    const backup = new BackupDriver({
      vmId: "kv-z",
      hostId: "host-b",
      module,
      arbiter: storageArbiter(clientB),
      // The pair must not fail over while the machine is busy: this test is about the channel.
      timeoutMs: 30_000,
      logCompression: backupCompression,
      devices: { diskFile: path.join(dir, "backup.img"), diskBlocks: DISK_BLOCKS },
    });
    const port = await backup.listening;
    let listening: (address: string) => void;
    const address = new Promise<string>((resolve) => (listening = resolve));
    const primary = new PrimaryDriver({
      vmId: "kv-z",
      hostId: "host-a",
      module,
      backupUrl: `ws://127.0.0.1:${port}`,
      arbiter: storageArbiter(clientA),
      timeoutMs: 30_000,
      logCompression: primaryCompression,
      devices: {
        diskFile: path.join(dir, "primary.img"),
        diskBlocks: DISK_BLOCKS,
        listen: () => ({ host: "127.0.0.1", port: 0 }),
        onListening: (_port, where) => listening(`${where.host}:${where.port}`),
      },
    });
    const client = new RespClient(await address);
    await client.connected;
    const replies: unknown[] = [];
    // Each reply is an output: it leaves only once the backup holds the records before it.
    for (let key = 0; key < KEYS; key++) replies.push(await client.command("SET", `k${key}`, valueOf(key)));
    for (let key = 0; key < KEYS; key++) replies.push(await client.command("GET", `k${key}`));
    client.close();
    const backupStatus = backup.status();
    // Still a backup: the pair must not have failed over during the load.
    if (backupStatus.role !== "backup") throw new Error(`the backup went live (${backupStatus.state})`);
    const statuses = { primary: primary.status(), backup: backupStatus };
    primary.control(ControlKind.PowerOff);
    const [primaryResult, backupResult] = await Promise.all([primary.done, backup.done]);
    return { ...statuses, replies, primaryResult, backupResult };
  } finally {
    await clientA.close();
    await clientB.close();
    await storage.close();
  }
}

function expectExactReplay(run: PairRun): void {
  expect(run.replies.slice(0, KEYS)).toEqual(Array(KEYS).fill("OK"));
  expect(run.replies.slice(KEYS).map(String)).toEqual(Array.from({ length: KEYS }, (_, key) => valueOf(key)));
  // The backup stopped at the primary's PowerOff record in exactly the primary's state.
  expect(run.primaryResult.stop).toBe("poweroff");
  expect(run.backupResult.stop).toBe("poweroff");
  expect(run.backupResult.icount).toBe(run.primaryResult.icount);
  expect(run.backupResult.digest).toBe(run.primaryResult.digest);
  // The backup's counters saw the same stream (a heartbeat may still be on its way).
  expect(run.backup.logBytesReceived).toBeGreaterThan(0);
  expect(run.backup.logBytesReceived).toBeLessThanOrEqual(run.primary.logBytesSent);
}

describe("log compression on the logging channel", () => {
  it("is off unless $LOCKSTEP_LOG_COMPRESSION is on (docs/performance.md says why)", () => {
    const saved = process.env[LOG_COMPRESSION_ENV];
    try {
      delete process.env[LOG_COMPRESSION_ENV];
      expect(logCompressionDefault()).toBe(false);
      process.env[LOG_COMPRESSION_ENV] = "on";
      expect(logCompressionDefault()).toBe(true);
      process.env[LOG_COMPRESSION_ENV] = "off";
      expect(logCompressionDefault()).toBe(false);
    } finally {
      if (saved === undefined) delete process.env[LOG_COMPRESSION_ENV];
      else process.env[LOG_COMPRESSION_ENV] = saved;
    }
    expect(channelDeflate(false)).toBe(false);
    expect(channelDeflate(true)).toMatchObject({ clientNoContextTakeover: false, zlibDeflateOptions: { level: 1 } });
  });

  it("is negotiated when both ends offer it: the replay is exact and the wire carries less than the frames", async () => {
    const run = await runPair(true, true);
    expectExactReplay(run);
    expect(run.primary.logCompression).toBe(true);
    expect(run.backup.logCompression).toBe(true);
    // 40 values of about 1.2 KiB went into the log: the frames hold them in full.
    expect(run.primary.logBytesSent).toBeGreaterThan(KEYS * valueOf(0).length);
    // Compressed with the frames before them, the repeated values cost a fraction on the wire.
    expect(run.primary.logWireBytesSent).toBeGreaterThan(0);
    expect(run.primary.logWireBytesSent).toBeLessThan(run.primary.logBytesSent / 2);
    expect(run.backup.logWireBytesReceived).toBeLessThan(run.backup.logBytesReceived / 2);
  });

  for (const [primaryCompression, backupCompression, who] of [
    [true, false, "the backup refuses it"],
    [false, true, "the primary does not offer it"],
  ] as const) {
    it(`runs uncompressed when ${who}, and works the same`, async () => {
      const run = await runPair(primaryCompression, backupCompression);
      expectExactReplay(run);
      expect(run.primary.logCompression).toBe(false);
      expect(run.backup.logCompression).toBe(false);
      // Uncompressed, every frame crosses whole, plus its WebSocket header and mask.
      expect(run.primary.logWireBytesSent).toBeGreaterThan(run.primary.logBytesSent);
      expect(run.backup.logWireBytesReceived).toBeGreaterThan(run.backup.logBytesReceived);
    });
  }
});
