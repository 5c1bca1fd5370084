// The virtual block disk's main-thread half, on the storage server: the same surface as
// FileDisk (read, write, close; completions through `deliver` as DiskDone events), backed by a
// StorageClient, so that a primary and its backup share one disk (§4.1, shared disk).
//
// Ordering. FileDisk runs IOs in submission order. Here IOs are pipelined, so the same result
// is kept the way §3.4 keeps racing IOs deterministic: an IO that overlaps (shares a block
// with) an earlier IO still outstanding waits for it; IOs that do not overlap commute, so
// their order does not matter. Requests on the wire are sent in submission order, and the
// server executes a disk's IOs in arrival order.
//
// Failures. A failure that says nothing about the IO itself (storage unreachable, connection
// dropped with the IO in flight, timeout, server busy or restarting) is retried rather than
// shown to the guest: the IO waits until storage is reachable again and is sent again. This is
// the paper's stance: a VM that cannot reach shared storage waits (§2.3), and a guest OS
// copes badly with errors from its disk (§3.4). Re-sending is safe because every IO names its
// blocks and data, so it is idempotent, and the overlap rule keeps a re-sent write from
// landing after a later write to the same blocks. The wait is bounded (invariant 6): after
// `retryMsMax` (default 30 s, the order of a guest OS's own disk timeout) or `attemptsMax`
// attempts, the guest sees an IO error, -5, as it does for an error the server reports
// (IO_ERROR: the server's file system failed; BAD_REQUEST, NO_DISK: a bug or a lost disk).

import { setTimeout as sleep } from "node:timers/promises";
import { EventKind } from "../../protocol/records.js";
import { assert, LockstepError } from "../errors.js";
import type { StorageClient } from "../storage/client.js";
import { isStorageError, type StorageError } from "../storage/errors.js";
import type { DeviceEvent } from "../vm/messages.js";
import { BLOCK_BYTES, DISK_IO_BLOCKS_MAX, DISK_IOS_MAX } from "../vm/limits.js";

/** Status of a failed IO as the guest sees it in DISK_DONE (EIO), as FileDisk reports it. */
export const STATUS_IO_ERROR = -5;

export interface RemoteDiskOptions {
  /** How long an IO keeps retrying before the guest sees -5 (default 30 s). */
  retryMsMax?: number;
  /** Attempts per IO, the first included (default 64). */
  attemptsMax?: number;
  /** Pause before retrying a BUSY answer, doubling up to the max (defaults 10 ms, 1 s). */
  busyDelayMinMs?: number;
  busyDelayMaxMs?: number;
  /** Told about every failed attempt, for the host's logs; `final` when the guest sees -5. */
  onError?: (error: unknown, io: { id: number; block: number; count: number; write: boolean }, final: boolean) => void;
}

export const REMOTE_DISK_DEFAULTS = {
  retryMsMax: 30_000,
  attemptsMax: 64,
  busyDelayMinMs: 10,
  busyDelayMaxMs: 1_000,
} as const;

interface Io {
  id: number;
  block: number;
  count: number;
  /** A write's bytes; null for a read. */
  data: Uint8Array | null;
  started: boolean;
  done: Promise<void> | null;
}

export class RemoteDisk {
  /** Submitted and not yet delivered, in submission order. */
  private readonly outstanding: Io[] = [];
  private readonly options: Required<Omit<RemoteDiskOptions, "onError">> & Pick<RemoteDiskOptions, "onError">;
  private closed = false;

  private constructor(
    private readonly client: StorageClient,
    readonly vm: string,
    readonly blocks: number,
    private readonly deliver: (event: DeviceEvent) => void,
    options: RemoteDiskOptions,
  ) {
    this.options = { ...REMOTE_DISK_DEFAULTS, ...options };
  }

  /**
   * Opens (or creates, sparse) the VM's disk of exactly `blocks` blocks on the storage server,
   * waiting for the server within the same bound as an IO. The client stays the caller's: it
   * is shared with the test-and-set and other disks, and `close` leaves it open.
   */
  static async open(
    client: StorageClient,
    vm: string,
    blocks: number,
    deliver: (event: DeviceEvent) => void,
    options: RemoteDiskOptions = {},
  ): Promise<RemoteDisk> {
    const disk = new RemoteDisk(client, vm, blocks, deliver, options);
    try {
      await disk.withRetries(() => client.openDisk(vm, blocks), null);
    } catch (error) {
      throw new LockstepError("DISK_IO", `cannot open remote disk ${vm}: ${(error as Error).message}`);
    }
    return disk;
  }

  read(id: number, block: number, count: number): void {
    this.submit({ id, block, count, data: null, started: false, done: null });
  }

  write(id: number, block: number, data: Uint8Array): void {
    this.submit({ id, block, count: data.length / BLOCK_BYTES, data, started: false, done: null });
  }

  /** Waits until every IO submitted has been delivered (each within its retry bound). */
  async close(): Promise<void> {
    this.closed = true;
    // Bounded: nothing is submitted after close, and each IO ends within its retry bound. An IO
    // that waited on another is started by the time that one's `done` resolves.
    while (this.outstanding.length > 0) {
      await Promise.all(this.outstanding.filter((io) => io.started).map((io) => io.done));
    }
  }

  private submit(io: Io): void {
    assert(!this.closed, "remote disk used after close");
    assert(Number.isInteger(io.count) && io.count >= 1 && io.count <= DISK_IO_BLOCKS_MAX, "IO of 1..256 whole blocks");
    // The vCPU allows DISK_IOS_MAX in flight; as FileDisk, twice that is a bug.
    assert(this.outstanding.length < 2 * DISK_IOS_MAX, "remote disk queue over its bound");
    this.outstanding.push(io);
    if (!this.overlapsEarlier(io)) this.start(io);
  }

  private overlapsEarlier(io: Io): boolean {
    for (const other of this.outstanding) {
      if (other === io) return false;
      if (other.block < io.block + io.count && io.block < other.block + other.count) return true;
    }
    assert(false, "an IO is in the outstanding list");
  }

  private start(io: Io): void {
    io.started = true;
    io.done = this.run(io).finally(() => {
      this.outstanding.splice(this.outstanding.indexOf(io), 1);
      // Those that waited on it may go now, still in submission order.
      for (const other of this.outstanding) {
        if (!other.started && !this.overlapsEarlier(other)) this.start(other);
      }
    });
  }

  private async run(io: Io): Promise<void> {
    const what = { id: io.id, block: io.block, count: io.count, write: io.data !== null };
    try {
      if (io.data === null) {
        const data = await this.withRetries(() => this.client.read(this.vm, io.block, io.count), what);
        this.deliver({ kind: EventKind.DiskDone, arg: io.id, value: 0, data });
      } else {
        const bytes = io.data;
        await this.withRetries(() => this.client.write(this.vm, io.block, bytes), what);
        this.deliver({ kind: EventKind.DiskDone, arg: io.id, value: 0 });
      }
    } catch (error) {
      this.options.onError?.(error, what, true);
      this.deliver({ kind: EventKind.DiskDone, arg: io.id, value: STATUS_IO_ERROR });
    }
  }

  /** Runs `attempt` until it succeeds, fails for good, or the retry bound is reached. */
  private async withRetries<T>(attempt: () => Promise<T>, what: Parameters<NonNullable<RemoteDiskOptions["onError"]>>[1] | null): Promise<T> {
    const startedMs = performance.now();
    // Bounded by attemptsMax (and, through the waits, by retryMsMax).
    for (let attempts = 1; ; attempts++) {
      let failure: StorageError;
      try {
        return await attempt();
      } catch (error) {
        if (!isStorageError(error) || !error.retryable) throw error;
        failure = error;
      }
      const leftMs = this.options.retryMsMax - (performance.now() - startedMs);
      if (attempts >= this.options.attemptsMax || leftMs <= 0) throw failure;
      if (what !== null) this.options.onError?.(failure, what, false);
      // Storage unreachable: wait for it, as long as the bound allows (rejects when it does not).
      await this.client.waitReachable(leftMs);
      if (failure.code === "BUSY") {
        await sleep(Math.min(this.options.busyDelayMaxMs, this.options.busyDelayMinMs * 2 ** Math.min(attempts - 1, 20)));
      }
    }
  }
}
