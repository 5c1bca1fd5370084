// A VM snapshot, taken while the guest is idle (no export running, so no stack to save):
// linear memory, the guest's mutable globals, the instruction count and the guest-visible
// state of every device. Restoring it into a fresh instance continues identically.

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
}
