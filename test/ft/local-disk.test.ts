// Non-shared disks (§4.1): primary and backup each keep a copy of the disk in a file of their
// own. The primary's writes are not outputs (never held), the backup writes its copy as it
// replays, a failover leaves the new primary with every acknowledged write, and a new backup's
// copy is resynced from the primary's by sending only the blocks that differ. The copies are
// compared block by block.

import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ControlKind } from "../../protocol/records.js";
import { RespClient } from "../../host/checker/resp-client.js";
import { serveDiskSync, syncDisk } from "../../host/devices/disk-sync.js";
import { storageArbiter } from "../../host/ft/arbiter.js";
import { BackupDriver } from "../../host/ft/backup-driver.js";
import { PrimaryDriver } from "../../host/ft/primary-driver.js";
import { StorageClient } from "../../host/storage/client.js";
import { startStorageServer } from "../../host/storage/server.js";
import { FileDisk } from "../../host/devices/file-disk.js";
import { loadGuest } from "../../host/vm/guest.js";
import type { DiskDevice } from "../../host/vm/machine.js";
import type { DeviceEvent } from "../../host/vm/messages.js";
import { setKeys } from "../helpers/kv-workload.js";
import { watFile } from "../helpers/wat.js";
import { BLOCK_BYTES } from "../../host/vm/limits.js";
import { tempDir } from "../helpers/cli.js";
import { writeDiskRacer } from "../helpers/disk-racer.js";

const BLOCKS = 1024;
/** Above the default: a false failover on a loaded 2-core machine would close the clients' connections. */
const TIMEOUT_MS = 3000;
const VALUE = "w".repeat(4000);

/** Blocks whose contents differ between two disk images. */
function differingBlocks(a: string, b: string): number[] {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  expect(x.length).toBe(BLOCKS * BLOCK_BYTES);
  expect(y.length).toBe(BLOCKS * BLOCK_BYTES);
  const differ: number[] = [];
  for (let i = 0; i < BLOCKS; i++) {
    if (!x.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES).equals(y.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES))) differ.push(i);
  }
  return differ;
}

function nonZeroBlocks(file: string): number {
  const x = fs.readFileSync(file);
  let n = 0;
  for (let i = 0; i < BLOCKS; i++) if (x.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES).some((byte) => byte !== 0)) n++;
  return n;
}

describe("non-shared disks (§4.1)", () => {
  it("each side writes its own copy; failover, a clone resynced by differing blocks, and equal copies block by block", async () => {
    const dir = tempDir("local-disk");
    const [fileA, fileB, fileC] = ["a", "b", "c"].map((host) => path.join(dir, host, "kv.img")) as [string, string, string];
    const storage = await startStorageServer({ dir: tempDir("local-disk-arbiter"), port: 0 });
    const clients = await Promise.all(["host-a", "host-b", "host-c"].map((clientId) => StorageClient.connect(storage.url, { clientId })));
    const module = loadGuest("kv").module;
    const devices = (file: string, listening: (address: string) => void = () => {}) => ({
      diskBlocks: BLOCKS,
      diskLocal: true,
      diskFile: file,
      listen: () => ({ host: "127.0.0.1", port: 0 }),
      onListening: (_port: number, address: { host: string; port: number }) => listening(`${address.host}:${address.port}`),
    });
    const pair = async (generation: number) => {
      let backupListening!: (address: string) => void;
      const backupAddress = new Promise<string>((resolve) => (backupListening = resolve));
      const backup = new BackupDriver({ vmId: "kv", hostId: "host-b", module, generation, timeoutMs: TIMEOUT_MS, arbiter: storageArbiter(clients[1]!), devices: devices(fileB, backupListening) });
      const port = await backup.listening;
      let listening!: (address: string) => void;
      const address = new Promise<string>((resolve) => (listening = resolve));
      const primary = new PrimaryDriver({
        vmId: "kv",
        hostId: "host-a",
        module,
        generation,
        timeoutMs: TIMEOUT_MS,
        backupUrl: `ws://127.0.0.1:${port}`,
        arbiter: storageArbiter(clients[0]!),
        devices: devices(fileA, listening),
      });
      return { primary, backup, address, backupAddress };
    };
    try {
      // First life: both copies start empty; after a power-off they are equal, block by block.
      const first = await pair(1);
      await setKeys(await first.address, 0, 100, VALUE);
      first.primary.control(ControlKind.PowerOff);
      const [p1, b1] = await Promise.all([first.primary.done, first.backup.done]);
      expect(p1.stop, p1.message ?? "").toBe("poweroff");
      expect(b1.stop, b1.message ?? "").toBe("poweroff");
      expect(b1.digest).toBe(p1.digest);
      expect(nonZeroBlocks(fileA)).toBeGreaterThanOrEqual(100);
      expect(differingBlocks(fileA, fileB)).toEqual([]);
      // Host C keeps a copy from this life: it will be stale by the time it is needed.
      fs.mkdirSync(path.dirname(fileC), { recursive: true });
      fs.copyFileSync(fileA, fileC);

      // Second life, from the two copies: the primary dies; the backup goes live on its own copy.
      const second = await pair(2);
      await setKeys(await second.address, 100, 150, VALUE);
      second.primary.crash();
      const live = await second.backupAddress;
      const client = new RespClient(live);
      await client.connected;
      expect(await client.command("GET", "key0")).toBe(`0:${VALUE}`);
      expect(await client.command("GET", "key149")).toBe(`149:${VALUE}`);

      // Restoring redundancy: a clone on host C, whose copy is the old one (it lacks the
      // second life's writes): only the blocks that differ travel.
      const successor = second.backup.successor!;
      const snapshot = await successor.beginClone(10_000);
      const source = await serveDiskSync(fileB, BLOCKS);
      const { blocksReceived } = await syncDisk(source.url, fileC, BLOCKS);
      await source.close();
      expect(blocksReceived).toBeGreaterThan(0);
      expect(blocksReceived).toBeLessThan(nonZeroBlocks(fileB) / 2);
      const clone = new BackupDriver({
        vmId: "kv",
        hostId: "host-c",
        module,
        generation: successor.status().generation,
        timeoutMs: TIMEOUT_MS,
        arbiter: storageArbiter(clients[2]!),
        restore: snapshot,
        devices: devices(fileC),
      });
      expect(await successor.connectBackup(`ws://127.0.0.1:${await clone.listening}`)).toBe(true);
      expect(await client.command("INCR", "hits")).toBe(1);
      client.close();
      await setKeys(live, 150, 170, VALUE);

      // Powered off, the live copy and the clone's are equal, block by block.
      successor.control(ControlKind.PowerOff);
      const [b2, c2] = await Promise.all([second.backup.done, clone.done]);
      expect(b2.stop, b2.message ?? "").toBe("poweroff");
      expect(c2.stop, c2.message ?? "").toBe("poweroff");
      expect(c2.digest).toBe(b2.digest);
      expect(differingBlocks(fileB, fileC)).toEqual([]);
    } finally {
      for (const client of clients) await client.close();
      await storage.close();
    }
  });
});

describe("non-shared disks under racing IOs", () => {
  it("a clone taken mid-run, with writes in flight, ends with the same copy block by block", async () => {
    const dir = tempDir("local-racer");
    writeDiskRacer(dir, 1500);
    const module = loadGuest(await watFile(path.join(dir, "racer.wat"), dir)).module;
    const [fileA, fileB, fileC] = ["a", "b", "c"].map((host) => path.join(dir, host, "racer.img")) as [string, string, string];
    const storage = await startStorageServer({ dir: tempDir("local-racer-arbiter"), port: 0 });
    const clients = await Promise.all(["host-a", "host-b", "host-c"].map((clientId) => StorageClient.connect(storage.url, { clientId })));
    /** Each host's copy in a file; `onIo` hears of every IO the VM issues there. */
    const devices = (file: string, onIo: (ios: number) => void = () => {}) => ({
      diskBlocks: BLOCKS,
      diskLocal: true,
      disk: (deliver: (event: DeviceEvent) => void): DiskDevice => {
        const disk = FileDisk.open(file, BLOCKS, deliver);
        let ios = 0;
        return {
          read: (id, block, count) => (disk.read(id, block, count), onIo(++ios)),
          write: (id, block, data) => (disk.write(id, block, data), onIo(++ios)),
          close: () => disk.close(),
        };
      },
    });
    try {
      let wentLive!: () => void;
      const live = new Promise<void>((resolve) => (wentLive = resolve));
      const backup = new BackupDriver({ vmId: "racer", hostId: "host-b", module, timeoutMs: TIMEOUT_MS, arbiter: storageArbiter(clients[1]!), devices: devices(fileB), onLive: () => wentLive() });
      const port = await backup.listening;
      let midway!: () => void;
      const running = new Promise<void>((resolve) => (midway = resolve));
      const primary = new PrimaryDriver({
        vmId: "racer",
        hostId: "host-a",
        module,
        timeoutMs: TIMEOUT_MS,
        backupUrl: `ws://127.0.0.1:${port}`,
        arbiter: storageArbiter(clients[0]!),
        devices: devices(fileA, (ios) => ios === 600 && midway()),
      });
      await running;
      primary.crash();
      await live;
      const successor = backup.successor!;
      const snapshot = await successor.beginClone(10_000);
      const source = await serveDiskSync(fileB, BLOCKS);
      await syncDisk(source.url, fileC, BLOCKS);
      await source.close();
      const clone = new BackupDriver({
        vmId: "racer",
        hostId: "host-c",
        module,
        generation: successor.status().generation,
        timeoutMs: TIMEOUT_MS,
        arbiter: storageArbiter(clients[2]!),
        restore: snapshot,
        devices: devices(fileC),
      });
      expect(await successor.connectBackup(`ws://127.0.0.1:${await clone.listening}`)).toBe(true);
      const [b, c] = await Promise.all([backup.done, clone.done]);
      expect(b.stop, b.message ?? "").toBe("exit");
      expect(c.stop, c.message ?? "").toBe("exit");
      expect(c.digest).toBe(b.digest);
      expect(differingBlocks(fileB, fileC)).toEqual([]);
      expect(nonZeroBlocks(fileC)).toBe(4);
    } finally {
      for (const client of clients) await client.close();
      await storage.close();
    }
  });
});
