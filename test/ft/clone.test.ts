// Restoring redundancy in one process, over real WebSockets, with the real storage server as
// the arbiter: a backup that went live is cloned to a third driver (a live clone, §3.1), the
// Output Rule holds again from the snapshot on, and when the new primary dies the clone goes
// live and continues exactly where the released output ends.

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

/** Resolves once `check` holds, testing it after every console line the drivers print. */
function consoleWatch() {
  const waiters: { check: () => boolean; resolve: () => void }[] = [];
  return {
    changed() {
      for (const waiter of [...waiters]) {
        if (waiter.check()) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve();
        }
      }
    },
    until(check: () => boolean): Promise<void> {
      if (check()) return Promise.resolve();
      return new Promise((resolve) => waiters.push({ check, resolve }));
    },
  };
}

describe("restoring redundancy", () => {
  it("counter: a backup gone live is cloned, paired again, and its clone takes over after it dies", async () => {
    const storage = await startStorageServer({ dir: tempDir("clone-storage"), port: 0 });
    const clients = await Promise.all(["host-a", "host-b", "host-c"].map((id) => StorageClient.connect(storage.url, { clientId: id })));
    const module = loadGuest("counter").module;
    const watch = consoleWatch();
    const consoles = { a: "", b: "", c: "" };
    const device = (side: keyof typeof consoles) => ({
      onConsole: (text: Uint8Array) => {
        consoles[side] += Buffer.from(text).toString();
        watch.changed();
      },
    });

    const lives: Record<string, (generation: number) => void> = {};
    const live = (side: string) => new Promise<number>((resolve) => (lives[side] = resolve));
    const bLive = live("b");
    const b = new BackupDriver({ vmId: "counter-1", hostId: "host-b", module, arbiter: storageArbiter(clients[1]!), devices: device("b"), log: debugLog, onLive: (g) => lives.b!(g) });
    const a = new PrimaryDriver({
      vmId: "counter-1",
      hostId: "host-a",
      module,
      backupUrl: `ws://127.0.0.1:${await b.listening}`,
      arbiter: storageArbiter(clients[0]!),
      devices: device("a"),
      log: debugLog,
    });
    await watch.until(() => ticks(consoles.a).length >= 5);
    a.crash();
    expect(await bLive).toBe(2);
    const successor = b.successor!;
    expect(successor).toBeInstanceOf(PrimaryDriver);
    expect(b.status()).toMatchObject({ role: "primary", state: "alone", generation: 2 });
    await watch.until(() => ticks(consoles.b).length >= 3);

    // The clone: a snapshot of the running VM seeds a backup, whose log starts right there.
    const snapshot = await successor.beginClone(5_000);
    await expect(successor.beginClone(5_000)).rejects.toThrow(/not alone/);
    expect(successor.status().state).toBe("paired");
    const cLive = live("c");
    const c = new BackupDriver({
      vmId: "counter-1",
      hostId: "host-c",
      module,
      generation: 2,
      restore: snapshot,
      arbiter: storageArbiter(clients[2]!),
      devices: device("c"),
      log: debugLog,
      onLive: (g) => lives.c!(g),
    });
    expect(c.core.position().receivedSeq).toBe(BigInt(snapshot.seq));
    expect(await successor.connectBackup(`ws://127.0.0.1:${await c.listening}`)).toBe(true);

    // Paired again: outputs leave only once the clone holds the records before them.
    const ticksAtClone = ticks(consoles.b).length;
    await watch.until(() => ticks(consoles.b).length >= ticksAtClone + 5);
    const status = successor.status();
    expect(status.state).toBe("paired");
    expect(status.channelOpen).toBe(true);
    expect(c.core.position().receivedSeq).toBeGreaterThan(BigInt(snapshot.seq));
    expect(c.status()).toMatchObject({ role: "backup", state: "replaying", generation: 2 });
    const lastReleased = Math.max(...ticks(consoles.b));

    // The new primary dies: the clone replays from its snapshot to the end of the log and goes on.
    successor.crash();
    expect(await cLive).toBe(3);
    expect(await clients[2]!.readGeneration("counter-1")).toEqual({ generation: 3, owner: "host-c" });
    await watch.until(() => ticks(consoles.c).length >= 3);
    const resumed = ticks(consoles.c);
    expect(resumed[0]).toBeGreaterThanOrEqual(lastReleased + 1);
    // Across both failovers no tick is printed twice, and the execution never goes back. (A
    // console line whose marker the backup holds but whose ack the primary never got is not
    // printed by either side: console output is at most once; streams are exactly once.)
    const all = [...ticks(consoles.a), ...ticks(consoles.b), ...resumed];
    expect(all).toEqual([...new Set(all)].sort((x, y) => x - y));

    c.stop();
    expect((await c.done).stop).toBe("stopped");
    await Promise.allSettled([a.done, b.done]);
    await Promise.all(clients.map((client) => client.close()));
    await storage.close();
  });

  it("cpu: a clone taken in the middle of a long computation replays to the primary's exact end", async () => {
    const storage = await startStorageServer({ dir: tempDir("clone-cpu-storage"), port: 0 });
    const clients = await Promise.all(["host-a", "host-c"].map((id) => StorageClient.connect(storage.url, { clientId: id })));
    const module = loadGuest("cpu").module;
    let firstLine: () => void;
    const running = new Promise<void>((resolve) => (firstLine = resolve));
    let primaryConsole = "";
    let wentAlone: () => void;
    const alone = new Promise<void>((resolve) => (wentAlone = resolve));
    // Its backup never answers (nothing listens there): the primary goes alone at generation 2.
    const a = new PrimaryDriver({
      vmId: "cpu-1",
      hostId: "host-a",
      module,
      backupUrl: "ws://127.0.0.1:9/",
      arbiter: storageArbiter(clients[0]!),
      timeoutMs: 300,
      devices: {
        onConsole: (text) => {
          primaryConsole += Buffer.from(text).toString();
          firstLine();
        },
      },
      log: (line) => {
        if (line.event === "wentAlone") wentAlone();
        debugLog(line);
      },
    });
    await Promise.all([running, alone]);

    // main is still running: the snapshot holds its stack, not an idle guest.
    const snapshot = await a.beginClone(5_000);
    expect(snapshot.stack?.export).toBe("main");
    expect(primaryConsole).not.toMatch(/^checksum /m);
    const c = new BackupDriver({
      vmId: "cpu-1",
      hostId: "host-c",
      module,
      generation: 2,
      restore: snapshot,
      arbiter: storageArbiter(clients[1]!),
      log: debugLog,
    });
    expect(await a.connectBackup(`ws://127.0.0.1:${await c.listening}`)).toBe(true);

    // The primary runs main to its end; the clone replays from the snapshot to the same End.
    const [primaryResult, cloneResult] = await Promise.all([a.done, c.done]);
    expect(primaryConsole).toMatch(/^checksum [0-9a-f]+$/m);
    expect(primaryResult.stop, primaryResult.message ?? "").toBe("exit");
    expect(cloneResult.stop, cloneResult.message ?? "").toBe("exit");
    expect(cloneResult.icount).toBe(primaryResult.icount);
    expect(cloneResult.digest).toBe(primaryResult.digest);
    expect(c.core.state).toBe("halted");

    await Promise.all(clients.map((client) => client.close()));
    await storage.close();
  });
});
