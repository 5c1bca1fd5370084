// A primary with two backups in one process, over real WebSocket logging channels, with the real
// storage server as the arbiter (docs/ft-protocol.md, "More than one backup"): every output
// waits for both backups; one backup dies, and the primary settles generation 2 keeping the
// other, whose outputs then wait for it alone; then the primary dies, and the backup it kept
// replays everything and goes live as generation 3, right after the last output released.

import { describe, expect, it } from "vitest";
import { storageArbiter } from "../../host/ft/arbiter.js";
import { BackupDriver } from "../../host/ft/backup-driver.js";
import { PrimaryDriver } from "../../host/ft/primary-driver.js";
import { StorageClient } from "../../host/storage/client.js";
import { startStorageServer } from "../../host/storage/server.js";
import { loadGuest } from "../../host/vm/guest.js";
import { tempDir } from "../helpers/cli.js";

const ticks = (text: string) => [...text.matchAll(/^tick (\d+) /gm)].map((m) => Number(m[1]));

/** A log that resolves waits on its events (never on time). */
function eventLog() {
  const waiters: { matches: (line: Record<string, unknown>) => boolean; resolve: (line: Record<string, unknown>) => void }[] = [];
  const seen: Record<string, unknown>[] = [];
  return {
    seen,
    log: (line: Record<string, unknown>) => {
      if (process.env.LOCKSTEP_DEBUG) console.error(JSON.stringify(line, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)));
      seen.push(line);
      for (const waiter of [...waiters]) {
        if (!waiter.matches(line)) continue;
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    },
    next(matches: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
      const past = seen.find(matches);
      if (past !== undefined) return Promise.resolve(past);
      return new Promise((resolve) => waiters.push({ matches, resolve }));
    },
  };
}

describe("a primary with two backups", () => {
  it("counter: outputs wait for both; a dead backup is dropped by renewing; the kept one goes live after the primary", async () => {
    const storage = await startStorageServer({ dir: tempDir("backups-pair-storage"), port: 0 });
    const clients = await Promise.all(["host-a", "host-b", "host-c"].map((id) => StorageClient.connect(storage.url, { clientId: id })));
    const [clientA, clientB, clientC] = clients as [StorageClient, StorageClient, StorageClient];
    const module = loadGuest("counter").module;
    const events = eventLog();

    let consoleA = "";
    let consoleB = "";
    let onConsoleB: (() => void) | null = null;
    let wentLive: (generation: number) => void;
    const live = new Promise<number>((resolve) => (wentLive = resolve));
    const backupB = new BackupDriver({
      vmId: "counter-2",
      hostId: "host-b",
      module,
      arbiter: storageArbiter(clientB),
      token: "secret",
      devices: {
        onConsole: (text) => {
          consoleB += Buffer.from(text).toString();
          onConsoleB?.();
        },
      },
      onLive: (generation) => wentLive(generation),
      log: events.log,
    });
    const backupC = new BackupDriver({ vmId: "counter-2", hostId: "host-c", module, arbiter: storageArbiter(clientC), token: "secret", log: events.log });
    const [portB, portC] = await Promise.all([backupB.listening, backupC.listening]);

    const violations: string[] = [];
    let releases = 0;
    let released: (() => void) | null = null;
    const releasesReach = (count: number) => new Promise<void>((resolve) => (released = () => releases >= count && resolve()));
    const urls = [`ws://127.0.0.1:${portB}`, `ws://127.0.0.1:${portC}`];
    const primary = new PrimaryDriver({
      vmId: "counter-2",
      hostId: "host-a",
      module,
      backupUrl: urls[0]!,
      backupUrls: urls,
      arbiter: storageArbiter(clientA),
      token: "secret",
      devices: { onConsole: (text) => (consoleA += Buffer.from(text).toString()) },
      log: events.log,
      onRelease: (seq) => {
        // The Output Rule with two backups: both hold every record before this output, while
        // both are its backups (generation 1); afterwards B alone.
        const receivedB = backupB.core.position().receivedSeq;
        const receivedC = backupC.core.position().receivedSeq;
        if (receivedB < BigInt(seq)) violations.push(`output after ${seq} records released, B has ${receivedB}`);
        if (primary.core.generation === 1 && receivedC < BigInt(seq)) violations.push(`output after ${seq} records released, C has ${receivedC}`);
        releases++;
        released?.();
      },
    });

    await releasesReach(15);
    expect(primary.status().backups.map((b) => b.channelOpen)).toEqual([true, true]);
    expect(primary.status().channelOpen).toBe(true);

    // C dies (as a host daemon stops a replaying backup): its channel closes, and after the
    // grace the primary wins generation 2 keeping B.
    backupC.machine.kill();
    const renewed = await events.next((line) => line.event === "renewed" && line.role === "primary");
    expect(renewed).toMatchObject({ newGeneration: 2, backups: 1 });
    expect(events.seen.some((line) => line.event === "backupDropped")).toBe(true);
    expect(await clientA.readGeneration("counter-2")).toEqual({ generation: 2, owner: "host-a" });
    await events.next((line) => line.event === "backupRenewed" && line.role === "backup" && line.newGeneration === 2);
    expect(backupB.core.generation).toBe(2);
    // Outputs flow again, waiting for B only.
    const before = releases;
    await releasesReach(before + 10);
    expect(primary.status()).toMatchObject({ state: "paired", generation: 2 });
    expect(primary.status().backups).toHaveLength(1);

    expect(violations).toEqual([]);
    const lastReleased = Math.max(...ticks(consoleA));
    primary.crash();
    // B adopted generation 2: it contends for 3 as itself, and goes live right after the last
    // output the primary released.
    expect(await live).toBe(3);
    expect(await clientB.readGeneration("counter-2")).toEqual({ generation: 3, owner: "host-b" });
    // A backup's console is dropped until it is live: what B prints from here on is its own.
    await new Promise<void>((resolve) => (onConsoleB = () => ticks(consoleB).length >= 3 && resolve()));
    backupB.stop();
    await backupB.done;
    const resumed = ticks(consoleB);
    expect(resumed.length).toBeGreaterThan(0);
    expect(resumed[0]).toBe(lastReleased + 1);

    await Promise.allSettled([primary.done, backupC.done]);
    for (const client of clients) await client.close();
    await storage.close();
  });

  it("counter: a paired primary clones a second backup while the first stays connected; an operator drops one by name", async () => {
    const storage = await startStorageServer({ dir: tempDir("backups-clone-storage"), port: 0 });
    const clients = await Promise.all(["host-a", "host-b", "host-c"].map((id) => StorageClient.connect(storage.url, { clientId: id })));
    const [clientA, clientB, clientC] = clients as [StorageClient, StorageClient, StorageClient];
    const module = loadGuest("counter").module;
    const events = eventLog();
    let releases = 0;
    let released: (() => void) | null = null;
    const releasesReach = (count: number) => new Promise<void>((resolve) => (released = () => releases >= count && resolve()));
    const violations: string[] = [];

    const backupB = new BackupDriver({ vmId: "counter-3", hostId: "host-b", module, arbiter: storageArbiter(clientB), log: events.log });
    let backupC: BackupDriver | null = null;
    /** Until C runs, what it will hold is its snapshot: every record before this seq. */
    let snapshotSeq = 0n;
    const primary = new PrimaryDriver({
      vmId: "counter-3",
      hostId: "host-a",
      module,
      backupUrl: `ws://127.0.0.1:${await backupB.listening}`,
      arbiter: storageArbiter(clientA),
      log: events.log,
      onRelease: (seq) => {
        // Every output waits for every backup the primary has: B (b1) until it is dropped, C
        // (b2) from its clone on.
        const drivers: Record<string, BackupDriver | null> = { b1: backupB, b2: backupC };
        for (const id of primary.core.backupIds) {
          const received = drivers[id]?.core.position().receivedSeq ?? snapshotSeq;
          if (received < BigInt(seq)) violations.push(`output after ${seq} records released, ${id} has ${received}`);
        }
        releases++;
        released?.();
      },
    });
    await releasesReach(5);

    // One more backup while paired (§3.1): B stays connected throughout.
    const snapshot = await primary.beginClone(5_000);
    snapshotSeq = BigInt(snapshot.seq);
    await expect(primary.beginClone(5_000)).rejects.toThrow(/cloning/);
    backupC = new BackupDriver({ vmId: "counter-3", hostId: "host-c", module, arbiter: storageArbiter(clientC), restore: snapshot, log: events.log });
    expect(await primary.connectBackup(`ws://127.0.0.1:${await backupC.listening}`)).toBe(true);
    expect(primary.status()).toMatchObject({ state: "paired", generation: 1 });
    expect(primary.status().backups.map((b) => b.id)).toEqual(["b1", "b2"]);
    await releasesReach(releases + 10);
    expect(backupC.core.position().receivedSeq).toBeGreaterThan(BigInt(snapshot.seq));

    // An operator removes B by name (its id): the primary renews with C alone.
    backupB.machine.kill();
    primary.dropBackup("b1");
    await events.next((line) => line.event === "renewed" && line.role === "primary");
    expect(primary.status()).toMatchObject({ state: "paired", generation: 2 });
    expect(primary.status().backups.map((b) => b.id)).toEqual(["b2"]);
    await releasesReach(releases + 10);
    expect(violations).toEqual([]);

    primary.crash();
    backupC.machine.kill();
    await Promise.allSettled([primary.done, backupB.done, backupC.done]);
    for (const client of clients) await client.close();
    await storage.close();
  });
});
