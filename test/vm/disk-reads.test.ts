// Disk reads executed on the backup (§4.2; host/devices/disk-reads.ts): with diskReads
// "backup" a read's DiskDone is logged with a read reference instead of its data, and a replay
// reads the blocks itself. Recorded and replayed here with in-memory disk doubles: digests
// agree, failed reads on either side are handled as §4.2 says, and mismatched modes are refused.

import fs from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { encodeRecords } from "../../protocol/codec.js";
import { EventKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { READ_REFERENCE_BYTES } from "../../host/devices/disk-reads.js";
import { FencedDisk } from "../../host/devices/read-fence.js";
import { loadGuest, type Guest } from "../../host/vm/guest.js";
import { Machine, recordsSource, type DiskDevice } from "../../host/vm/machine.js";
import type { DeviceEvent, VmResult } from "../../host/vm/messages.js";
import { BLOCK_BYTES } from "../../host/vm/limits.js";
import { tempDir } from "../helpers/cli.js";
import { watFile } from "../helpers/wat.js";

// Reads block 1 to 4096, blocks 2..5 to 8192 and block 7 to 24576, keeps each read's status
// at 0, 4 and 8, and exits with 0 once all three completed (whatever their status).
const THREE_READS = `
(module
  (import "lockstep" "disk_read" (func $disk_read (param i32 i32 i32 i32) (result i32)))
  (import "lockstep" "exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $done (mut i32) (i32.const 0))
  (func (export "_start"))
  (func (export "main")
    (if (call $disk_read (i32.const 1) (i32.const 1) (i32.const 4096) (i32.const 1)) (then (call $exit (i32.const 3))))
    (if (call $disk_read (i32.const 2) (i32.const 4) (i32.const 8192) (i32.const 2)) (then (call $exit (i32.const 3))))
    (if (call $disk_read (i32.const 7) (i32.const 1) (i32.const 24576) (i32.const 4)) (then (call $exit (i32.const 3)))))
  (func (export "__ls_irq") (param $kind i32) (param $tag i32) (param $status i32) (result i32)
    (global.set $done (i32.or (global.get $done) (local.get $tag)))
    (i32.store (i32.shl (i32.shr_u (local.get $tag) (i32.const 1)) (i32.const 2)) (local.get $status))
    (i32.const 1))
  (func (export "__ls_run")
    (if (i32.eq (global.get $done) (i32.const 7)) (then (call $exit (i32.const 0))))))
`;

/** Blocks in a map; reads of `failing` blocks fail (-5) `failures` times, then succeed. */
class MemoryDisk implements DiskDevice {
  readonly ios: string[] = [];
  failures = Infinity;

  constructor(
    private readonly deliver: (event: DeviceEvent) => void,
    readonly blocks: Map<number, Uint8Array>,
    private readonly failing: Set<number> = new Set(),
  ) {}

  read(id: number, block: number, count: number): void {
    this.ios.push(`read ${block}+${count}`);
    if (this.failing.has(block) && this.failures > 0) {
      this.failures--;
      setImmediate(() => this.deliver({ kind: EventKind.DiskDone, arg: id, value: -5 }));
      return;
    }
    const data = new Uint8Array(count * BLOCK_BYTES);
    for (let i = 0; i < count; i++) {
      const stored = this.blocks.get(block + i);
      if (stored) data.set(stored, i * BLOCK_BYTES);
    }
    setImmediate(() => this.deliver({ kind: EventKind.DiskDone, arg: id, value: 0, data }));
  }

  write(id: number, block: number, data: Uint8Array): void {
    this.ios.push(`write ${block}+${data.length / BLOCK_BYTES}`);
    for (let i = 0; i * BLOCK_BYTES < data.length; i++) this.blocks.set(block + i, data.slice(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES));
    setImmediate(() => this.deliver({ kind: EventKind.DiskDone, arg: id, value: 0 }));
  }

  async close(): Promise<void> {}
}

let guestPromise: Promise<Guest> | null = null;
function guest(): Promise<Guest> {
  guestPromise ??= (async () => {
    const dir = tempDir("disk-reads");
    const wat = path.join(dir, "three-reads.wat");
    fs.writeFileSync(wat, THREE_READS);
    return loadGuest(await watFile(wat, dir));
  })();
  return guestPromise;
}

function image(): Map<number, Uint8Array> {
  const blocks = new Map<number, Uint8Array>();
  for (let b = 0; b < 8; b++) blocks.set(b, randomBytes(BLOCK_BYTES));
  return blocks;
}

interface Run {
  result: VmResult;
  disk: MemoryDisk;
}

async function record(diskReads: "logged" | "backup", blocks: Map<number, Uint8Array>, failing?: Set<number>): Promise<Run & { records: LogRecord[] }> {
  const records: LogRecord[] = [];
  let disk: MemoryDisk | null = null;
  const result = await new Machine({
    mode: "record",
    module: (await guest()).module,
    diskBlocks: 8,
    diskReads,
    disk: (deliver) => (disk = new MemoryDisk(deliver, blocks, failing)),
    onRecords: (batch) => records.push(...batch),
  }).done;
  return { result, disk: disk!, records };
}

async function replay(
  records: LogRecord[],
  diskReads: "logged" | "backup",
  blocks: Map<number, Uint8Array>,
  failing?: { blocks: Set<number>; failures: number },
): Promise<Run & { errors: string[] }> {
  let disk: MemoryDisk | null = null;
  const errors: string[] = [];
  const result = await new Machine({
    mode: "replay",
    module: (await guest()).module,
    diskBlocks: 8,
    diskReads,
    disk: (deliver) => {
      disk = new MemoryDisk(deliver, blocks, failing?.blocks);
      disk.failures = failing?.failures ?? Infinity;
      return disk;
    },
    replay: recordsSource(records),
    onDeviceError: (message) => errors.push(message),
  }).done;
  return { result, disk: disk!, errors };
}

const diskDone = (records: LogRecord[]) => records.filter((r) => r.kind === RecordKind.Event && r.a === EventKind.DiskDone);

describe("disk reads on the backup (§4.2)", () => {
  it("the log names the blocks instead of carrying them; a replay reads them and reaches the same digest", async () => {
    const blocks = image();
    const logged = await record("logged", blocks);
    const backup = await record("backup", blocks);
    expect(backup.result.stop, backup.result.message ?? "").toBe("exit");
    expect(backup.result.exitCode).toBe(0);
    // Same execution, whichever way the data travel.
    expect(backup.result.digest).toBe(logged.result.digest);
    expect(diskDone(backup.records).map((r) => r.data.length)).toEqual([READ_REFERENCE_BYTES, READ_REFERENCE_BYTES, READ_REFERENCE_BYTES]);
    expect(diskDone(logged.records).map((r) => r.data.length).sort((a, b) => a - b)).toEqual([BLOCK_BYTES, BLOCK_BYTES, 4 * BLOCK_BYTES]);
    const loggedBytes = encodeRecords(logged.records).length;
    const backupBytes = encodeRecords(backup.records).length;
    expect(loggedBytes - backupBytes).toBeGreaterThan(6 * BLOCK_BYTES - 100);

    const replayed = await replay(backup.records, "backup", new Map(blocks));
    expect(replayed.result.stop, replayed.result.message ?? "").toBe("exit");
    expect(replayed.result.digest).toBe(backup.result.digest);
    expect(replayed.disk.ios.sort()).toEqual(["read 1+1", "read 2+4", "read 7+1"]);

    // It really is the disk the data come from: another disk, another execution.
    const other = image();
    const diverged = await replay(backup.records, "backup", other);
    expect(diverged.result.digest).not.toBe(backup.result.digest);
  });

  it("primary and backup must use the same mode: either mismatch is refused at the first read", async () => {
    const blocks = image();
    const backup = await record("backup", blocks);
    const asLogged = await replay(backup.records, "logged", new Map(blocks));
    expect(asLogged.result.stop).toBe("divergence");
    expect(asLogged.result.message).toMatch(/DISK_READS_MISMATCH.*leaves read data to the backup.*--disk-reads logged/);
    expect(asLogged.disk.ios).toEqual([]);

    const logged = await record("logged", blocks);
    const asBackup = await replay(logged.records, "backup", new Map(blocks));
    expect(asBackup.result.stop).toBe("divergence");
    expect(asBackup.result.message).toMatch(/DISK_READS_MISMATCH.*carries read data.*--disk-reads backup/);
  });

  it("a read that failed on the primary delivers the primary's status, and the backup does not read it", async () => {
    const blocks = image();
    const primary = await record("backup", blocks, new Set([7]));
    expect(primary.result.exitCode).toBe(0);
    const failed = diskDone(primary.records).filter((r) => r.value !== 0n);
    expect(failed).toHaveLength(1);
    expect(failed[0]!.data).toHaveLength(0);
    // The backup's disk would read block 7 fine: it must still see the failure.
    const replayed = await replay(primary.records, "backup", new Map(blocks));
    expect(replayed.result.stop, replayed.result.message ?? "").toBe("exit");
    expect(replayed.result.digest).toBe(primary.result.digest);
    expect(replayed.disk.ios.sort()).toEqual(["read 1+1", "read 2+4"]);
  });

  it("a backup read that fails is retried until it succeeds; one that keeps failing stops the backup, never diverging", async () => {
    const blocks = image();
    const primary = await record("backup", blocks);
    const retried = await replay(primary.records, "backup", new Map(blocks), { blocks: new Set([2]), failures: 2 });
    expect(retried.result.stop, retried.result.message ?? "").toBe("exit");
    expect(retried.result.digest).toBe(primary.result.digest);
    expect(retried.disk.ios.filter((io) => io === "read 2+4")).toHaveLength(3);
    expect(retried.errors).toHaveLength(2);

    const broken = await replay(primary.records, "backup", new Map(blocks), { blocks: new Set([2]), failures: Infinity });
    expect(broken.result.stop).toBe("divergence");
    expect(broken.result.message).toMatch(/BACKUP_READ_FAILED.*blocks 2\+4 \(status -5\)/);
  });
});

describe("the primary's read fence (read-fence.ts)", () => {
  /** Records what reaches the device. */
  class Device implements DiskDevice {
    readonly ios: string[] = [];
    read(id: number, block: number, count: number): void {
      this.ios.push(`read#${id} ${block}+${count}`);
    }
    write(id: number, block: number, data: Uint8Array): void {
      this.ios.push(`write#${id} ${block}+${data.length / BLOCK_BYTES}`);
    }
    async close(): Promise<void> {}
  }
  const done = (seq: number, id: number, value = 0n): LogRecord => ({
    kind: RecordKind.Event,
    seq: BigInt(seq),
    icount: 100n,
    a: EventKind.DiskDone,
    b: id,
    value,
    data: new Uint8Array(value === 0n ? READ_REFERENCE_BYTES : 0),
  });
  const blocks = (n: number) => new Uint8Array(n * BLOCK_BYTES);

  it("a write to blocks the backup has not read yet waits until the backup replayed the read's completion", () => {
    const device = new Device();
    const disk = new FencedDisk(device, true);
    disk.progress(0);
    disk.read(1, 10, 2);
    disk.write(2, 11, blocks(1)); // overlaps read 1: waits
    disk.write(3, 20, blocks(1)); // elsewhere: goes
    disk.read(4, 11, 1); // after the waiting write, overlapping it: waits behind it
    disk.read(5, 30, 1);
    expect(device.ios).toEqual(["read#1 10+2", "write#3 20+1", "read#5 30+1"]);
    expect(disk.waitingIos).toBe(2);
    disk.logged([done(7, 1)]);
    disk.progress(7); // the backup has not consumed record 7 yet
    expect(disk.waitingIos).toBe(2);
    disk.progress(8);
    expect(device.ios.slice(3)).toEqual(["write#2 11+1", "read#4 11+1"]);
    expect(disk.waitingIos).toBe(0);
  });

  it("a failed read holds nothing; without a backup nothing waits once the read is logged; the end drops or writes", async () => {
    const device = new Device();
    const disk = new FencedDisk(device, true);
    disk.read(1, 0, 1);
    disk.read(2, 5, 1);
    disk.write(3, 0, blocks(1));
    disk.write(4, 5, blocks(1));
    expect(disk.waitingIos).toBe(2);
    disk.logged([done(0, 1, -5n), done(1, 2)]);
    expect(device.ios.at(-1)).toBe("write#3 0+1");
    expect(disk.waitingIos).toBe(1);
    disk.progress(null); // went alone
    expect(device.ios.at(-1)).toBe("write#4 5+1");

    const ended = new Device();
    const paired = new FencedDisk(ended, true);
    paired.read(1, 0, 1);
    paired.write(2, 0, blocks(1));
    await paired.close(); // with a backup: dropped, as in a crash
    expect(ended.ios).toEqual(["read#1 0+1"]);
    const endedAlone = new Device();
    const lone = new FencedDisk(endedAlone, false);
    lone.read(1, 0, 1);
    lone.write(2, 0, blocks(1));
    await lone.close(); // alone: written
    expect(endedAlone.ios).toEqual(["read#1 0+1", "write#2 0+1"]);

    const alone = new FencedDisk(new Device(), false);
    alone.read(1, 0, 1);
    alone.write(2, 0, blocks(1)); // the read is in flight: even alone, its completion comes first
    expect(alone.waitingIos).toBe(1);
    alone.logged([done(0, 1)]);
    expect(alone.waitingIos).toBe(0);
  });
});
