// Disk reads executed on the backup (§4.2), the primary's half: a write must not land on the
// shared disk before the backup has read the old contents of its blocks. "If the primary VM
// does a read to a particular disk location, followed fairly soon by a write to the same disk
// location, then the disk write must be delayed until the backup VM has executed the first
// disk read."
//
// FencedDisk wraps the primary's disk device. A read passed to the device is *unconfirmed*
// until the backup has replayed past its DiskDone record (the ack's replayedSeq): the backup
// delivers a read's data only once it has read them (disk-reads.ts), so replaying past the
// record proves the backup's read is done. A write that overlaps an unconfirmed read waits
// here, before the device; so does any later IO that overlaps a waiting one, which keeps the
// device's submission order (and so the storage server's execution order) the order of the
// guest's IOs as released. A read that comes after a waiting write therefore reads what the
// write wrote, and the write never waits for reads issued after it: no starvation.
//
// Without a backup (`progress(null)`: running alone, or no FT at all) a read is confirmed as
// soon as its completion is logged: a backup cloned later starts from a snapshot that already
// holds those data, and reads whose completion comes after the snapshot stay unconfirmed
// until the new backup has replayed them. A read that failed (status ≠ 0) is confirmed when
// logged: the backup reads nothing for it.
//
// The cost is a write's latency, only for a write to blocks read moments before: it waits for
// the backup to replay the read's completion (one round trip plus the backup's replay lag).

import { EventKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { assert } from "../errors.js";
import type { DiskDevice } from "../vm/machine.js";
import { BLOCK_BYTES, DISK_IOS_MAX } from "../vm/limits.js";

interface Io {
  id: number;
  block: number;
  count: number;
  /** A write's bytes; null for a read. */
  data: Uint8Array | null;
}

interface StartedRead {
  block: number;
  count: number;
  /** The seq of its DiskDone record once logged; null while it is in flight. */
  doneSeq: number | null;
}

/**
 * Unconfirmed reads, at most: those in flight (DISK_IOS_MAX) plus those logged and not yet
 * replayed by the backup, which the logging channel's flow control bounds (§3.2).
 */
const UNCONFIRMED_READS_MAX = 1 << 16;

export class FencedDisk implements DiskDevice {
  private readonly reads = new Map<number, StartedRead>();
  /** IOs held here, in the order the guest's IOs were released. */
  private waiting: Io[] = [];
  /** The backup has replayed every record < replayedSeq; null: no backup to wait for. */
  private replayedSeq: number | null;

  /**
   * @param paired a backup exists from the start (FT): nothing is confirmed until the driver
   *   reports its progress; false: none until the driver says otherwise.
   */
  constructor(
    private readonly inner: DiskDevice,
    paired: boolean,
  ) {
    this.replayedSeq = paired ? 0 : null;
  }

  /** Writes that had to wait for a backup's read, since the start (for tests and figures). */
  writesFenced = 0;

  /** IOs held here now (for tests and figures). */
  get waitingIos(): number {
    return this.waiting.length;
  }

  read(id: number, block: number, count: number): void {
    this.submit({ id, block, count, data: null });
  }

  write(id: number, block: number, data: Uint8Array): void {
    this.submit({ id, block, count: data.length / BLOCK_BYTES, data });
  }

  /** Records the vCPU logged, in order: the DiskDone records of reads give their seqs. */
  logged(records: readonly LogRecord[]): void {
    let changed = false;
    for (const record of records) {
      if (record.kind !== RecordKind.Event || record.a !== EventKind.DiskDone) continue;
      const read = this.reads.get(record.b);
      if (read === undefined) continue;
      if (record.value !== 0n) this.reads.delete(record.b);
      else read.doneSeq = Number(record.seq);
      changed = true;
    }
    if (changed) this.settle();
  }

  /** The backup has replayed every record < replayedSeq; null: there is no backup now. */
  progress(replayedSeq: number | null): void {
    if (replayedSeq === this.replayedSeq) return;
    this.replayedSeq = replayedSeq;
    this.settle();
  }

  /**
   * The VM ended. Alone, nothing depends on the order any more (no backup, and an ended VM is
   * never cloned): what waits may land. With a backup (or after losing it to the register) what
   * waits is dropped, as a crash would drop it: a backup that goes live re-issues those writes
   * after its own reads (§3.4), while landing them now could overwrite blocks it has yet to read
   * (or, after a lost test-and-set, blocks a new primary owns).
   */
  async close(): Promise<void> {
    if (this.replayedSeq === null) {
      this.reads.clear();
      this.settle();
    }
    this.waiting = [];
    await this.inner.close();
  }

  private submit(io: Io): void {
    assert(this.waiting.length < 2 * DISK_IOS_MAX, "fenced disk queue over its bound");
    if (!this.blocked(io, this.waiting.length)) return this.start(io);
    this.waiting.push(io);
    if (io.data !== null) this.writesFenced++;
  }

  /** Whether `io` must wait: it overlaps one of the first `earlier` waiting IOs, or (a write) an unconfirmed read. */
  private blocked(io: Io, earlier: number): boolean {
    for (let i = 0; i < earlier; i++) if (overlaps(this.waiting[i]!, io)) return true;
    if (io.data === null) return false;
    for (const read of this.reads.values()) if (overlaps(read, io)) return true;
    return false;
  }

  private start(io: Io): void {
    if (io.data === null) {
      assert(this.reads.size < UNCONFIRMED_READS_MAX, "unconfirmed reads over their bound");
      this.reads.set(io.id, { block: io.block, count: io.count, doneSeq: null });
      this.inner.read(io.id, io.block, io.count);
    } else {
      this.inner.write(io.id, io.block, io.data);
    }
  }

  private settle(): void {
    for (const [id, read] of this.reads) {
      if (read.doneSeq !== null && (this.replayedSeq === null || this.replayedSeq > read.doneSeq)) this.reads.delete(id);
    }
    if (this.waiting.length === 0) return;
    // In order: an IO that still waits keeps every later IO overlapping it waiting too.
    const still: Io[] = [];
    for (const io of this.waiting) {
      if (still.some((earlier) => overlaps(earlier, io)) || (io.data !== null && [...this.reads.values()].some((read) => overlaps(read, io)))) {
        still.push(io);
      } else {
        this.start(io);
      }
    }
    this.waiting = still;
  }
}

function overlaps(a: { block: number; count: number }, b: { block: number; count: number }): boolean {
  return a.block < b.block + b.count && b.block < a.block + a.count;
}
