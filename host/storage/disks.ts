// The virtual disks of the storage server: one file of 4096-byte blocks per VM, `disks/<vm>.img`.
//
// Ordering. Every operation on a disk (open, read, write) joins that disk's one queue at the
// moment its request arrives, and the queue runs strictly in order. Racing IOs to the same
// block are therefore serialized in arrival order, the same order for every client (§3.4:
// "force such racing disk operations to execute sequentially").
//
// Durability and group commit. The queue runs in batches: everything queued when a batch
// starts is executed in order, then one fdatasync covers every write of the batch, and only
// then are the batch's answers released. Operations arriving meanwhile form the next batch and
// share its fdatasync. So a write is acknowledged only once durable, and a read is answered only
// after every write before it is durable: no client ever sees data a crash could take back.
// If the fdatasync fails, every read and write of the batch fails (IO_ERROR): after a failed
// fdatasync the page cache no longer says what is on the device.

import fs from "node:fs/promises";
import { constants } from "node:fs";
import path from "node:path";
import { BLOCK_BYTES, DISK_BLOCKS_MAX, Status } from "../../protocol/storage-frames.js";
import { assert } from "../errors.js";
import { ioError, OpError, opError } from "./errors.js";
import { fsyncDir, readAll, writeAll } from "./fsutil.js";
import type { Logger } from "../log.js";

export interface OpenResult {
  blocks: number;
  created: boolean;
}

type Pending<T> = { resolve: (value: T) => void; reject: (error: OpError) => void };

type DiskOp =
  | ({ kind: "open"; blocks: number } & Pending<OpenResult>)
  | ({ kind: "read"; block: number; count: number } & Pending<Uint8Array>)
  | ({ kind: "write"; block: number; data: Uint8Array } & Pending<void>);

/** One queue per disk. */
class Disk {
  file: fs.FileHandle | null = null;
  blocks = 0;
  readonly queue: DiskOp[] = [];
  running: Promise<void> | null = null;

  constructor(
    readonly vm: string,
    readonly filePath: string,
  ) {}

  get idle(): boolean {
    return this.running === null && this.queue.length === 0;
  }
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: OpError };

export class DiskStore {
  private readonly disks = new Map<string, Disk>();
  private readonly closing: Promise<void>[] = [];
  private closed = false;

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
    /** Disk files kept open at once; idle ones beyond it are closed, oldest use first. */
    private readonly openMax: number,
  ) {}

  open(vm: string, blocks: number): Promise<OpenResult> {
    assert(Number.isSafeInteger(blocks) && blocks >= 1 && blocks <= DISK_BLOCKS_MAX, "disk blocks in range");
    return new Promise((resolve, reject) => this.submit(vm, { kind: "open", blocks, resolve, reject }));
  }

  read(vm: string, block: number, count: number): Promise<Uint8Array> {
    return new Promise((resolve, reject) => this.submit(vm, { kind: "read", block, count, resolve, reject }));
  }

  write(vm: string, block: number, data: Uint8Array): Promise<void> {
    assert(data.length > 0 && data.length % BLOCK_BYTES === 0, "write of whole blocks");
    return new Promise((resolve, reject) => this.submit(vm, { kind: "write", block, data, resolve, reject }));
  }

  /** Waits for every queued operation, then closes every file. */
  async close(): Promise<void> {
    this.closed = true;
    // Bounded: no operation is accepted after `closed`, so each pass only waits.
    for (;;) {
      const running = [...this.disks.values()].map((disk) => disk.running).filter((p) => p !== null);
      if (running.length === 0) break;
      await Promise.all(running);
    }
    for (const disk of this.disks.values()) if (disk.file) this.closing.push(disk.file.close());
    this.disks.clear();
    await Promise.allSettled(this.closing);
  }

  /** Synchronous up to the push: the queue order is the arrival order. */
  private submit(vm: string, op: DiskOp): void {
    assert(!this.closed, "disk store used after close");
    let disk = this.disks.get(vm);
    if (disk === undefined) {
      disk = new Disk(vm, path.join(this.dir, `${vm}.img`));
      this.disks.set(vm, disk);
      this.evictIdle();
    } else {
      // Map order is the eviction order: move to the end, most recently used.
      this.disks.delete(vm);
      this.disks.set(vm, disk);
    }
    disk.queue.push(op);
    disk.running ??= this.drain(disk);
  }

  private evictIdle(): void {
    // Bounded by the map's size. Busy disks stay: they are bounded by the requests in flight.
    for (const [vm, disk] of this.disks) {
      if (this.disks.size <= this.openMax) return;
      if (!disk.idle) continue;
      this.disks.delete(vm);
      if (disk.file) this.closing.push(disk.file.close().catch(() => undefined));
    }
  }

  private async drain(disk: Disk): Promise<void> {
    while (disk.queue.length > 0) {
      const batch = disk.queue.splice(0);
      const outcomes: Outcome[] = [];
      let writes = 0;
      const startedMs = performance.now();
      for (const op of batch) {
        try {
          outcomes.push({ ok: true, value: await this.execute(disk, op) });
          if (op.kind === "write") writes++;
        } catch (error) {
          if (!(error instanceof OpError)) throw error;
          outcomes.push({ ok: false, error });
        }
      }
      if (writes > 0) {
        try {
          await disk.file!.datasync();
        } catch (error) {
          const failure = ioError(`fdatasync of disk ${disk.vm}`, error);
          this.log.error("disk sync failed", { vm: disk.vm, code: "IO_ERROR", detail: failure.message });
          batch.forEach((op, index) => {
            if (op.kind !== "open" && outcomes[index]!.ok) outcomes[index] = { ok: false, error: failure };
          });
        }
        this.log.debug("disk sync", { vm: disk.vm, ios: batch.length, writes, ms: Math.round(performance.now() - startedMs) });
      }
      batch.forEach((op, index) => {
        const outcome = outcomes[index]!;
        if (outcome.ok) (op.resolve as (value: unknown) => void)(outcome.value);
        else op.reject(outcome.error);
      });
    }
    disk.running = null;
    if (this.disks.size > this.openMax) this.evictIdle();
  }

  private async execute(disk: Disk, op: DiskOp): Promise<unknown> {
    if (op.kind === "open") return this.openFile(disk, op.blocks);
    await this.openExisting(disk);
    const count = op.kind === "read" ? op.count : op.data.length / BLOCK_BYTES;
    if (op.block + count > disk.blocks) {
      throw opError(Status.BadRequest, `blocks [${op.block}, ${op.block + count}) are beyond the ${disk.blocks} blocks of disk ${disk.vm}`);
    }
    try {
      if (op.kind === "read") {
        const data = new Uint8Array(count * BLOCK_BYTES);
        await readAll(disk.file!, data, op.block * BLOCK_BYTES);
        return data;
      }
      await writeAll(disk.file!, op.data, op.block * BLOCK_BYTES);
      return undefined;
    } catch (error) {
      const failure = ioError(`${op.kind} of disk ${disk.vm} at block ${op.block}`, error);
      this.log.error(`disk ${op.kind} failed`, { vm: disk.vm, code: "IO_ERROR", detail: failure.message });
      throw failure;
    }
  }

  /** For reads and writes: the disk must exist (OPEN creates it). */
  private async openExisting(disk: Disk): Promise<void> {
    if (disk.file) return;
    let file: fs.FileHandle;
    try {
      file = await fs.open(disk.filePath, constants.O_RDWR);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") throw opError(Status.NoDisk, `vm ${disk.vm} has no disk: open it first`);
      throw ioError(`open of disk ${disk.vm}`, error);
    }
    const size = await this.sizeOf(file, disk);
    if (size === 0 || size % BLOCK_BYTES !== 0) {
      await file.close();
      // An empty file is an OPEN cut short by a crash: it never answered, so no data is lost.
      if (size === 0) throw opError(Status.NoDisk, `vm ${disk.vm} has no disk: open it first`);
      throw opError(Status.IoError, `disk ${disk.vm} is ${size} bytes, not whole blocks: the image is damaged`);
    }
    disk.file = file;
    disk.blocks = size / BLOCK_BYTES;
  }

  private async openFile(disk: Disk, blocks: number): Promise<OpenResult> {
    if (disk.file === null) {
      let file: fs.FileHandle;
      try {
        file = await fs.open(disk.filePath, constants.O_RDWR | constants.O_CREAT, 0o644);
      } catch (error) {
        throw this.logged(ioError(`create of disk ${disk.vm}`, error), disk.vm);
      }
      const size = await this.sizeOf(file, disk);
      if (size % BLOCK_BYTES !== 0) {
        await file.close();
        throw opError(Status.IoError, `disk ${disk.vm} is ${size} bytes, not whole blocks: the image is damaged`);
      }
      if (size === 0) {
        try {
          // Sparse: no block is allocated until written. The size and the name are made
          // durable before answering, so an acknowledged open survives a crash.
          await file.truncate(blocks * BLOCK_BYTES);
          await file.sync();
          await fsyncDir(this.dir);
        } catch (error) {
          await file.close().catch(() => undefined);
          throw this.logged(ioError(`create of disk ${disk.vm}`, error), disk.vm);
        }
        disk.file = file;
        disk.blocks = blocks;
        this.log.info("disk created", { vm: disk.vm, blocks });
        return { blocks, created: true };
      }
      disk.file = file;
      disk.blocks = size / BLOCK_BYTES;
    }
    if (disk.blocks !== blocks) {
      throw opError(Status.DiskMismatch, `disk ${disk.vm} has ${disk.blocks} blocks, not ${blocks}`);
    }
    return { blocks, created: false };
  }

  private async sizeOf(file: fs.FileHandle, disk: Disk): Promise<number> {
    try {
      const stat = await file.stat();
      if (!stat.isFile()) throw Object.assign(new Error("not a regular file"), { code: "EINVAL" });
      return stat.size;
    } catch (error) {
      await file.close().catch(() => undefined);
      throw this.logged(ioError(`stat of disk ${disk.vm}`, error), disk.vm);
    }
  }

  private logged(error: OpError, vm: string): OpError {
    this.log.error("disk open failed", { vm, code: "IO_ERROR", detail: error.message });
    return error;
  }
}
