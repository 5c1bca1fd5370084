// A VM snapshot: linear memory, the guest's mutable globals, the instruction count and the
// guest-visible state of every device. Taken at an idle point (no export running, no stack to
// save), or in the middle of an export at a loop-header checkpoint, with the guest's Wasm stack
// unwound by asyncify into `stack` (docs/snapshots.md). Restoring it into a fresh instance
// continues identically.

/** The guest's unwound Wasm stack: the export it runs under, and asyncify's saved frames. */
export interface StackSnapshot {
  /** The export the host called (from the top level, never from inside an import). */
  export: "main" | "__ls_run";
  /**
   * asyncify's data, position-independent: the saved locals and call indices, innermost frame
   * first. Rewinding places it after an 8-byte header anywhere in linear memory.
   */
  data: Uint8Array;
}

export interface ConnSnapshot {
  id: number;
  rx: Uint8Array;
  peerClosed: boolean;
  txWindow: number;
  /** Stream offsets (StreamPosition); absent in older snapshots, which had no stream NIC. */
  rxTotal?: number;
  txTotal?: number;
  creditTotal?: number;
  unconfirmed?: Uint8Array;
}

export interface DiskIoSnapshot {
  id: number;
  tag: number;
  ptr: number;
  count: number;
  write: boolean;
  block: number;
  /** A write's bytes, for re-issue on go-live. */
  data: Uint8Array | null;
}

export interface VmSnapshot {
  icount: bigint;
  /** How many log records the execution had produced or consumed at this point. */
  seq: number;
  memory: Uint8Array;
  /** In the order of the instrumented module's `globals`; i64 as bigint. */
  globals: (number | bigint)[];
  devices: {
    timerPeriodMs: number;
    irqMasked: boolean;
    listening: number[];
    conns: ConnSnapshot[];
    diskIos: DiskIoSnapshot[];
    nextDiskIoId: number;
    /** The memory.grow limit if a MemoryMax control set it; absent in older snapshots. */
    memoryPagesMax?: number;
  };
  /** Present when taken mid-export: restoring rewinds into this stack. Absent at idle points. */
  stack?: StackSnapshot;
  /**
   * Diagnostics, not state: how long the guest stood still for this snapshot, in ms (copying
   * memory, unwinding and rewinding). Absent at idle points.
   */
  pauseMs?: number;
}
