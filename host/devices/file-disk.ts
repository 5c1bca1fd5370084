// The virtual block disk's main-thread half: a file of fixed-size blocks.
//
// IOs run in submission order, which serializes racing IOs to the same block the same way on
// every run. A write completes only after fdatasync, so a completed write is durable; the IOs
// queued while one batch runs form the next batch and share one fdatasync (group commit).

import fs from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { EventKind } from "../../protocol/records.js";
import { LockstepError } from "../errors.js";
import type { DeviceEvent } from "../vm/messages.js";
import { BLOCK_BYTES, DISK_IOS_MAX } from "../vm/limits.js";

/** Status of a failed IO as the guest sees it in DISK_DONE. */
const STATUS_IO_ERROR = -5;

const write = promisify(fs.write);
const fdatasync = promisify(fs.fdatasync);

interface Io {
  id: number;
  block: number;
  /** A write's bytes; null for a read. */
  data: Uint8Array | null;
  count: number;
}

export class FileDisk {
  private readonly queue: Io[] = [];
  private running: Promise<void> | null = null;

  private constructor(
    private readonly fd: number,
    readonly blocks: number,
    private readonly deliver: (event: DeviceEvent) => void,
  ) {}

  /** Opens (or creates, sparse) a disk image of exactly `blocks` blocks. */
  static open(file: string, blocks: number, deliver: (event: DeviceEvent) => void): FileDisk {
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
      const size = fs.fstatSync(fd).size;
      if (size !== 0 && size !== blocks * BLOCK_BYTES) {
        fs.closeSync(fd);
        throw new LockstepError(
          "DISK_IO",
          `disk image ${file} holds ${size / BLOCK_BYTES} blocks, not ${blocks}: pass --disk-blocks ${size / BLOCK_BYTES}`,
        );
      }
      if (size === 0) fs.ftruncateSync(fd, blocks * BLOCK_BYTES);
      return new FileDisk(fd, blocks, deliver);
    } catch (error) {
      if (error instanceof LockstepError) throw error;
      throw new LockstepError("DISK_IO", `cannot open disk image ${file}: ${(error as Error).message}`);
    }
  }

  read(id: number, block: number, count: number): void {
    this.submit({ id, block, count, data: null });
  }

  write(id: number, block: number, data: Uint8Array): void {
    this.submit({ id, block, count: data.length / BLOCK_BYTES, data });
  }

  private submit(io: Io): void {
    // The vCPU allows DISK_IOS_MAX in flight; a batch in progress holds at most as many more.
    if (this.queue.length >= 2 * DISK_IOS_MAX) throw new Error("assertion failed: disk queue over its bound");
    this.queue.push(io);
    this.running ??= this.drain();
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0);
      const events: DeviceEvent[] = [];
      let wrote = false;
      for (const io of batch) {
        try {
          if (io.data === null) {
            const data = new Uint8Array(io.count * BLOCK_BYTES);
            await readExactly(this.fd, data, io.block * BLOCK_BYTES);
            events.push({ kind: EventKind.DiskDone, arg: io.id, value: 0, data });
          } else {
            await write(this.fd, io.data, 0, io.data.length, io.block * BLOCK_BYTES);
            wrote = true;
            events.push({ kind: EventKind.DiskDone, arg: io.id, value: 0 });
          }
        } catch {
          // A full disk or a failing device: the guest gets an error status, the host goes on.
          events.push({ kind: EventKind.DiskDone, arg: io.id, value: STATUS_IO_ERROR });
        }
      }
      if (wrote) {
        try {
          await fdatasync(this.fd);
        } catch {
          // Not durable: no write of this batch may be reported done.
          for (const event of events) if (event.data === undefined) event.value = STATUS_IO_ERROR;
        }
      }
      for (const event of events) this.deliver(event);
    }
    this.running = null;
  }

  async close(): Promise<void> {
    await this.running;
    fs.closeSync(this.fd);
  }
}

function readExactly(fd: number, target: Uint8Array, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (offset: number) => {
      fs.read(fd, target, offset, target.length - offset, position + offset, (error, bytesRead) => {
        if (error) return reject(error);
        // Past the end of a sparse file reads as zeros, which `target` already holds.
        if (bytesRead === 0 || offset + bytesRead === target.length) return resolve();
        step(offset + bytesRead);
      });
    };
    step(0);
  });
}
