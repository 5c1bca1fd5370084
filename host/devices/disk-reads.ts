// Disk reads executed on the backup (§4.2), the backup's half: with `diskReads: "backup"` the
// primary logs a read's DiskDone without its data, only a *read reference* (where it read),
// and the replaying backup reads the same blocks itself from the shared disk.
//
// When the backup reads. Not when it replays the read's submission: at that point the
// primary's read may not have executed yet (it can wait in the device behind an earlier
// overlapping write still in flight), so the backup could see the disk before that write. The
// backup reads once it has *received* the DiskDone record: the primary logged it after its
// read executed, so every write the primary's read saw has landed too, and the primary holds
// any later write to those blocks until the backup has replayed past the record (ReadFence,
// read-fence.ts). The read starts on receipt, ahead of the replay (a prefetch, bounded by
// `BACKUP_READS_AHEAD_MAX`), and the vCPU waits for its data only if it reaches the record
// first: the paper's "wait if they are not physically completed".
//
// Failures (§4.2). A primary read that failed is logged with its status and no reference:
// the backup delivers that status and reads nothing (its own read might succeed). A backup
// read that fails is issued again (the device has already retried transient errors for up
// to its own bound) until `BACKUP_READ_ATTEMPTS_MAX` attempts; after that the vCPU stops with
// BACKUP_READ_FAILED rather than deliver other bytes than the primary's. A backup that stops
// acks nothing more, so its primary declares it failed after the timeout, wins the register
// and runs alone until a new backup is cloned (§3.1): a backup that cannot read the disk
// must not be the one to go live.

import { EventKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { assert } from "../errors.js";
import type { DeviceEvent } from "../vm/messages.js";

/** Where a VM's read data come from on its backup: the log, or the shared disk (§4.2). */
export type DiskReads = "logged" | "backup";

/** A read reference: u32 first block, u32 block count, little-endian. */
export const READ_REFERENCE_BYTES = 8;
/** Backup reads started ahead of the replay, at most (the vCPU allows 64 IOs in flight). */
export const BACKUP_READS_AHEAD_MAX = 32;
/** Attempts of one backup read on the device before the backup gives up (each retries itself). */
export const BACKUP_READ_ATTEMPTS_MAX = 4;
/** Status the vCPU gets for a backup read that failed for good (EIO). */
const STATUS_IO_ERROR = -5;

export function encodeReadReference(block: number, count: number): Uint8Array {
  const bytes = new Uint8Array(READ_REFERENCE_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, block, true);
  view.setUint32(4, count, true);
  return bytes;
}

export function decodeReadReference(data: Uint8Array): { block: number; count: number } {
  assert(data.length === READ_REFERENCE_BYTES, "a read reference is 8 bytes");
  const view = new DataView(data.buffer, data.byteOffset, data.length);
  return { block: view.getUint32(0, true), count: view.getUint32(4, true) };
}

/** A successful read's DiskDone record that names its blocks instead of carrying them. */
export function isReadReference(record: LogRecord): boolean {
  return record.kind === RecordKind.Event && record.a === EventKind.DiskDone && record.value === 0n && record.data.length === READ_REFERENCE_BYTES;
}

/** What a BackupReader needs of the disk device. */
export interface ReadDevice {
  read(id: number, block: number, count: number): void;
}

interface Pending {
  /** The seq of its DiskDone record. */
  seq: number;
  id: number;
  block: number;
  count: number;
  attempts: number;
}

/**
 * The Machine's side of backup reads: fed the records on their way to the replaying vCPU, it
 * reads each referenced range on the device and hands each result (data, or a final failure)
 * to `answer` exactly once. At most BACKUP_READS_AHEAD_MAX reads are started and not yet
 * consumed by the vCPU (running, or answered and waiting there), so read-ahead memory is
 * bounded; the oldest unconsumed read is always among them, so the vCPU never waits on a
 * read that is not running.
 */
export class BackupReader {
  /** References received, in log order: [0, queueHead) started, the rest not yet. */
  private readonly queue: Pending[] = [];
  private queueHead = 0;
  /** Started and still running (answered ones are only counted in queue[0, queueHead)). */
  private readonly started = new Map<number, Pending>();

  constructor(
    private readonly device: ReadDevice,
    private readonly answer: (id: number, value: number, data: Uint8Array | undefined) => void,
    private readonly onError: (message: string) => void,
  ) {}

  /** Records on their way to the vCPU, in order. */
  received(records: readonly LogRecord[]): void {
    for (const record of records) {
      if (!isReadReference(record)) continue;
      const { block, count } = decodeReadReference(record.data);
      this.queue.push({ seq: Number(record.seq), id: record.b, block, count, attempts: 0 });
    }
    this.startMore();
  }

  /** The vCPU has consumed every record < count: their reads no longer count as ahead. */
  consumed(count: number): void {
    let done = 0;
    while (done < this.queueHead && this.queue[done]!.seq < count) done++;
    if (done === 0) return;
    this.queue.splice(0, done);
    this.queueHead -= done;
    this.startMore();
  }

  /** A device completion: true if it was one of ours (then it is not the guest's event). */
  completed(event: DeviceEvent): boolean {
    if (event.kind !== EventKind.DiskDone) return false;
    const read = this.started.get(event.arg);
    if (read === undefined) return false;
    if (event.value !== 0 || event.data === undefined) {
      const final = read.attempts >= BACKUP_READ_ATTEMPTS_MAX;
      this.onError(`backup read of blocks ${read.block}+${read.count} failed (status ${event.value}, attempt ${read.attempts} of ${BACKUP_READ_ATTEMPTS_MAX})`);
      if (!final) {
        read.attempts++;
        this.device.read(read.id, read.block, read.count);
        return true;
      }
      this.started.delete(read.id);
      this.answer(read.id, event.value !== 0 ? event.value : STATUS_IO_ERROR, undefined);
    } else {
      this.started.delete(read.id);
      this.answer(read.id, 0, event.data);
    }
    this.startMore();
    return true;
  }

  private startMore(): void {
    while (this.queueHead < BACKUP_READS_AHEAD_MAX && this.queueHead < this.queue.length) {
      const read = this.queue[this.queueHead++]!;
      assert(!this.started.has(read.id), "IO ids are unique within a run");
      read.attempts = 1;
      this.started.set(read.id, read);
      this.device.read(read.id, read.block, read.count);
    }
  }
}
