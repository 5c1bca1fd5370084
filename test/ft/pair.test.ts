// A primary and a backup in one process, over a real WebSocket logging channel, with the real
// storage server as the arbiter: outputs leave only once the backup has their records, and when
// the primary dies the backup replays everything, wins the next generation and goes live.

import { describe, expect, it } from "vitest";
import { storageArbiter } from "../../host/ft/arbiter.js";
import { BackupDriver } from "../../host/ft/backup-driver.js";
import { PrimaryDriver } from "../../host/ft/primary-driver.js";
import { StorageClient } from "../../host/storage/client.js";
import { startStorageServer } from "../../host/storage/server.js";
import { loadGuest } from "../../host/vm/guest.js";
import { tempDir } from "../helpers/cli.js";

const debugLog = (line: Record<string, unknown>) => {
  if (process.env.LOCKSTEP_DEBUG) console.error(JSON.stringify(line, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)));
};
const ticks = (text: string) => [...text.matchAll(/^tick (\d+) /gm)].map((m) => Number(m[1]));

describe("a primary/backup pair", () => {
  it("counter: the Output Rule holds, and the backup goes live after the primary dies", async () => {
    const storage = await startStorageServer({ dir: tempDir("pair-storage"), port: 0 });
    const clientA = await StorageClient.connect(storage.url, { clientId: "host-a" });
    const clientB = await StorageClient.connect(storage.url, { clientId: "host-b" });
    const module = loadGuest("counter").module;

    let primaryConsole = "";
    let backupConsole = "";
    let wentLive: (generation: number) => void;
    const live = new Promise<number>((resolve) => (wentLive = resolve));
    const backup = new BackupDriver({
      vmId: "counter-1",
      hostId: "host-b",
      module,
      arbiter: storageArbiter(clientB),
      token: "secret",
      devices: { onConsole: (text) => (backupConsole += Buffer.from(text).toString()) },
      onLive: (generation) => wentLive(generation),
      log: debugLog,
    });
    const port = await backup.listening;

    let releasedEnough: () => void;
    const enough = new Promise<void>((resolve) => (releasedEnough = resolve));
    const violations: string[] = [];
    const primary = new PrimaryDriver({
      vmId: "counter-1",
      hostId: "host-a",
      module,
      backupUrl: `ws://127.0.0.1:${port}`,
      arbiter: storageArbiter(clientA),
      token: "secret",
      devices: { onConsole: (text) => (primaryConsole += Buffer.from(text).toString()) },
      log: debugLog,
      onRelease: (seq) => {
        // The Output Rule: the backup holds every record that precedes this output.
        const received = backup.core.position().receivedSeq;
        if (received < BigInt(seq)) violations.push(`output after ${seq} records released, backup has ${received}`);
        if (ticks(primaryConsole).length >= 20) releasedEnough();
      },
    });
    await enough;
    expect(violations).toEqual([]);
    const lastReleased = Math.max(...ticks(primaryConsole));

    primary.crash();
    const generation = await live;
    expect(generation).toBe(2);
    const owner = await clientB.readGeneration("counter-1");
    expect(owner).toEqual({ generation: 2, owner: "host-b" });

    // The backup, now live, goes on ticking from where the primary's log ended.
    while (ticks(backupConsole).length < 5) await new Promise((resolve) => setImmediate(resolve));
    const resumed = ticks(backupConsole);
    // The backup goes on right after the last output the primary released: the output
    // markers in the log tell it which ticks already left (docs/log-format.md), so none is
    // repeated, and none is skipped since the primary released nothing without its marker.
    expect(resumed[0]).toBe(lastReleased + 1);
    expect(resumed).toEqual([...resumed].sort((a, b) => a - b));
    backup.stop();
    const result = await backup.done;
    expect(result.stop, result.message ?? "").toBe("stopped");

    await Promise.allSettled([primary.done]);
    await clientA.close();
    await clientB.close();
    await storage.close();
  });
});
