// Disk reads executed on the backup (§4.2) in a real pair: the kv guest on the storage
// server's shared disk, primary and backup in one process over a real logging channel, with
// `diskReads: "backup"`. The backup reads the disk itself while replaying kv's recovery (the
// read data stay off the channel), the primary's superblock write after those reads waits for
// the backup's reads (read-fence.ts), a power-off ends both sides with one digest, and after a
// crash of the primary the backup goes live serving every acknowledged write.

import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ControlKind, EventKind } from "../../protocol/records.js";
import { RespClient } from "../../host/checker/resp-client.js";
import { RemoteDisk } from "../../host/devices/remote-disk.js";
import { storageArbiter } from "../../host/ft/arbiter.js";
import { BackupDriver } from "../../host/ft/backup-driver.js";
import { PrimaryDriver } from "../../host/ft/primary-driver.js";
import { StorageClient } from "../../host/storage/client.js";
import { startStorageServer } from "../../host/storage/server.js";
import { loadGuest } from "../../host/vm/guest.js";
import { type DiskDevice, openDisk } from "../../host/vm/machine.js";
import type { DeviceEvent } from "../../host/vm/messages.js";
import { BLOCK_BYTES } from "../../host/vm/limits.js";
import { tempDir } from "../helpers/cli.js";
import { writeDiskRacer } from "../helpers/disk-racer.js";
import { setKeys } from "../helpers/kv-workload.js";
import { watFile } from "../helpers/wat.js";

const DISK_BLOCKS = 4096;
const VALUE = "v".repeat(4000);

interface Pair {
  primary: PrimaryDriver;
  backup: BackupDriver;
  address: Promise<string>;
  backupAddress: Promise<string>;
}

async function startPair(storage: { a: StorageClient; b: StorageClient }, vmId: string, generation: number): Promise<Pair> {
  const module = loadGuest("kv").module;
  const devices = async (client: StorageClient, listening: (address: string) => void) => ({
    diskBlocks: DISK_BLOCKS,
    diskReads: "backup" as const,
    disk: await openDisk((deliver) => RemoteDisk.open(client, vmId, DISK_BLOCKS, deliver)),
    listen: () => ({ host: "127.0.0.1", port: 0 }),
    onListening: (_port: number, address: { host: string; port: number }) => listening(`${address.host}:${address.port}`),
  });
  let backupListening!: (address: string) => void;
  const backupAddress = new Promise<string>((resolve) => (backupListening = resolve));
  const backup = new BackupDriver({ vmId, hostId: "host-b", module, generation, arbiter: storageArbiter(storage.b), devices: await devices(storage.b, backupListening) });
  const port = await backup.listening;
  let listening!: (address: string) => void;
  const address = new Promise<string>((resolve) => (listening = resolve));
  const primary = new PrimaryDriver({
    vmId,
    hostId: "host-a",
    module,
    generation,
    backupUrl: `ws://127.0.0.1:${port}`,
    arbiter: storageArbiter(storage.a),
    devices: await devices(storage.a, listening),
  });
  return { primary, backup, address, backupAddress };
}

describe("disk reads on the backup, in a pair on a shared disk", () => {
  it("kv recovers under FT with its read data off the log, keeps one digest, and fails over intact", async () => {
    const storage = await startStorageServer({ dir: tempDir("disk-reads-storage"), port: 0 });
    const a = await StorageClient.connect(storage.url, { clientId: "host-a" });
    const b = await StorageClient.connect(storage.url, { clientId: "host-b" });
    try {
      // A first life: kv formats its disk and stores 250 values of 4 KB; then a power-off, which
      // both sides end at the same point with the same state.
      const first = await startPair({ a, b }, "kv", 1);
      await setKeys(await first.address, 0, 250, VALUE);
      first.primary.control(ControlKind.PowerOff);
      const [primaryEnd, backupEnd] = await Promise.all([first.primary.done, first.backup.done]);
      expect(primaryEnd.stop, primaryEnd.message ?? "").toBe("poweroff");
      expect(backupEnd.stop, backupEnd.message ?? "").toBe("poweroff");
      expect(backupEnd.digest).toBe(primaryEnd.digest);

      // A second life: kv recovers a megabyte from the shared disk. The backup reads it too, so
      // the log stays small, and kv's writes after its reads wait for the backup's reads.
      const second = await startPair({ a, b }, "kv", 2);
      const address = await second.address;
      const client = new RespClient(address);
      await client.connected;
      expect(await client.command("GET", "key249")).toBe(`249:${VALUE}`);
      expect(await client.command("INCR", "hits")).toBe(1);
      client.close();
      await setKeys(address, 250, 260, VALUE);
      const logBytes = second.primary.status().logBytesSent;
      expect(logBytes).toBeLessThan(250 * 4000);
      // ...yet the ten new values travelled in it (as client input), so it is not empty.
      expect(logBytes).toBeGreaterThan(10 * 4000);

      second.primary.crash();
      const live = await second.backupAddress;
      const after = new RespClient(live);
      await after.connected;
      expect(await after.command("GET", "key0")).toBe(`0:${VALUE}`);
      expect(await after.command("GET", "key259")).toBe(`259:${VALUE}`);
      expect(await after.command("INCR", "hits")).toBe(2);
      after.close();
      second.backup.stop();
      const ended = await second.backup.done;
      expect(ended.stop, ended.message ?? "").toBe("stopped");
    } finally {
      await a.close();
      await b.close();
      await storage.close();
    }
  });
});

// Reads block 3 into 4096, then at once writes 0xab bytes from 8192 over block 3, and exits
// once the write completed: the §4.2 case of a read "followed fairly soon by a write to the
// same disk location".
const READ_THEN_WRITE = `
(module
  (import "lockstep" "disk_read" (func $disk_read (param i32 i32 i32 i32) (result i32)))
  (import "lockstep" "disk_write" (func $disk_write (param i32 i32 i32 i32) (result i32)))
  (import "lockstep" "exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $done (mut i32) (i32.const 0))
  (global $written (mut i32) (i32.const 0))
  (func (export "_start"))
  (func (export "main")
    (memory.fill (i32.const 8192) (i32.const 0xab) (i32.const 4096))
    (if (call $disk_read (i32.const 3) (i32.const 1) (i32.const 4096) (i32.const 1)) (then (call $exit (i32.const 3)))))
  (func (export "__ls_irq") (param $kind i32) (param $tag i32) (param $status i32) (result i32)
    (global.set $done (i32.or (global.get $done) (local.get $tag)))
    (i32.const 1))
  (func (export "__ls_run")
    (if (i32.and (global.get $done) (i32.const 2)) (then (call $exit (i32.const 0))))
    (if (i32.and (i32.eq (global.get $done) (i32.const 1)) (i32.eqz (global.get $written)))
      (then
        (global.set $written (i32.const 1))
        (if (call $disk_write (i32.const 3) (i32.const 1) (i32.const 8192) (i32.const 2)) (then (call $exit (i32.const 4))))))))
`;

/** One disk's blocks seen by two hosts; the backup's reads complete only when the test says. */
class SharedDisk implements DiskDevice {
  readonly ios: string[] = [];
  private readonly held: (() => void)[] = [];
  private heldWaiter: (() => void) | null = null;

  constructor(
    readonly blocks: Map<number, Uint8Array>,
    private readonly deliver: (event: DeviceEvent) => void,
    private readonly holdReads: boolean,
  ) {}

  read(id: number, block: number, count: number): void {
    this.ios.push(`read ${block}+${count}`);
    const complete = () => {
      const data = new Uint8Array(count * BLOCK_BYTES);
      for (let i = 0; i < count; i++) data.set(this.blocks.get(block + i) ?? new Uint8Array(BLOCK_BYTES), i * BLOCK_BYTES);
      this.deliver({ kind: EventKind.DiskDone, arg: id, value: 0, data });
    };
    if (!this.holdReads) return void setImmediate(complete);
    this.held.push(complete);
    this.heldWaiter?.();
  }

  write(id: number, block: number, data: Uint8Array): void {
    this.ios.push(`write ${block}+${data.length / BLOCK_BYTES}`);
    this.blocks.set(block, data.slice());
    setImmediate(() => this.deliver({ kind: EventKind.DiskDone, arg: id, value: 0 }));
  }

  /** Resolves once a read is held. */
  async readHeld(): Promise<void> {
    while (this.held.length === 0) await new Promise<void>((resolve) => (this.heldWaiter = resolve));
  }

  releaseReads(): void {
    for (const complete of this.held.splice(0)) complete();
  }

  async close(): Promise<void> {}
}

describe("the primary's write waits for the backup's read of the same block (§4.2)", () => {
  it("a write right after a read lands only once the backup has read the old contents", async () => {
    const dir = tempDir("read-then-write");
    fs.writeFileSync(path.join(dir, "read-then-write.wat"), READ_THEN_WRITE);
    const module = loadGuest(await watFile(path.join(dir, "read-then-write.wat"), dir)).module;
    const storage = await startStorageServer({ dir: tempDir("read-then-write-storage"), port: 0 });
    const a = await StorageClient.connect(storage.url, { clientId: "host-a" });
    const b = await StorageClient.connect(storage.url, { clientId: "host-b" });
    const blocks = new Map([[3, new Uint8Array(BLOCK_BYTES).fill(0x11)]]);
    let primaryDisk!: SharedDisk;
    let backupDisk!: SharedDisk;
    try {
      const backup = new BackupDriver({
        vmId: "rw",
        hostId: "host-b",
        module,
        arbiter: storageArbiter(b),
        devices: { diskBlocks: 8, diskReads: "backup", disk: (deliver) => (backupDisk = new SharedDisk(blocks, deliver, true)) },
      });
      const port = await backup.listening;
      // The write is the guest's one held output (a read is a request, not an output).
      let writeReleased!: () => void;
      const released = new Promise<void>((resolve) => (writeReleased = resolve));
      const primary = new PrimaryDriver({
        onRelease: () => writeReleased(),
        vmId: "rw",
        hostId: "host-a",
        module,
        backupUrl: `ws://127.0.0.1:${port}`,
        arbiter: storageArbiter(a),
        devices: { diskBlocks: 8, diskReads: "backup", disk: (deliver) => (primaryDisk = new SharedDisk(blocks, deliver, false)) },
      });
      // The backup has started its read of block 3 and it has not completed: the primary, which
      // read block 3 and has since released its write (the backup holds the write's marker),
      // has not let the write reach the disk.
      await Promise.all([backupDisk.readHeld(), released]);
      expect(backupDisk.ios).toEqual(["read 3+1"]);
      expect(primaryDisk.ios).toEqual(["read 3+1"]);
      expect(blocks.get(3)![0]).toBe(0x11);
      backupDisk.releaseReads();
      const [primaryEnd, backupEnd] = await Promise.all([primary.done, backup.done]);
      expect(primaryEnd.stop, primaryEnd.message ?? "").toBe("exit");
      expect(backupEnd.stop, backupEnd.message ?? "").toBe("exit");
      expect(backupEnd.digest).toBe(primaryEnd.digest);
      expect(primaryDisk.ios).toEqual(["read 3+1", "write 3+1"]);
      expect(blocks.get(3)![0]).toBe(0xab);
    } finally {
      await a.close();
      await b.close();
      await storage.close();
    }
  });
});

/** IOs of the disk-racer fixture (random one-block reads and writes, four in flight). */
const OPS = 400;

/**
 * The disk-racer guest on a shared disk read on the backup: its module, a storage server, a
 * client for each of two hosts, and the devices a side gets from its host's client.
 */
async function racerWorld(name: string) {
  const dir = tempDir(name);
  writeDiskRacer(dir, OPS);
  const module = loadGuest(await watFile(path.join(dir, "racer.wat"), dir)).module;
  const storage = await startStorageServer({ dir: tempDir(`${name}-storage`), port: 0 });
  const a = await StorageClient.connect(storage.url, { clientId: "host-a" });
  const b = await StorageClient.connect(storage.url, { clientId: "host-b" });
  const devices = async (client: StorageClient) => ({
    diskBlocks: 8,
    diskReads: "backup" as const,
    disk: await openDisk((deliver) => RemoteDisk.open(client, "racer", 8, deliver)),
  });
  return { module, storage, a, b, devices };
}

describe("racing reads and writes on a shared disk, read on the backup", () => {
  it(`${OPS} random IOs over 4 blocks: the backup replays the primary's exact execution`, async () => {
    const { module, storage, a, b, devices } = await racerWorld("disk-racer");
    try {
      const backup = new BackupDriver({ vmId: "racer", hostId: "host-b", module, arbiter: storageArbiter(b), devices: await devices(b) });
      const port = await backup.listening;
      const primary = new PrimaryDriver({
        vmId: "racer",
        hostId: "host-a",
        module,
        backupUrl: `ws://127.0.0.1:${port}`,
        arbiter: storageArbiter(a),
        devices: await devices(a),
      });
      const [primaryEnd, backupEnd] = await Promise.all([primary.done, backup.done]);
      expect(primaryEnd.stop, primaryEnd.message ?? "").toBe("exit");
      expect(backupEnd.stop, backupEnd.message ?? "").toBe("exit");
      expect(backupEnd.digest).toBe(primaryEnd.digest);
      // Writes did race the backup's reads: some had to wait for them.
      expect(primary.machine.diskWritesFenced).toBeGreaterThan(0);
    } finally {
      await a.close();
      await b.close();
      await storage.close();
    }
  });

  it("the primary dies half way: the backup goes live and finishes the run on the shared disk", async () => {
    const { module, storage, a, b, devices } = await racerWorld("disk-racer-failover");
    try {
      let wentLive!: () => void;
      const live = new Promise<void>((resolve) => (wentLive = resolve));
      const backup = new BackupDriver({ vmId: "racer", hostId: "host-b", module, arbiter: storageArbiter(b), devices: await devices(b), onLive: () => wentLive() });
      const port = await backup.listening;
      let halfway!: () => void;
      const half = new Promise<void>((resolve) => (halfway = resolve));
      let released = 0;
      const primary = new PrimaryDriver({
        vmId: "racer",
        hostId: "host-a",
        module,
        backupUrl: `ws://127.0.0.1:${port}`,
        arbiter: storageArbiter(a),
        devices: await devices(a),
        // Outputs are the writes: about half of the IOs.
        onRelease: () => ++released === OPS / 4 && halfway(),
      });
      await half;
      primary.crash();
      await live;
      const ended = await backup.done;
      expect(ended.stop, ended.message ?? "").toBe("exit");
      expect(ended.exitCode).toBe(0);
    } finally {
      await a.close();
      await b.close();
      await storage.close();
    }
  });
});
