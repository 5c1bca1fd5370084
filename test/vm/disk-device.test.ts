// An injected disk device (MachineOptions.disk) instead of a disk image file: the guest's IOs
// reach the device, its completions reach the guest as DiskDone events, and the Machine
// closes it at the end. The device here is an in-memory double.

import fs from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { EventKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { loadGuest, type Guest } from "../../host/vm/guest.js";
import { Machine, openDisk, recordsSource, type DiskDevice } from "../../host/vm/machine.js";
import type { DeviceEvent } from "../../host/vm/messages.js";
import { BLOCK_BYTES } from "../../host/vm/limits.js";
import { tempDir } from "../helpers/cli.js";
import { watFile } from "../helpers/wat.js";

// Writes a block holding 0x12345678, reads it back into other memory, and exits with 0 if the
// value came back (1 if not, 2 on an IO error, 3 or 4 if the host refused an IO).
const WRITE_THEN_READ = `
(module
  (import "lockstep" "disk_write" (func $disk_write (param i32 i32 i32 i32) (result i32)))
  (import "lockstep" "disk_read" (func $disk_read (param i32 i32 i32 i32) (result i32)))
  (import "lockstep" "exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  ;; Bit 1: the write completed; bit 2: the read completed; bit 4: the read was submitted.
  (global $done (mut i32) (i32.const 0))
  (global $status (mut i32) (i32.const 0))
  (func (export "_start"))
  (func (export "main")
    (i32.store (i32.const 0) (i32.const 0x12345678))
    (if (call $disk_write (i32.const 3) (i32.const 1) (i32.const 0) (i32.const 1))
      (then (call $exit (i32.const 3)))))
  (func (export "__ls_irq") (param $kind i32) (param $tag i32) (param $status i32) (result i32)
    (global.set $done (i32.or (global.get $done) (local.get $tag)))
    (global.set $status (i32.or (global.get $status) (local.get $status)))
    (i32.const 1))
  (func (export "__ls_run")
    (if (global.get $status) (then (call $exit (i32.const 2))))
    (if (i32.and (global.get $done) (i32.const 2))
      (then (call $exit (i32.ne (i32.load (i32.const 4096)) (i32.const 0x12345678)))))
    (if (i32.eq (global.get $done) (i32.const 1))
      (then
        (global.set $done (i32.const 5))
        (if (call $disk_read (i32.const 3) (i32.const 1) (i32.const 4096) (i32.const 2))
          (then (call $exit (i32.const 4))))))))
`;

/** Blocks in a map; each IO completes on a later turn of the event loop, as a real one does. */
class MemoryDisk implements DiskDevice {
  readonly ios: string[] = [];
  readonly blocks = new Map<number, Uint8Array>();
  closed = false;

  constructor(private readonly deliver: (event: DeviceEvent) => void) {}

  read(id: number, block: number, count: number): void {
    this.ios.push(`read ${block}+${count}`);
    const data = new Uint8Array(count * BLOCK_BYTES);
    for (let i = 0; i < count; i++) {
      const stored = this.blocks.get(block + i);
      if (stored) data.set(stored, i * BLOCK_BYTES);
    }
    setImmediate(() => this.deliver({ kind: EventKind.DiskDone, arg: id, value: 0, data }));
  }

  write(id: number, block: number, data: Uint8Array): void {
    this.ios.push(`write ${block}+${data.length / BLOCK_BYTES}`);
    for (let i = 0; i * BLOCK_BYTES < data.length; i++) {
      this.blocks.set(block + i, data.slice(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES));
    }
    setImmediate(() => this.deliver({ kind: EventKind.DiskDone, arg: id, value: 0 }));
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

async function guestFromWat(): Promise<Guest> {
  const dir = tempDir("disk-device");
  const wat = path.join(dir, "write-then-read.wat");
  fs.writeFileSync(wat, WRITE_THEN_READ);
  return loadGuest(await watFile(wat, dir));
}

describe("injected disk device", () => {
  it("the guest's IOs reach the device and its completions reach the guest; the log replays", async () => {
    const guest = await guestFromWat();
    let disk: MemoryDisk | null = null;
    const records: LogRecord[] = [];
    const result = await new Machine({
      mode: "record",
      module: guest.module,
      diskBlocks: 8,
      disk: (deliver) => (disk = new MemoryDisk(deliver)),
      onRecords: (batch) => records.push(...batch),
    }).done;
    expect(result.stop, result.message ?? "").toBe("exit");
    expect(result.exitCode).toBe(0);
    const device = disk as MemoryDisk | null;
    expect(device?.ios).toEqual(["write 3+1", "read 3+1"]);
    expect(device?.closed).toBe(true);
    const done = records.filter((r) => r.kind === RecordKind.Event && r.a === EventKind.DiskDone);
    expect(done).toHaveLength(2);
    expect(done[1]!.data).toHaveLength(BLOCK_BYTES);

    const replay = await new Machine({
      mode: "replay",
      module: guest.module,
      diskBlocks: 8,
      replay: recordsSource(records),
    }).done;
    expect(replay.exitCode).toBe(0);
    expect(replay.digest).toBe(result.digest);
  });

  it("openDisk: a device opened with its deliver function before the Machine exists", async () => {
    const guest = await guestFromWat();
    let disk: MemoryDisk | null = null;
    const factory = await openDisk(async (deliver) => (disk = new MemoryDisk(deliver)));
    const result = await new Machine({ mode: "live", module: guest.module, diskBlocks: 8, disk: factory }).done;
    expect(result.stop, result.message ?? "").toBe("exit");
    expect(result.exitCode).toBe(0);
    expect((disk as MemoryDisk | null)?.closed).toBe(true);
  });

  it("an injected disk needs its size", async () => {
    const guest = await guestFromWat();
    expect(() => new Machine({ mode: "live", module: guest.module, disk: (deliver) => new MemoryDisk(deliver) })).toThrow(
      /diskBlocks/,
    );
  });
});
