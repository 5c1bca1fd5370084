// The records of a Lockstep execution log. The same records are written to a log file by
// `lockstep record` and travel over the logging channel between a primary and its backup.
//
// Every record carries the instruction count (icount) at which the primary produced it:
// the backup checks its own count against it (divergence detection) and, for events, uses it
// as the exact delivery point. Sequence numbers are dense, start at 0, and order the records.

/** What a record is. Values are part of the wire format: never renumber. */
export enum RecordKind {
  /** An asynchronous event delivered to the guest's `__ls_irq` at `icount`. */
  Event = 1,
  /** The result of a synchronous input import (clock, random, seed, memory.grow). */
  Input = 2,
  /** A digest of memory and mutable globals at `icount` (sha256, 32 bytes in `data`). */
  Digest = 3,
  /** The execution stopped at `icount`: `a` is a StopReason, `value` the exit code. */
  End = 4,
  /** A control entry (power-off, pause, resource change): `a` is a ControlKind. */
  Control = 5,
}

/** Event kinds, as passed to `__ls_irq` (docs/abi.md). */
export enum EventKind {
  Timer = 1,
  NicAccept = 2,
  NicData = 3,
  NicClosed = 4,
  NicTxCredit = 5,
  DiskDone = 6,
}

/** Synchronous input sources. */
export enum InputKind {
  ClockMonotonic = 1,
  ClockWall = 2,
  Random = 3,
  Seed = 4,
  MemoryGrow = 5,
}

export enum StopReason {
  /** The guest called exit(code) or ran out of work. */
  Exit = 1,
  /** The recorder was asked to stop (--seconds, --max-instructions, Ctrl-C). */
  Stopped = 2,
  /** The guest trapped; `data` holds the UTF-8 message. */
  Trap = 3,
}

export enum ControlKind {
  PowerOff = 1,
  Pause = 2,
  Resume = 3,
  /** `value`: the new limit on guest memory in 64 KiB pages, for later memory.grow calls. */
  MemoryMax = 4,
  /**
   * No effect. An FT primary logs one at a checkpoint after it has logged nothing for a while:
   * a backup may replay only up to its last record's count (an input could come right after
   * it), so without these a compute-bound guest's backup would wait for the next output and
   * lag by all the time in between (§3.2).
   */
  Progress = 5,
  /**
   * A digest probe: `data` is the sha256 of memory and mutable globals at this count, as the
   * recorder computed it (32 bytes). A replay computes its own there and diverges if they
   * differ. An operator asks for one to compare replicas (`POST /api/vms/:vm/digest`); it has
   * no effect on the guest.
   */
  Digest = 6,
}

/**
 * One log record. A flat shape so that one codec serves every kind:
 *
 * | kind    | a                | b                 | value                 | data                  |
 * |---------|------------------|-------------------|-----------------------|-----------------------|
 * | Event   | EventKind        | arg0 (irq `a`)    | arg1 (irq `b`)        | NIC/disk payload      |
 * | Input   | InputKind        | 0                 | clock ns / grow result| random bytes          |
 * | Digest  | 0                | 0                 | 0                     | sha256 (32 bytes)     |
 * | End     | StopReason       | 0                 | exit code             | trap message (UTF-8)  |
 * | Control | ControlKind      | 0                 | argument              | Digest: sha256; else —|
 *
 * `a` and `b` are unsigned 32-bit; `value` is a signed 64-bit integer.
 */
export interface LogRecord {
  kind: RecordKind;
  seq: bigint;
  icount: bigint;
  a: number;
  b: number;
  value: bigint;
  data: Uint8Array;
}

/** The first thing in a log file and the first message on a logging channel. */
export interface LogHeader {
  /** Format version; a reader refuses versions it does not know. */
  version: number;
  /** sha256 of the guest's original (uninstrumented) .wasm, 32 bytes. */
  moduleHash: Uint8Array;
  /** Wall-clock time the log was started, in milliseconds since the Unix epoch. */
  createdMs: number;
  /** The VM's configuration as JSON (guest name, disk size, ...): replay needs it. */
  config: string;
}

export const EMPTY_BYTES = new Uint8Array(0);
