// Messages between a VM's main-thread half (devices, sockets, log) and its vCPU worker.
//
// The worker never returns to its event loop while the guest runs, so it reads its inbox
// synchronously (receiveMessageOnPort) at delivery points, and sleeps with Atomics.wait when
// idle. The main thread bumps a shared counter after every post so that the worker learns
// there is mail with one Atomics.load per checkpoint.

import type { MessagePort } from "node:worker_threads";
import type { ControlKind, EventKind, LogRecord } from "../../protocol/records.js";
import type { DiskReads } from "../devices/disk-reads.js";
import type { DiskIoSnapshot, VmSnapshot } from "./snapshot.js";

export type VmMode = "live" | "record" | "replay";

/** An asynchronous event as a device produces it (args as logged; see docs/log-format.md). */
export interface DeviceEvent {
  kind: EventKind;
  /** Timer: periods; NIC: connection id; disk: IO id. */
  arg: number;
  /** NicAccept: virtual port; NicData: byte count; NicTxCredit: bytes; DiskDone: status. */
  value: number;
  data?: Uint8Array;
}

/** What the vCPU needs to boot, sent in workerData. */
export interface VcpuBoot {
  mode: VmMode;
  /** The instrumented module's bytes. */
  wasm: Uint8Array;
  globals: { exportName: string; type: "i32" | "i64" | "f32" | "f64" }[];
  diskBlocks: number;
  /**
   * "backup": a read's DiskDone is logged with a read reference instead of its data, and a
   * replay takes the data from `backup_read` messages (§4.2, host/devices/disk-reads.ts).
   */
  diskReads: DiskReads;
  /**
   * The disk is this VM's own copy (§4.1, non-shared; docs/local-disks.md): a replay posts its
   * disk writes too, the Machine writes them to the backup's copy, and the replay delivers a
   * write's logged completion only once its own write is done (a `backup_read` message).
   */
  diskLocal: boolean;
  memoryPagesMax: number;
  /** Record: stop at the first delivery point at or past this count. */
  maxInstructions: bigint | null;
  /** Replay: stop at the first delivery point at or past this count. */
  untilIcount: bigint | null;
  /** Return these bytes of linear memory with the result (time travel's memory view). */
  memoryWindow: { offset: number; length: number } | null;
  /** Record: add a Digest record at every output, so replay checks state there. */
  digestAtOutputs: boolean;
  /**
   * Record: add an empty Digest record (a marker) at every output, counted in the output's
   * `seq`, so that exactly one of primary and backup emits each output (docs/log-format.md).
   * digestAtOutputs implies it: a full digest is a marker too.
   */
  markOutputs: boolean;
  /**
   * Record/live: when set, each slice between mailbox checks has a pseudo-random length drawn
   * from this seed, so asynchronous events land at randomized counts (for testing).
   */
  jitterSeed: number | null;
  /** Record: log a Progress control at a checkpoint after this long without a record (FT). */
  progressMs: number | null;
  /** Replay: at the end of the log, go on as this mode instead of stopping (a backup going live). */
  goLiveAs: "live" | "record" | null;
  /**
   * The NIC is a switch link (docs/switch.md), not local sockets: connections are streams that
   * outlive this host, so they stay open when a backup goes live; each received chunk, once
   * logged, is acknowledged to the switch by a `nic_rx_ack` output (held under the Output Rule
   * like any output, and never marked: a repeated ack is harmless); sends carry their offset.
   */
  streamNic: boolean;
  /** Take a snapshot at the first idle point at or past this count (then go on). */
  snapshotAtIdle: bigint | null;
  /** Start from this snapshot instead of booting the guest. */
  restore: VmSnapshot | null;
  /** Shared Int32Array: [MAIL] is bumped by the main thread after each post (on either port). */
  control: SharedArrayBuffer;
  /** Device events and the log. */
  port: MessagePort;
  /** Stop and control requests: read before `port`, and even while events back up there. */
  urgentPort: MessagePort;
}

export const CONTROL_MAIL = 0;
/**
 * Non-zero while the log buffer downstream is full (§3.2): the vCPU stops at its next log
 * flush until it is cleared, so at most one batch (LOG_BATCH_RECORDS_MAX) more arrives.
 */
export const CONTROL_STALL = 1;
/**
 * Record/live: the share of its CPU the vCPU may use, in permille (1000: all of it). Lowered
 * when the backup lags (§3.2); the vCPU sleeps after each slice to match it.
 */
export const CONTROL_CPU_SHARE = 2;
export const CONTROL_SLOTS = 3;
export const CPU_SHARE_FULL = 1000;

/** Main thread → vCPU. */
export type ToVcpu =
  | { t: "event"; event: DeviceEvent }
  /** Replay: more of the log, in order. */
  | { t: "records"; records: LogRecord[] }
  /** Replay: the log ends here; no more records will come. */
  | { t: "records_end" }
  /**
   * Replay, diskReads "backup": the backup's own read for the logged read `id` (status 0 and
   * the data), or its final failure (status < 0, no data). diskLocal: the backup's own write
   * `id` to its copy completed with this status (no data).
   */
  | { t: "backup_read"; id: number; value: number; data?: Uint8Array }
  /** Record/live: stop at the next delivery point. */
  | { t: "stop" }
  /**
   * Record/live: a control entry (§3.3), applied and logged at the next checkpoint or idle
   * point. `value`: MemoryMax's page limit; 0 for the others.
   */
  | { t: "control"; kind: ControlKind; value: number }
  /**
   * Record/live: take a snapshot at the next point where one can be taken and post it, then
   * go on (a live clone, §3.1). Every record before the snapshot's seq is posted before it.
   */
  | { t: "snapshot" };

/** An output of the guest. Held under the Output Rule until `afterSeq` records are safe. */
export type Output =
  | { o: "console"; text: Uint8Array }
  | { o: "nic_listen"; port: number }
  /** `offset`: the stream offset of data's first byte (bytes the guest sent before on conn). */
  | { o: "nic_send"; conn: number; offset: number; data: Uint8Array }
  /** `offset`: every byte the guest sent on conn. */
  | { o: "nic_close"; conn: number; offset: number }
  /** streamNic: the client bytes below `offset` are logged (once released: safe at the backup). */
  | { o: "nic_rx_ack"; conn: number; offset: number }
  | { o: "disk_read"; id: number; block: number; count: number }
  | { o: "disk_write"; id: number; block: number; count: number; data: Uint8Array };

export interface VmResult {
  icount: bigint;
  digest: string;
  entries: number;
  /** How the run ended. */
  /** "poweroff": a PowerOff control ended it (exit code 0; a recording has no End record). */
  stop: "exit" | "stopped" | "poweroff" | "trap" | "divergence" | "error";
  exitCode: number;
  /** For trap, divergence and error: one line that says what happened. */
  message: string | null;
  /** The bytes asked for with `memoryWindow`, clamped to the memory's size, as the run ended. */
  memory?: { offset: number; bytes: Uint8Array; sizeBytes: number };
}

/** vCPU → main thread. */
export type FromVcpu =
  /** Log records in order (record mode). */
  | { t: "log"; records: LogRecord[] }
  /** `seq`: how many log records precede this output; it may leave once they are safe. */
  | { t: "out"; seq: number; out: Output }
  /** Receive-buffer space the guest freed on `conn`: host-side flow control, not an output. */
  | { t: "rx_consumed"; conn: number; bytes: number }
  /** Replay: records consumed so far (flow control for the feeder). */
  | { t: "consumed"; count: number; icount: bigint }
  /** Record: the vCPU has stopped for a stall (sent once per stall). */
  | { t: "stalled"; seq: number }
  /** `requested`: the answer to a snapshot request, not the boot's snapshotAtIdle. */
  | { t: "snapshot"; snapshot: VmSnapshot; requested: boolean }
  /** Record/live: the guest stopped running for a Pause control (true), or resumed (false). */
  | { t: "paused"; paused: boolean }
  /**
   * A digest probe (ControlKind.Digest) at `icount`: record/live took it, replay `checked` it
   * against the logged one (a mismatch ends the replay as a divergence instead).
   */
  | { t: "digest"; icount: bigint; digest: Uint8Array; checked: boolean }
  /**
   * Replay went live at the end of the log: open the listening ports and re-issue the disk IOs
   * that were in flight. Records from here on continue at `seq`.
   */
  | {
      t: "live";
      icount: bigint;
      seq: number;
      listening: number[];
      diskIos: DiskIoSnapshot[];
      streams: StreamPosition[];
      /** Connection ids below this are the replayed execution's: a local NIC numbers new ones from here. */
      connIdsFrom: number;
    }
  | { t: "done"; result: VmResult };

/**
 * Where a connection stands, in bytes since it opened: what a stream NIC tells the switch when
 * a backup goes live. Derived from the log alone, so primary and backup agree on it.
 */
export interface StreamPosition {
  conn: number;
  /** Client bytes delivered to the guest. */
  rx: number;
  /** Bytes the guest sent. */
  tx: number;
  /** Transmit credit delivered to the guest. */
  credit: number;
  /**
   * The output bytes [credit, tx): sent, but not known to have reached the client. The primary
   * may have released them into a link that died with its host, so the new primary sends them
   * again and the switch keeps what its client lacks. At most TX_WINDOW_BYTES.
   */
  unconfirmed: Uint8Array;
}
