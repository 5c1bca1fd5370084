// The vCPU: runs one guest on the current (worker) thread in one of three modes.
//
//   live    devices feed events; nothing is logged.
//   record  devices feed events; every input and every delivered event is logged with the
//           instruction count (icount) at which it happened.
//   replay  the log feeds inputs and events; each event is delivered at its logged count;
//           outputs are dropped.
//
// Counting: the instrumented module keeps `fuel = icount - deadline` in an exported global
// and calls the `checkpoint` import at the first function entry or loop header where fuel
// reaches 0. The guest flushes its cached counter to the global before every call and
// reloads it after, so inside any import the global is exact and may be changed.
//
// Delivery points (docs/abi.md): checkpoints, idle (between export calls), `halt`, and the
// unmasking `irq_mask(0)`. Idle, halt and unmask first advance icount by one, so that every
// delivery point has a distinct count and a logged count names exactly one of them.
//
// Control entries (§3.3: power-off, pause, resource changes) are applied, and logged, at
// checkpoints and idle points (halt's included) only, before any event there and whatever the
// interrupt mask: they are the operator's, not the guest's. Replay applies them at the same
// points.
//
// Snapshots (docs/snapshots.md): at an idle point, or mid-export at a loop-header checkpoint
// (`checkpoint_unwind`), where asyncify unwinds the guest's stack into linear memory; the
// snapshot keeps the stack's bytes, and the guest rewinds into it at once and goes on.

import { createHash, randomFillSync } from "node:crypto";
import * as loader from "@assemblyscript/loader";
import {
  ControlKind,
  EMPTY_BYTES,
  EventKind,
  InputKind,
  RecordKind,
  StopReason,
  type LogRecord,
} from "../../protocol/records.js";
import { assert } from "../errors.js";
import { decodeReadReference, encodeReadReference, READ_REFERENCE_BYTES, BACKUP_READS_AHEAD_MAX } from "../devices/disk-reads.js";
import { ASYNCIFY_EXPORTS } from "../instrument/abi.js";
import { bytesEqual, concatBytes, hexOf } from "./bytes.js";
import {
  CONTROL_CPU_SHARE,
  CONTROL_MAIL,
  CONTROL_STALL,
  CPU_SHARE_FULL,
  type VmMode,
  type DeviceEvent,
  type FromVcpu,
  type Output,
  type ToVcpu,
  type VcpuBoot,
  type VmResult,
} from "./messages.js";
import {
  BLOCK_BYTES,
  CONNECTIONS_MAX,
  CONSOLE_WRITE_BYTES_MAX,
  DISK_IO_BLOCKS_MAX,
  DISK_IOS_MAX,
  MEMORY_PAGES_LIMIT,
  RANDOM_FILL_BYTES_MAX,
  TX_WINDOW_BYTES,
} from "./limits.js";
import type { ConnSnapshot, DiskIoSnapshot, StackSnapshot, VmSnapshot } from "./snapshot.js";

/** Record/live: instructions between two looks at the mailbox (about a millisecond). */
const SLICE_INSTRUCTIONS = 1n << 20n;
/** A batch of log records is posted once it is this long, or at the next delivery point. */
const LOG_BATCH_RECORDS_MAX = 512;
/** Events received from devices but not yet delivered. Past this the mailbox is left unread. */
const PENDING_EVENTS_MAX = 4096;
/** Control requests received but not yet applied. Past this the urgent mailbox is left unread. */
const CONTROLS_PENDING_MAX = 64;
/** Idle waits re-check the clock at least this often (a timer due, a stop request). */
const IDLE_WAIT_MS_MAX = 1000;
/** The longest sleep for a CPU share below 1, so that the vCPU never sits long unresponsive. */
const THROTTLE_SLEEP_MS_MAX = 100;
/** Replay reports consumed records this often so the feeder can send more. */
const CONSUMED_REPORT_EVERY = 256;
const NO_DEADLINE = 1n << 62n;
/** sha256, the state digest (digest()). */
const DIGEST_BYTES = 32;
/**
 * Where asyncify's data goes while the stack is unwound or rewound: an 8-byte header
 * (position, end) at this address, then the frames, up to the end of linear memory. Whatever
 * the guest had there is put back before it runs again (the snapshot holds a copy).
 */
const UNWIND_DATA_PTR = 0;
const UNWIND_HEADER_BYTES = 8;
/** asyncify_get_state's values. */
const ASYNCIFY_NORMAL = 0;

const ERR_HANDLE = -1;
const ERR_ARGUMENT = -2;
const ERR_LIMIT = -3;
const ERR_CLOSED = -4;

/** Thrown from inside an import to unwind the guest's stack and end the run. */
class Stop {
  constructor(
    readonly stop: VmResult["stop"],
    readonly exitCode: number,
    readonly message: string | null,
  ) {}
}

interface ControlRequest {
  kind: ControlKind;
  value: number;
}

interface Conn {
  rx: Uint8Array[];
  rxBytes: number;
  peerClosed: boolean;
  txWindow: number;
  /** Offsets of the stream since it opened (StreamPosition): bytes in, bytes out, credit in. */
  rxTotal: number;
  txTotal: number;
  creditTotal: number;
  /**
   * streamNic, while replaying: the output bytes [creditTotal, txTotal), in chunks, for
   * StreamPosition.unconfirmed. Bounded by the transmit window: the guest cannot send more
   * than TX_WINDOW_BYTES past its credit.
   */
  unconfirmed: Uint8Array[];
}

interface DiskIo {
  tag: number;
  ptr: number;
  count: number;
  write: boolean;
  block: number;
  /** A write's bytes as submitted, kept so that a backup going live can re-issue it (§2.3). */
  data: Uint8Array | null;
}

/** The exports binaryen's asyncify adds (modules instrumented with unwind "loops"). */
interface AsyncifyExports {
  startUnwind: (dataPtr: number) => void;
  stopUnwind: () => void;
  startRewind: (dataPtr: number) => void;
  stopRewind: () => void;
  getState: () => number;
}

/** A mid-export snapshot between its unwind and the rewind that resumes the guest. */
interface Unwinding {
  snapshot: VmSnapshot;
  startedMs: number;
  /** The guest's own bytes under asyncify's data, put back once the rewind ends. */
  original: Uint8Array | null;
  /** Restoring a snapshot: set the deadline when the rewind ends (the primary had set it). */
  setDeadline: boolean;
  /** Post the snapshot once the guest runs again (the primary; not a restore). */
  post: boolean;
}

type TopExport = StackSnapshot["export"];

/**
 * How the vCPU hears from its main thread while it runs guest code and so never returns to
 * an event loop: a synchronous read of each mailbox, and a bounded sleep until new mail. On
 * Node (vcpu-worker.ts) these are MessagePorts read with receiveMessageOnPort and a futex on
 * a shared control array; in a browser (the dashboard's live replica, host/replica/browser/)
 * the worker fetches the log itself while it sleeps.
 */
export interface VcpuMailbox {
  /** [CONTROL_MAIL] moves after each post; [CONTROL_STALL], [CONTROL_CPU_SHARE]: messages.ts. */
  readonly control: Int32Array;
  /** The next message on the urgent port (stop, snapshot, control) or the device port (events, log). */
  receive(port: "urgent" | "device"): ToVcpu | undefined;
  /** Sleeps until control[index] is no longer `value`, or `timeoutMs` pass. */
  wait(index: number, value: number, timeoutMs: number): void;
}

interface GuestExports {
  memory: WebAssembly.Memory;
  _start?: () => void;
  main?: () => void;
  __ls_irq?: (kind: number, a: number, b: number) => number;
  __ls_run?: () => void;
  __getString: (ptr: number) => string;
  [name: string]: unknown;
}

export class Vcpu {
  private readonly boot: VcpuBoot;
  /** Starts as boot.mode; a replay becomes live or record at the end of its log (go-live). */
  private mode: VmMode;
  private readonly control: Int32Array;
  private exports!: GuestExports;
  /** The instance's own exports, not the loader's wrappers: a rewind must call no other guest code. */
  private rawExports!: WebAssembly.Exports;
  private asyncify: AsyncifyExports | null = null;
  /** The export the host called from the top level (not from an import) while it runs. */
  private topExport: TopExport | null = null;
  /** Host-to-guest calls in progress: an unwind must cross Wasm frames only, so at most one. */
  private guestDepth = 0;
  private unwinding: Unwinding | null = null;
  private rewinding: Unwinding | null = null;
  private fuel!: WebAssembly.Global;
  private deadline = 0n;
  private mailSeen = 0;
  /** A mailbox was left unread at its bound: read it again at the next poll, new mail or not. */
  private mailUnread = false;
  private stopRequested = false;
  /**
   * The main thread asked for a snapshot (a live clone): taken at the next idle point or
   * unwinding checkpoint, whichever comes first.
   */
  private snapshotRequested = false;
  private readonly controls: ControlRequest[] = [];
  /** Between a Pause and a Resume control: no guest code runs (replay only notes it). */
  private paused = false;
  /** The limit for memory.grow, in pages: boot.memoryPagesMax until a MemoryMax control. */
  private memoryPagesMax: number;
  /** Record/live: when the guest last started running, for the CPU share. */
  private sliceStartMs = performance.now();

  // Log state. `seq` counts records produced (record) or consumed (replay).
  private seq = 0;
  private batch: LogRecord[] = [];
  private readonly queue: LogRecord[] = [];
  private queueHead = 0;
  private recordsEnded = false;
  /** When the last record was logged (record mode), for Progress controls. */
  private loggedAtMs = performance.now();
  private caughtUpReported = -1;

  // Device state the guest can observe: part of a snapshot.
  private timerPeriodMs = 0;
  private irqMasked = false;
  private readonly listening = new Set<number>();
  private readonly conns = new Map<number, Conn>();
  private readonly diskIos = new Map<number, DiskIo>();
  private nextDiskIoId = 1;
  /** Replay, diskReads "backup": the backup's own reads, by IO id, until delivered. */
  private readonly backupReads = new Map<number, { value: number; data: Uint8Array | undefined }>();

  // Host-side state, not guest-visible: events not yet delivered, timer phase, clock base.
  private readonly pending: DeviceEvent[] = [];
  private timerDueMs = 0;
  private monotonicBaseNs = process.hrtime.bigint();
  private jitterState: number;
  /** A memory.grow was refused at the limit: a trap after it is most likely out of memory. */
  private memoryGrowRefused = false;
  private monotonicLastNs = 0n;

  /**
   * @param outbox where results go: the worker's parentPort, whose messages Node delivers
   *   before the worker's 'exit' event, so the final result never races the exit.
   */
  constructor(
    boot: VcpuBoot,
    private readonly outbox: { postMessage(message: FromVcpu, transfer?: ArrayBuffer[]): void },
    private readonly mailbox: VcpuMailbox,
  ) {
    this.boot = boot;
    this.mode = boot.mode;
    this.control = mailbox.control;
    this.memoryPagesMax = boot.memoryPagesMax;
    this.jitterState = (boot.jitterSeed ?? 0) | 1;
  }

  run(): VmResult {
    let stop: Stop;
    try {
      this.instantiate();
      this.sliceStartMs = performance.now();
      const restore = this.boot.restore;
      if (restore) {
        this.applySnapshot(restore);
        // A clone with a disk of its own (§4.1): writes in flight at the snapshot were never
        // submitted here; write them now, so that their logged completions find them done.
        if (this.mode === "replay" && this.boot.diskLocal) {
          for (const [id, io] of this.diskIos) {
            if (io.data !== null) this.post({ t: "out", seq: this.seq, out: { o: "disk_write", id, block: io.block, count: io.count, data: io.data } });
          }
        }
        // Mid-export: finish the export the snapshot was taken in, then idle as after it.
        if (restore.stack !== undefined) this.resumeStack(restore);
      } else {
        this.setDeadline(this.nextDeadline());
        this.exports._start?.();
        this.callTop("main");
      }
      this.idleLoop();
      assert(false, "idleLoop returns only by throwing Stop");
    } catch (error) {
      stop = error instanceof Stop ? error : this.classify(error);
    }
    return this.finish(stop);
  }

  // ---- execution -------------------------------------------------------------------------

  private instantiate(): void {
    const module = new WebAssembly.Module(this.boot.wasm);
    const imports = { lockstep: this.lockstepImports(), env: this.envImports() };
    const { exports, instance } = loader.instantiateSync(module, imports) as unknown as {
      exports: GuestExports;
      instance: WebAssembly.Instance;
    };
    this.exports = exports;
    this.rawExports = instance.exports;
    this.asyncify = asyncifyExports(instance.exports);
    const fuel = (exports as Record<string, unknown>)["__ls_fuel"];
    assert(fuel instanceof WebAssembly.Global, "instrumented module exports __ls_fuel");
    this.fuel = fuel;
  }

  /** Idle: no export is running. Deliver events and run the bottom half, until the end. */
  private idleLoop(): never {
    for (;;) {
      this.advanceIcount(1n);
      this.maybeSnapshot();
      this.deliverAtIdle();
      this.callTop("__ls_run");
    }
  }

  /**
   * Calls main or __ls_run from the top level. When a checkpoint unwound the guest for a
   * snapshot, the call returns early: take the stack, rewind, and call again, until it really
   * returns. The first call goes through the loader's wrapper like any export call; the
   * rewinding calls go straight to the instance, so that no guest code but the rewind runs.
   * `rewinding`: a rewind is started already (a restore), the first call is one of those.
   */
  private callTop(name: TopExport, rewinding = false): void {
    const wrapper = this.exports[name] as (() => void) | undefined;
    const raw = this.rawExports[name] as (() => void) | undefined;
    if (wrapper === undefined || raw === undefined) return;
    let call = rewinding ? raw : wrapper;
    for (let rewinds = 0; ; rewinds++) {
      assert(rewinds <= 1 << 20, "each rewind resumes the guest: unwinds are bounded by snapshot requests");
      assert(this.topExport === null && this.guestDepth === 0, "top-level calls do not nest");
      this.topExport = name;
      this.guestDepth++;
      try {
        call();
      } finally {
        this.guestDepth--;
        this.topExport = null;
      }
      if (this.unwinding === null) return;
      this.rewindAfterUnwind(name);
      call = raw;
    }
  }

  private icount(): bigint {
    return this.deadline + (this.fuel.value as bigint);
  }

  private setDeadline(deadline: bigint): void {
    const icount = this.icount();
    this.deadline = deadline;
    this.fuel.value = icount - deadline;
  }

  /**
   * At a delivery point: returns its count and moves the deadline out of reach, so that the
   * guest code the host calls from here (the top half) runs, and is counted, without
   * re-entering the checkpoint. Every caller sets the real deadline again before returning.
   */
  private enterHost(): bigint {
    const icount = this.icount();
    this.setDeadline(NO_DEADLINE);
    return icount;
  }

  private advanceIcount(by: bigint): void {
    this.fuel.value = (this.fuel.value as bigint) + by;
  }

  private get memory(): Uint8Array {
    return new Uint8Array(this.exports.memory.buffer);
  }

  private guestBytes(ptr: number, len: number): Uint8Array {
    const memory = this.memory;
    if (ptr < 0 || len < 0 || ptr + len > memory.length) {
      throw new Stop("trap", 1, `guest passed an out-of-bounds buffer (${ptr}, ${len})`);
    }
    return memory.subarray(ptr, ptr + len);
  }

  /** Where the next checkpoint must fire. */
  private nextDeadline(): bigint {
    const icount = this.icount();
    if (this.mode === "replay") {
      let deadline = this.nextAsyncIcount();
      if (this.boot.untilIcount !== null && this.boot.untilIcount < deadline) {
        deadline = this.boot.untilIcount;
      }
      return deadline > icount ? deadline : icount + 1n;
    }
    let deadline = icount + (this.boot.jitterSeed === null ? SLICE_INSTRUCTIONS : this.jitteredSlice());
    const max = this.boot.maxInstructions;
    if (max !== null && max < deadline) deadline = max > icount ? max : icount + 1n;
    return deadline;
  }

  /** xorshift32: a slice of 1 to SLICE_INSTRUCTIONS instructions. */
  private jitteredSlice(): bigint {
    let x = this.jitterState;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.jitterState = x;
    return 1n + (BigInt(x >>> 0) % SLICE_INSTRUCTIONS);
  }

  // ---- delivery points -------------------------------------------------------------------

  /**
   * A loop header's checkpoint in a module built for unwinding. Besides what every checkpoint
   * does, it is where a requested snapshot is taken mid-export, and where the rewind that
   * follows (or that a restore starts) ends: there it returns at once, because the
   * checkpoint's work was done before the unwind.
   */
  private checkpointUnwind(): void {
    if (this.rewinding !== null) {
      this.endRewind();
      return;
    }
    this.checkpoint();
    if (this.snapshotRequested && this.mode !== "replay" && this.unwindable()) this.startUnwind();
  }

  /** Only Wasm frames under main or __ls_run: asyncify cannot unwind through a host frame. */
  private unwindable(): boolean {
    return this.asyncify !== null && this.topExport !== null && this.guestDepth === 1;
  }

  private checkpoint(): void {
    const icount = this.enterHost();
    if (this.mode === "replay") this.replayControlPoint(icount);
    if (this.mode === "replay") {
      if (!this.irqMasked) this.replayDeliver(icount);
    } else {
      const max = this.boot.maxInstructions;
      if (max !== null && icount >= max) throw this.stopHere("stopped");
      this.pollMail();
      if (this.stopRequested) throw this.stopHere("stopped");
      this.applyControls(icount);
      this.timerCheck();
      if (!this.irqMasked) this.deliverPending(icount);
      this.logProgress(icount);
      this.flushLog();
      this.throttle();
    }
    this.setDeadline(this.nextDeadline());
  }

  private deliverAtIdle(): void {
    const icount = this.enterHost();
    // Going live here (the log ended, perhaps right after controls at this point) takes the
    // live branch below at this same count.
    if (this.mode === "replay") this.replayControlPoint(icount);
    if (this.mode === "replay") {
      if (this.replayDeliver(icount) === 0) {
        if (!this.armed()) throw this.stopHere("exit");
        throw this.divergence(icount, "an event or the end at an idle point");
      }
    } else {
      for (;;) {
        this.pollMail();
        if (this.stopRequested) throw this.stopHere("stopped");
        // A guest waiting for an event is at an idle point: its snapshot resumes right here.
        this.snapshotIfRequested();
        const max = this.boot.maxInstructions;
        if (max !== null && icount >= max) throw this.stopHere("stopped");
        this.applyControls(icount);
        this.timerCheck();
        if (this.deliverPending(icount) > 0) break;
        if (!this.armed()) throw this.stopHere("exit");
        this.flushLog();
        this.waitForMail(this.idleWaitMs());
      }
      this.flushLog();
      this.sliceStartMs = performance.now();
    }
    this.setDeadline(this.nextDeadline());
  }

  private halt(): void {
    if (this.irqMasked) throw new Stop("trap", 1, "halt() with interrupts masked would never wake");
    if (!this.armed()) throw new Stop("trap", 1, "halt() with no event source armed would never wake");
    this.advanceIcount(1n);
    this.deliverAtIdle();
  }

  private irqMask(masked: number): number {
    const previous = this.irqMasked ? 1 : 0;
    this.irqMasked = masked !== 0;
    if (previous === 1 && !this.irqMasked) {
      this.advanceIcount(1n);
      const icount = this.enterHost();
      if (this.mode === "replay") this.replayStopCheck(icount);
      if (this.mode === "replay") {
        this.replayDeliver(icount);
      } else {
        this.deliverPending(icount);
      }
      this.setDeadline(this.nextDeadline());
    }
    return previous;
  }

  /** Record/live: deliver pending events in arrival order; returns how many were taken. */
  private deliverPending(icount: bigint): number {
    let delivered = 0;
    let rxAcks: Set<number> | null = null;
    while (this.pending.length > 0) {
      const event = this.pending[0]!;
      if (!this.deliverable(event)) {
        this.pending.shift();
        continue;
      }
      // Before delivery, while the IO is still known.
      const logged = this.loggedData(event);
      if (!this.deliver(event)) break;
      this.pending.shift();
      delivered++;
      if (this.mode === "record") {
        this.log(RecordKind.Event, icount, event.kind, event.arg, BigInt(event.value), logged);
      }
      if (this.boot.streamNic && event.kind === EventKind.NicData) (rxAcks ??= new Set()).add(event.arg);
    }
    if (rxAcks !== null) this.ackReceived(rxAcks);
    return delivered;
  }

  /**
   * streamNic: tell the switch how far each stream's client bytes are logged. An output, so it
   * leaves only once the backup holds the records (the switch then forgets the bytes), but not
   * a marked one: an ack that a new primary repeats changes nothing at the switch.
   */
  private ackReceived(conns: Set<number>): void {
    this.flushLog();
    for (const id of conns) {
      const conn = this.conns.get(id);
      if (conn !== undefined) this.post({ t: "out", seq: this.seq, out: { o: "nic_rx_ack", conn: id, offset: conn.rxTotal } });
    }
  }

  /** Replay: deliver the logged events at exactly this count; returns how many. */
  private replayDeliver(icount: bigint): number {
    let delivered = 0;
    for (;;) {
      const record = this.peekRecord();
      if (record === null || record.kind !== RecordKind.Event) return delivered;
      if (record.icount > icount) return delivered;
      if (record.icount < icount) throw this.divergence(icount, `an event at icount ${record.icount}`);
      const event: DeviceEvent = {
        kind: record.a as EventKind,
        arg: record.b,
        value: Number(record.value),
        data: record.data,
      };
      // Before the record counts as consumed: a backup's replay progress must not confirm a
      // read to its primary's fence (read-fence.ts) before the read is done.
      if (event.kind === EventKind.DiskDone && this.deliverable(event)) event.data = this.replayedReadData(icount, record);
      this.takeRecord();
      if (!this.deliverable(event) || !this.deliver(event)) {
        throw this.divergence(icount, "the guest to accept a logged event");
      }
      delivered++;
    }
  }

  /**
   * Record: what an event's record carries. With diskReads "backup" a successful read's data
   * stay out of the log: the record names the blocks, and the backup reads them (§4.2).
   */
  private loggedData(event: DeviceEvent): Uint8Array | undefined {
    if (event.kind !== EventKind.DiskDone || this.boot.diskReads !== "backup" || event.value !== 0) return event.data;
    const io = this.diskIos.get(event.arg)!;
    return io.write ? event.data : encodeReadReference(io.block, io.count);
  }

  /**
   * Replay: the data a logged DiskDone delivers. A failed read delivers its logged status and
   * nothing else, whatever the disk would say now (§4.2). A successful one carries its data
   * (diskReads "logged") or a read reference, whose data the backup read itself: wait for them.
   * Primary and backup must agree on the mode; a record of the other kind stops the replay at
   * once rather than guess (DISK_READS_MISMATCH).
   */
  private replayedReadData(icount: bigint, record: LogRecord): Uint8Array | undefined {
    const io = this.diskIos.get(record.b)!;
    if (io.write) {
      if (this.boot.diskLocal) this.awaitOwnWrite(icount, record.b, io);
      return record.data;
    }
    if (record.value !== 0n) return record.data;
    const referenced = record.data.length === READ_REFERENCE_BYTES;
    if (referenced !== (this.boot.diskReads === "backup")) {
      throw new Stop(
        "divergence",
        1,
        `DISK_READS_MISMATCH at icount ${icount}: the log ${referenced ? "leaves read data to the backup (--disk-reads backup)" : "carries read data (--disk-reads logged)"} but this VM runs --disk-reads ${this.boot.diskReads}: primary and backup must use the same mode`,
      );
    }
    if (!referenced) return record.data;
    const { block, count } = decodeReadReference(record.data);
    if (block !== io.block || count !== io.count) throw this.divergence(icount, `a read of blocks ${io.block}+${io.count}`);
    const read = this.awaitBackupRead(record.b);
    if (read.value !== 0 || read.data === undefined || read.data.length !== count * BLOCK_BYTES) {
      throw new Stop(
        "divergence",
        1,
        `BACKUP_READ_FAILED at icount ${icount}: this backup could not read blocks ${block}+${count} (status ${read.value}) that its primary read; it stops rather than deliver other data`,
      );
    }
    return read.data;
  }

  /**
   * Replay, diskLocal (§4.1): this backup's write of IO `id` to its own copy must be done before
   * the guest hears of the primary's: the copy then holds what the guest believes, and the
   * writes in flight stay within the guest's own limit (DISK_IOS_MAX). A copy that could not
   * be written no longer matches the primary's: this backup must not go live with it.
   */
  private awaitOwnWrite(icount: bigint, id: number, io: DiskIo): void {
    const done = this.awaitBackupRead(id);
    if (done.value !== 0) {
      throw new Stop(
        "divergence",
        1,
        `BACKUP_WRITE_FAILED at icount ${icount}: this backup could not write blocks ${io.block}+${io.count} to its own disk copy (status ${done.value}); it stops rather than go on with a copy that differs`,
      );
    }
  }

  /**
   * Replay: the backup's read for IO `id`, waiting for it if it is still running. The Machine
   * answers every read it starts exactly once, data or final failure, so this ends.
   */
  private awaitBackupRead(id: number): { value: number; data: Uint8Array | undefined } {
    for (;;) {
      const read = this.backupReads.get(id);
      if (read !== undefined) {
        this.backupReads.delete(id);
        return read;
      }
      // The Machine reads ahead only so far past what the vCPU consumed: tell it where it is.
      this.reportCaughtUp();
      this.waitForMail(IDLE_WAIT_MS_MAX);
      this.pollMail();
    }
  }

  /**
   * Replay, at a checkpoint or idle point: the end of the log or an End here, then the logged
   * controls here, then again (an End, or the end of the log, can follow controls at one point).
   */
  private replayControlPoint(icount: bigint): void {
    this.replayStopCheck(icount);
    if (this.mode === "replay" && this.replayControls(icount) > 0) this.replayStopCheck(icount);
  }

  /** Replay: apply the logged controls at exactly this count; returns how many. */
  private replayControls(icount: bigint): number {
    let applied = 0;
    for (;;) {
      const record = this.peekRecord();
      if (record === null || record.kind !== RecordKind.Control) return applied;
      if (record.icount > icount) return applied;
      if (record.icount < icount) throw this.divergence(icount, `a control at icount ${record.icount}`);
      const kind = record.a as ControlKind;
      const value = Number(record.value);
      const valid =
        kind === ControlKind.MemoryMax
          ? value >= 1 && value <= MEMORY_PAGES_LIMIT
          : kind === ControlKind.Digest
            ? value === 0 && record.data.length === DIGEST_BYTES
            : kind === ControlKind.PowerOff || kind === ControlKind.Pause || kind === ControlKind.Resume || (kind === ControlKind.Progress && value === 0);
      if (!valid) throw this.divergence(icount, "a known control");
      if (kind === ControlKind.Digest) {
        const digest = this.digest();
        if (!bytesEqual(record.data, digest)) throw this.divergence(icount, "the state digest the primary logged here");
        this.post({ t: "digest", icount, digest, checked: true });
      }
      this.takeRecord();
      applied++;
      this.applyControl(kind, value);
    }
  }

  private replayStopCheck(icount: bigint): void {
    const until = this.boot.untilIcount;
    if (until !== null && icount >= until) throw this.stopHere("stopped");
    const record = this.peekRecord();
    if (record === null) {
      if (this.recordsEnded) this.endOfLog();
      return;
    }
    // A trap's count is only as exact as the guest's last flush of its counter, so it can
    // equal an earlier checkpoint's: replay stops for a trap only by trapping itself.
    if (record.kind === RecordKind.End && record.a !== StopReason.Trap && record.icount === icount) {
      this.takeRecord();
      throw this.stopHere(record.a === StopReason.Exit ? "exit" : "stopped", null, Number(record.value));
    }
  }

  /**
   * Record/live: apply the control requests received, in order, at this delivery point. While
   * paused the guest runs no code: mail is still read (events wait in `pending`), a stop
   * request still stops it, and further controls apply here, at the same count.
   */
  private applyControls(icount: bigint): void {
    this.takeControls(icount);
    if (!this.paused) return;
    this.flushLog();
    this.post({ t: "paused", paused: true });
    while (this.paused) {
      this.waitForMail(IDLE_WAIT_MS_MAX);
      this.pollMail();
      if (this.stopRequested) throw this.stopHere("stopped");
      this.takeControls(icount);
    }
    this.flushLog();
    this.post({ t: "paused", paused: false });
    this.sliceStartMs = performance.now();
  }

  /** Record/live: decide each requested control's effect, log it, apply it. */
  private takeControls(icount: bigint): void {
    while (this.controls.length > 0) {
      const { kind, value } = this.controls.shift()!;
      let applied = 0;
      switch (kind) {
        case ControlKind.PowerOff:
          break;
        // A Pause while paused, or a Resume while running, changes nothing: nothing to log.
        case ControlKind.Pause:
          if (this.paused) continue;
          break;
        case ControlKind.Resume:
          if (!this.paused) continue;
          break;
        case ControlKind.MemoryMax: {
          // Memory never shrinks: a limit below the current size means "no more growth". The
          // effective limit is what is logged, so that a backup going live enforces the same.
          if (!(value >= 1)) continue;
          const pages = this.exports.memory.buffer.byteLength / 65536;
          applied = Math.min(MEMORY_PAGES_LIMIT, Math.max(pages, value));
          break;
        }
        case ControlKind.Digest: {
          // Logged with the state's digest, for replicas to compare theirs against.
          const digest = this.digest();
          if (this.mode === "record") this.log(RecordKind.Control, icount, kind, 0, 0n, digest);
          this.post({ t: "digest", icount, digest, checked: false });
          continue;
        }
        default:
          continue;
      }
      if (this.mode === "record") this.log(RecordKind.Control, icount, kind, 0, BigInt(applied));
      this.applyControl(kind, applied);
    }
  }

  /** What a control does, once decided (record/live) or read from the log (replay). */
  private applyControl(kind: ControlKind, value: number): void {
    switch (kind) {
      case ControlKind.PowerOff:
        throw this.stopHere("poweroff");
      case ControlKind.Pause:
        this.paused = true;
        break;
      case ControlKind.Resume:
        this.paused = false;
        break;
      case ControlKind.MemoryMax:
        this.memoryPagesMax = value;
        break;
      case ControlKind.Progress:
      case ControlKind.Digest:
        break;
    }
  }

  /**
   * Record/live: after a slice, sleep so that the guest uses only its CPU share (§3.2: the
   * primary slows down while its backup lags). Replay never throttles: it is the one behind.
   */
  private throttle(): void {
    const share = Atomics.load(this.control, CONTROL_CPU_SHARE);
    const nowMs = performance.now();
    if (share < CPU_SHARE_FULL) {
      const runMs = nowMs - this.sliceStartMs;
      const wakeMs = nowMs + Math.min(THROTTLE_SLEEP_MS_MAX, (runMs * (CPU_SHARE_FULL - share)) / share);
      // Mail wakes it; a stop or a control ends the sleep, to be answered at the next checkpoint.
      for (let leftMs = wakeMs - nowMs; leftMs > 0; leftMs = wakeMs - performance.now()) {
        this.waitForMail(leftMs);
        this.pollMail();
        if (this.stopRequested || this.controls.length > 0) break;
      }
    }
    this.sliceStartMs = performance.now();
  }

  /** Whether an event still concerns the guest (a connection may have closed meanwhile). */
  private deliverable(event: DeviceEvent): boolean {
    switch (event.kind) {
      case EventKind.Timer:
        return this.timerPeriodMs > 0;
      case EventKind.NicAccept:
        return this.listening.has(event.value) && this.conns.size < CONNECTIONS_MAX && !this.conns.has(event.arg);
      case EventKind.NicData:
      case EventKind.NicClosed:
      case EventKind.NicTxCredit:
        return this.conns.has(event.arg);
      case EventKind.DiskDone:
        return this.diskIos.has(event.arg);
    }
    return false;
  }

  /** Hands one event to the guest's top half, then applies its effect. False: ring full. */
  private deliver(event: DeviceEvent): boolean {
    let irqA = event.arg;
    let irqB = event.value;
    if (event.kind === EventKind.DiskDone) irqA = this.diskIos.get(event.arg)!.tag;
    const irq = this.exports.__ls_irq;
    if (irq !== undefined) {
      this.guestDepth++;
      let accepted: number;
      try {
        accepted = irq(event.kind, irqA, irqB);
      } finally {
        this.guestDepth--;
      }
      if (accepted === 0) return false;
    }
    switch (event.kind) {
      case EventKind.NicAccept:
        this.conns.set(event.arg, { rx: [], rxBytes: 0, peerClosed: false, txWindow: TX_WINDOW_BYTES, rxTotal: 0, txTotal: 0, creditTotal: 0, unconfirmed: [] });
        break;
      case EventKind.NicData: {
        const conn = this.conns.get(event.arg)!;
        const data = event.data ?? EMPTY_BYTES;
        conn.rx.push(data);
        conn.rxBytes += data.length;
        conn.rxTotal += data.length;
        break;
      }
      case EventKind.NicClosed:
        this.conns.get(event.arg)!.peerClosed = true;
        break;
      case EventKind.NicTxCredit: {
        const conn = this.conns.get(event.arg)!;
        conn.txWindow = Math.min(TX_WINDOW_BYTES, conn.txWindow + event.value);
        conn.creditTotal += event.value;
        trimConfirmed(conn);
        break;
      }
      case EventKind.DiskDone: {
        const io = this.diskIos.get(event.arg)!;
        this.diskIos.delete(event.arg);
        if (!io.write && event.value === 0 && event.data !== undefined) {
          // The bounce buffer reaches guest memory only now, at the delivery point (§3.4).
          this.guestBytes(io.ptr, io.count * BLOCK_BYTES).set(event.data);
        }
        break;
      }
    }
    return true;
  }

  /** Some event source exists: otherwise no event can ever arrive and the VM is done. */
  private armed(): boolean {
    return this.timerPeriodMs > 0 || this.listening.size > 0 || this.conns.size > 0 || this.diskIos.size > 0;
  }

  // ---- record/live: mailbox and timer ----------------------------------------------------

  private pollMail(): void {
    const mail = Atomics.load(this.control, CONTROL_MAIL);
    if (mail === this.mailSeen && !this.mailUnread) return;
    this.mailSeen = mail;
    // Left unread past a limit: look again at the next poll even if no new mail comes.
    this.mailUnread = !this.drainMail();
  }

  /** Reads both mailboxes; false if one stopped at its limit. */
  private drainMail(): boolean {
    // The urgent one first and on its own: a queue full of events must not hide a stop or a
    // Resume from a paused vCPU, which delivers no events until it resumes.
    let drained = true;
    for (;;) {
      if (this.controls.length >= CONTROLS_PENDING_MAX) {
        drained = false;
        break;
      }
      const message = this.mailbox.receive("urgent");
      if (message === undefined) break;
      if (message.t === "stop") this.stopRequested = true;
      else if (message.t === "snapshot") this.snapshotRequested = true;
      else if (message.t === "control") this.controls.push({ kind: message.kind, value: message.value });
      else assert(false, `${message.t} on the urgent port`);
    }
    for (;;) {
      if (this.pending.length >= PENDING_EVENTS_MAX) return false;
      const message = this.mailbox.receive("device");
      if (message === undefined) return drained;
      switch (message.t) {
        case "event":
          this.pending.push(message.event);
          break;
        case "records":
          for (const record of message.records) this.queue.push(record);
          break;
        case "records_end":
          this.recordsEnded = true;
          break;
        case "backup_read":
          // Once live, a write to the copy that was still running is of no interest.
          if (this.mode !== "replay") break;
          // The Machine starts at most BACKUP_READS_AHEAD_MAX reads ahead of the replay, and a
          // disk of its own has at most the guest's DISK_IOS_MAX writes in flight.
          assert(this.backupReads.size < 2 * BACKUP_READS_AHEAD_MAX + DISK_IOS_MAX, "backup IOs ahead over their bound");
          this.backupReads.set(message.id, { value: message.value, data: message.data });
          break;
        default:
          assert(false, `${message.t} on the device port`);
      }
    }
  }

  private waitForMail(timeoutMs: number): void {
    this.mailbox.wait(CONTROL_MAIL, this.mailSeen, timeoutMs);
  }

  private idleWaitMs(): number {
    if (this.timerPeriodMs === 0) return IDLE_WAIT_MS_MAX;
    return Math.max(0, Math.min(IDLE_WAIT_MS_MAX, this.timerDueMs - performance.now()));
  }

  /** A periodic tick is due: queue one event that says how many periods elapsed. */
  private timerCheck(): void {
    if (this.timerPeriodMs === 0) return;
    const now = performance.now();
    if (now < this.timerDueMs) return;
    const periods = Math.floor((now - this.timerDueMs) / this.timerPeriodMs) + 1;
    this.timerDueMs += periods * this.timerPeriodMs;
    this.pending.push({ kind: EventKind.Timer, arg: periods, value: 0 });
  }

  // ---- replay: the log queue -------------------------------------------------------------

  private peekRecord(): LogRecord | null {
    while (this.queueHead === this.queue.length) {
      if (this.recordsEnded) return null;
      this.reportCaughtUp();
      this.waitForMail(IDLE_WAIT_MS_MAX);
      this.pollMail();
    }
    return this.queue[this.queueHead]!;
  }

  private takeRecord(): LogRecord {
    const record = this.peekRecord();
    assert(record !== null, "takeRecord after peekRecord found one");
    this.queueHead++;
    this.seq++;
    if (this.queueHead >= 4096) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    if (this.seq % CONSUMED_REPORT_EVERY === 0) this.post({ t: "consumed", count: this.seq, icount: this.icount() });
    return record;
  }

  /**
   * Replay has consumed every record it was sent and waits for more: say so, so that a backup
   * whose primary failed knows its replay is complete (it must be before it contends, §2.3).
   */
  private reportCaughtUp(): void {
    if (this.caughtUpReported === this.seq) return;
    this.caughtUpReported = this.seq;
    this.post({ t: "consumed", count: this.seq, icount: this.icount() });
  }

  /**
   * The replay's next deadline: the count of the next logged event, control or end. With none
   * received yet, the count of the last record received is a horizon it may run to: an event
   * delivered at or before that count would have been logged before that record. Past the
   * horizon it waits for more of the log (an empty buffer stalls the backup, §3.2).
   */
  private nextAsyncIcount(): bigint {
    for (;;) {
      for (let i = this.queueHead; i < this.queue.length; i++) {
        const record = this.queue[i]!;
        if (record.kind === RecordKind.Event || record.kind === RecordKind.Control) return record.icount;
        if (record.kind === RecordKind.End) return record.a === StopReason.Trap ? NO_DEADLINE : record.icount;
      }
      if (this.recordsEnded) return NO_DEADLINE;
      const last = this.queue[this.queue.length - 1];
      if (this.queueHead < this.queue.length && last !== undefined && last.icount > this.icount()) return last.icount;
      this.reportCaughtUp();
      this.waitForMail(IDLE_WAIT_MS_MAX);
      this.pollMail();
    }
  }


  /**
   * The whole log is consumed. A plain replay stops here; a backup goes live (§2.3): from this
   * point on its vCPU takes inputs from its own devices and, in record mode, logs them with
   * sequence numbers that continue the primary's.
   */
  private endOfLog(): void {
    const target = this.boot.goLiveAs;
    if (target === null) throw this.stopHere("stopped", "the log ends here");
    this.mode = target;
    this.monotonicBaseNs = process.hrtime.bigint() - this.monotonicLastNs;
    this.timerDueMs = performance.now() + this.timerPeriodMs;
    // Local sockets were on the failed host: their clients are gone. Streams of a switch live
    // on: the switch carries them over to this VM from the positions it is told.
    if (!this.boot.streamNic) {
      for (const id of this.conns.keys()) this.pending.push({ kind: EventKind.NicClosed, arg: id, value: 0 });
    }
    const diskIos = [...this.diskIos].map(([id, io]) => ({ id, ...io }));
    const streams = this.boot.streamNic
      ? [...this.conns].map(([conn, c]) => ({ conn, rx: c.rxTotal, tx: c.txTotal, credit: c.creditTotal, unconfirmed: concatBytes(c.unconfirmed) }))
      : [];
    // From here on the NIC keeps what it sends; a recording vCPU keeps it too, for a clone.
    if (target === "live") for (const conn of this.conns.values()) conn.unconfirmed = [];
    // Ids the guest still holds (their NicClosed may be pending) must not name new connections.
    const connIdsFrom = Math.max(0, ...this.conns.keys()) + 1;
    this.post({ t: "live", icount: this.icount(), seq: this.seq, listening: [...this.listening], diskIos, streams, connIdsFrom });
  }

  /** The logged value of this input in replay; null when live (or just gone live). */
  private replayedInput(kind: InputKind): LogRecord | null {
    return this.mode === "replay" ? this.takeInput(kind) : null;
  }

  /** Replay: the next record must be this input, at this count. Null: the VM just went live. */
  private takeInput(kind: InputKind): LogRecord | null {
    const icount = this.icount();
    const record = this.peekRecord();
    if (record === null) {
      this.endOfLog();
      return null;
    }
    if (record.kind !== RecordKind.Input || record.a !== kind || record.icount !== icount) {
      throw this.divergence(icount, `input ${InputKind[kind]}`);
    }
    return this.takeRecord();
  }

  // ---- the log ---------------------------------------------------------------------------

  /** Record, FT: a Progress control after boot.progressMs without a record (see ControlKind). */
  private logProgress(icount: bigint): void {
    const everyMs = this.boot.progressMs;
    if (everyMs === null || this.mode !== "record" || performance.now() - this.loggedAtMs < everyMs) return;
    this.log(RecordKind.Control, icount, ControlKind.Progress, 0, 0n);
  }

  private log(kind: RecordKind, icount: bigint, a: number, b: number, value: bigint, data?: Uint8Array): void {
    if (this.boot.progressMs !== null) this.loggedAtMs = performance.now();
    this.batch.push({ kind, seq: BigInt(this.seq), icount, a, b, value, data: data ?? EMPTY_BYTES });
    this.seq++;
    if (this.batch.length >= LOG_BATCH_RECORDS_MAX) this.flushLog();
  }

  private flushLog(): void {
    if (this.batch.length === 0) return;
    this.post({ t: "log", records: this.batch });
    this.batch = [];
    if (Atomics.load(this.control, CONTROL_STALL) !== 0) this.waitWhileStalled();
  }

  /** The log buffer downstream is full: wait, still answering a stop request. */
  private waitWhileStalled(): void {
    this.post({ t: "stalled", seq: this.seq });
    while (Atomics.load(this.control, CONTROL_STALL) !== 0) {
      this.mailbox.wait(CONTROL_STALL, 1, IDLE_WAIT_MS_MAX);
      this.pollMail();
      if (this.stopRequested) break;
    }
    // Waiting is not running: the CPU share counts only the guest's own time.
    this.sliceStartMs = performance.now();
  }

  private post(message: FromVcpu, transfer?: ArrayBuffer[]): void {
    this.outbox.postMessage(message, transfer);
  }

  /**
   * An output leaves only after the records before it, its marker included; in replay it is
   * dropped (console text is shown).
   *
   * Markers make each output happen exactly once across a failover. The FT primary releases
   * an output once the backup holds every record before it, its marker included. A backup
   * that consumes the marker in replay drops the output: the primary may have released it. A
   * backup whose log ends before the marker goes live right here and emits the output itself:
   * the primary cannot have released it.
   */
  private output(out: Output): void {
    const icount = this.icount();
    if (this.mode === "replay") {
      const record = this.peekRecord();
      if (record === null && this.boot.goLiveAs !== null) {
        this.endOfLog();
      } else {
        if (record !== null && record.kind === RecordKind.Digest && record.icount === icount) {
          this.takeRecord();
          // An empty Digest is a bare marker: nothing to compare.
          if (record.data.length !== 0 && !bytesEqual(record.data, this.digest())) {
            throw this.divergence(icount, "the logged state digest at this output");
          }
        }
        if (out.o === "console") this.post({ t: "out", seq: this.seq, out });
        // A disk of its own (§4.1): the backup writes its copy as it replays; not an output.
        else if (out.o === "disk_write" && this.boot.diskLocal) this.post({ t: "out", seq: this.seq, out });
        return;
      }
    }
    if (this.mode === "record" && this.boot.digestAtOutputs) {
      this.log(RecordKind.Digest, icount, 0, 0, 0n, this.digest());
    } else if (this.mode === "record" && this.boot.markOutputs) {
      this.log(RecordKind.Digest, icount, 0, 0, 0n, EMPTY_BYTES);
    }
    this.flushLog();
    this.post({ t: "out", seq: this.seq, out });
  }

  // ---- imports ---------------------------------------------------------------------------

  private lockstepImports(): Record<string, (...args: number[]) => number | bigint | void> {
    return {
      checkpoint: () => this.checkpoint(),
      checkpoint_unwind: () => this.checkpointUnwind(),
      memory_grow: (deltaPages) => this.memoryGrow(deltaPages),
      clock_now: (clock) => this.clockNow(clock),
      random_fill: (ptr, len) => this.randomFill(ptr, len),
      console_write: (ptr, len) => {
        if (len < 0 || len > CONSOLE_WRITE_BYTES_MAX) throw new Stop("trap", 1, `console_write of ${len} bytes`);
        this.output({ o: "console", text: this.guestBytes(ptr, len).slice() });
      },
      timer_set: (periodMs) => this.timerSet(periodMs),
      irq_mask: (masked) => this.irqMask(masked),
      halt: () => this.halt(),
      exit: (code) => {
        throw this.stopHere("exit", null, code);
      },
      nic_listen: (port) => this.nicListen(port),
      nic_recv: (conn, ptr, len) => this.nicRecv(conn, ptr, len),
      nic_send: (conn, ptr, len) => this.nicSend(conn, ptr, len),
      nic_close: (conn) => this.nicClose(conn),
      disk_blocks: () => this.boot.diskBlocks,
      disk_read: (block, count, ptr, tag) => this.diskSubmit(false, block, count, ptr, tag),
      disk_write: (block, count, ptr, tag) => this.diskSubmit(true, block, count, ptr, tag),
    };
  }

  private envImports(): Record<string, (...args: number[]) => number | void> {
    return {
      abort: (msg, file, line, column) => {
        const text = `${this.readString(msg)} at ${this.readString(file)}:${line}:${column}`;
        const oom = this.memoryGrowRefused ? " (out of memory: memory.grow was refused at the --memory-mib limit)" : "";
        throw new Stop("trap", 1, `guest aborted: ${text}${oom}`);
      },
      trace: (msg, n, ...args) => {
        const values = args.slice(0, Math.max(0, Math.min(n, 5))).join(", ");
        const line = `trace: ${this.readString(msg)}${n > 0 ? " " + values : ""}\n`;
        this.output({ o: "console", text: new TextEncoder().encode(line) });
      },
      seed: () => {
        const bits = new BigInt64Array(1);
        const view = new Float64Array(bits.buffer);
        const record = this.replayedInput(InputKind.Seed);
        if (record !== null) {
          bits[0] = record.value;
        } else {
          view[0] = Math.random() * 2 ** 52;
          if (this.mode === "record") this.log(RecordKind.Input, this.icount(), InputKind.Seed, 0, bits[0]!);
        }
        return view[0]!;
      },
    };
  }

  private readString(ptr: number): string {
    try {
      return ptr === 0 ? "" : this.exports.__getString(ptr);
    } catch {
      return `<string at ${ptr}>`;
    }
  }

  private memoryGrow(deltaPages: number): number {
    const memory = this.exports.memory;
    const record = this.replayedInput(InputKind.MemoryGrow);
    if (record !== null) {
      const result = Number(record.value);
      if (result >= 0) {
        const previous = memory.grow(deltaPages);
        if (previous !== result) throw this.divergence(this.icount(), `memory.grow to return ${result}`);
      } else {
        this.memoryGrowRefused = true;
      }
      return result;
    }
    let result = -1;
    const pages = memory.buffer.byteLength / 65536;
    if (deltaPages >= 0 && pages + deltaPages <= this.memoryPagesMax) {
      try {
        result = memory.grow(deltaPages);
      } catch {
        result = -1;
      }
    }
    if (this.mode === "record") {
      this.log(RecordKind.Input, this.icount(), InputKind.MemoryGrow, 0, BigInt(result));
    }
    if (result < 0) this.memoryGrowRefused = true;
    return result;
  }

  private clockNow(clock: number): bigint {
    const kind = clock === 0 ? InputKind.ClockMonotonic : InputKind.ClockWall;
    const record = this.replayedInput(kind);
    if (record !== null) {
      const value = record.value;
      if (kind === InputKind.ClockMonotonic) this.monotonicLastNs = value;
      return value;
    }
    let value: bigint;
    if (kind === InputKind.ClockMonotonic) {
      value = process.hrtime.bigint() - this.monotonicBaseNs;
      // Never backwards, also across a restore or a failover that rebased the clock.
      if (value < this.monotonicLastNs) value = this.monotonicLastNs;
      this.monotonicLastNs = value;
    } else {
      value = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e3)) * 1000n;
    }
    if (this.mode === "record") this.log(RecordKind.Input, this.icount(), kind, 0, value);
    return value;
  }

  private randomFill(ptr: number, len: number): void {
    if (len < 0 || len > RANDOM_FILL_BYTES_MAX) throw new Stop("trap", 1, `random_fill of ${len} bytes`);
    const target = this.guestBytes(ptr, len);
    const record = this.replayedInput(InputKind.Random);
    if (record !== null) {
      if (record.data.length !== len) throw this.divergence(this.icount(), `${len} random bytes`);
      target.set(record.data);
      return;
    }
    randomFillSync(target);
    if (this.mode === "record") {
      this.log(RecordKind.Input, this.icount(), InputKind.Random, 0, 0n, target.slice());
    }
  }

  private timerSet(periodMs: number): void {
    this.timerPeriodMs = Math.max(0, periodMs);
    this.timerDueMs = performance.now() + this.timerPeriodMs;
    if (this.timerPeriodMs === 0) {
      for (let i = this.pending.length - 1; i >= 0; i--) {
        if (this.pending[i]!.kind === EventKind.Timer) this.pending.splice(i, 1);
      }
    }
  }

  private nicListen(port: number): number {
    if (port < 0 || port > 65535) return ERR_ARGUMENT;
    if (this.listening.has(port)) return 0;
    this.listening.add(port);
    if (this.mode !== "replay") this.post({ t: "out", seq: this.seq, out: { o: "nic_listen", port } });
    return 0;
  }

  private nicRecv(connId: number, ptr: number, len: number): number {
    const conn = this.conns.get(connId);
    if (conn === undefined) return ERR_HANDLE;
    if (len < 0) return ERR_ARGUMENT;
    if (conn.rxBytes === 0) return conn.peerClosed ? ERR_CLOSED : 0;
    const target = this.guestBytes(ptr, len);
    let copied = 0;
    while (copied < len && conn.rx.length > 0) {
      const chunk = conn.rx[0]!;
      const n = Math.min(chunk.length, len - copied);
      target.set(chunk.subarray(0, n), copied);
      copied += n;
      if (n === chunk.length) conn.rx.shift();
      else conn.rx[0] = chunk.subarray(n);
    }
    conn.rxBytes -= copied;
    if (this.mode !== "replay") this.post({ t: "rx_consumed", conn: connId, bytes: copied });
    return copied;
  }

  private nicSend(connId: number, ptr: number, len: number): number {
    const conn = this.conns.get(connId);
    if (conn === undefined) return ERR_HANDLE;
    if (len < 0) return ERR_ARGUMENT;
    if (conn.peerClosed) return ERR_CLOSED;
    const n = Math.min(len, conn.txWindow);
    if (n === 0) return 0;
    conn.txWindow -= n;
    const offset = conn.txTotal;
    conn.txTotal += n;
    const data = this.guestBytes(ptr, n).slice();
    // Kept wherever a later go-live may need it: on a replaying backup, and on a recording
    // primary whose snapshot may seed a new backup (a live clone).
    if (this.boot.streamNic && this.mode !== "live") conn.unconfirmed.push(data);
    this.output({ o: "nic_send", conn: connId, offset, data });
    return n;
  }

  private nicClose(connId: number): void {
    const conn = this.conns.get(connId);
    if (conn === undefined) return;
    this.conns.delete(connId);
    this.output({ o: "nic_close", conn: connId, offset: conn.txTotal });
  }

  private diskSubmit(write: boolean, block: number, count: number, ptr: number, tag: number): number {
    if (this.boot.diskBlocks === 0) return ERR_HANDLE;
    if (count <= 0 || count > DISK_IO_BLOCKS_MAX || block < 0 || block + count > this.boot.diskBlocks) {
      return ERR_ARGUMENT;
    }
    if (this.diskIos.size >= DISK_IOS_MAX) return ERR_LIMIT;
    const bytes = this.guestBytes(ptr, count * BLOCK_BYTES);
    const id = this.nextDiskIoId++;
    const data = write ? bytes.slice() : null;
    // A write is an output first: a backup going live at it (its marker not logged) issues it
    // there, so it must not be among the in-flight IOs that going live re-issues.
    if (data !== null) this.output({ o: "disk_write", id, block, count, data });
    else if (this.mode !== "replay") this.post({ t: "out", seq: this.seq, out: { o: "disk_read", id, block, count } });
    this.diskIos.set(id, { tag, ptr, count, write, block, data });
    return 0;
  }

  // ---- ending, digests, snapshots --------------------------------------------------------

  private stopHere(stop: VmResult["stop"], message: string | null = null, exitCode = 0): Stop {
    return new Stop(stop, exitCode, message);
  }

  private divergence(icount: bigint, expected: string): Stop {
    const record = this.queue[this.queueHead];
    const found = record ? `${RecordKind[record.kind]} at icount ${record.icount}` : "the end of the log";
    return new Stop("divergence", 1, `replay diverged at icount ${icount}: expected ${expected}, log has ${found}`);
  }

  private classify(error: unknown): Stop {
    if (error instanceof WebAssembly.RuntimeError) {
      if (this.memoryGrowRefused) {
        const limitMiB = (this.memoryPagesMax * 65536) / (1024 * 1024);
        return new Stop("trap", 1, `guest ran out of memory (limit ${limitMiB} MiB, see --memory-mib) and trapped: ${error.message}`);
      }
      return new Stop("trap", 1, `guest trapped: ${error.message}`);
    }
    if (error instanceof RangeError && /call stack/i.test(error.message)) {
      return new Stop("trap", 1, "guest trapped: call stack exhausted");
    }
    if (error instanceof WebAssembly.LinkError || error instanceof WebAssembly.CompileError) {
      return new Stop("error", 1, `module cannot be loaded: ${error.message}`);
    }
    return new Stop("error", 1, `internal error: ${error instanceof Error ? error.stack : String(error)}`);
  }

  private finish(stop: Stop): VmResult {
    let icount = 0n;
    let digest = "";
    if (this.fuel !== undefined) {
      icount = this.icount();
      digest = "sha256:" + hexOf(this.digest());
    }
    // A PowerOff control is the log's last record: nothing may follow it.
    if (this.mode === "record" && stop.stop !== "poweroff") {
      const reason =
        stop.stop === "exit" ? StopReason.Exit : stop.stop === "stopped" ? StopReason.Stopped : StopReason.Trap;
      const message = stop.message === null ? EMPTY_BYTES : new TextEncoder().encode(stop.message);
      this.log(RecordKind.End, icount, reason, 0, BigInt(stop.exitCode), message);
    } else if (this.mode === "replay" && stop.stop === "trap") {
      // The primary trapped at the same point: its End record is part of the log.
      const record = this.queue[this.queueHead];
      if (record !== undefined && record.kind === RecordKind.End) this.takeRecord();
    }
    this.flushLog();
    const window = this.boot.memoryWindow;
    const memory = window !== null && this.fuel !== undefined ? this.memory : null;
    return {
      icount,
      digest,
      entries: this.seq,
      stop: stop.stop,
      exitCode: stop.exitCode,
      message: stop.message,
      ...(memory === null || window === null
        ? {}
        : { memory: { offset: Math.min(window.offset, memory.length), bytes: memory.slice(window.offset, window.offset + window.length), sizeBytes: memory.length } }),
    };
  }

  /** sha256 over linear memory, then every mutable global as 8 little-endian bytes. */
  private digest(): Uint8Array {
    const hash = createHash("sha256");
    hash.update(this.memory);
    const slot = new DataView(new ArrayBuffer(8));
    for (const value of this.readGlobals()) {
      if (typeof value === "bigint") slot.setBigInt64(0, value, true);
      else slot.setFloat64(0, value, true);
      hash.update(new Uint8Array(slot.buffer));
    }
    return new Uint8Array(hash.digest());
  }

  private readGlobals(): (number | bigint)[] {
    return this.boot.globals.map((g) => (this.exports[g.exportName] as WebAssembly.Global).value as number | bigint);
  }

  private maybeSnapshot(): void {
    this.snapshotIfRequested();
    const at = this.boot.snapshotAtIdle;
    if (at === null || this.icount() < at) return;
    this.boot.snapshotAtIdle = null;
    this.post({ t: "snapshot", snapshot: this.snapshot(), requested: false });
  }

  /** At an idle point: answer the main thread's snapshot request, if it made one. */
  private snapshotIfRequested(): void {
    if (!this.snapshotRequested || this.mode === "replay") return;
    this.snapshotRequested = false;
    this.post({ t: "snapshot", snapshot: this.snapshot(), requested: true });
  }

  private snapshot(): VmSnapshot {
    assert(this.batch.length === 0 || this.mode === "record", "replay has no batch");
    this.flushLog();
    const conns: ConnSnapshot[] = [...this.conns].map(([id, c]) => ({
      id,
      rx: concatBytes(c.rx),
      peerClosed: c.peerClosed,
      txWindow: c.txWindow,
      rxTotal: c.rxTotal,
      txTotal: c.txTotal,
      creditTotal: c.creditTotal,
      unconfirmed: concatBytes(c.unconfirmed),
    }));
    const diskIos: DiskIoSnapshot[] = [...this.diskIos].map(([id, io]) => ({ id, ...io }));
    return {
      icount: this.icount(),
      seq: this.seq,
      memory: this.memory.slice(),
      globals: this.readGlobals(),
      devices: {
        timerPeriodMs: this.timerPeriodMs,
        irqMasked: this.irqMasked,
        listening: [...this.listening],
        conns,
        diskIos,
        nextDiskIoId: this.nextDiskIoId,
        memoryPagesMax: this.memoryPagesMax,
      },
    };
  }

  /**
   * At an unwinding checkpoint, its work done and the next deadline set: snapshot the state
   * here, then let asyncify unwind the guest's stack into linear memory (callTop takes it from
   * there). The memory copy comes first: asyncify's data overwrites guest bytes.
   */
  private startUnwind(): void {
    const asyncify = this.asyncify;
    assert(asyncify !== null && this.unwinding === null && this.rewinding === null, "one unwind at a time");
    const startedMs = performance.now();
    this.snapshotRequested = false;
    const snapshot = this.snapshot();
    const memory = this.memory;
    const view = new DataView(memory.buffer);
    // The whole memory past the header may hold frames: a deep stack cannot overflow it unless
    // it is larger than the guest's memory, which no stack in that memory can be.
    view.setUint32(UNWIND_DATA_PTR, UNWIND_DATA_PTR + UNWIND_HEADER_BYTES, true);
    view.setUint32(UNWIND_DATA_PTR + 4, memory.length, true);
    this.unwinding = { snapshot, startedMs, original: null, setDeadline: false, post: true };
    asyncify.startUnwind(UNWIND_DATA_PTR);
  }

  /** The top-level export returned unwound: keep the stack, then rewind into it. */
  private rewindAfterUnwind(name: TopExport): void {
    const asyncify = this.asyncify;
    const unwinding = this.unwinding;
    assert(asyncify !== null && unwinding !== null, "an unwind is in progress");
    this.unwinding = null;
    asyncify.stopUnwind();
    const end = new DataView(this.memory.buffer).getUint32(UNWIND_DATA_PTR, true);
    assert(end >= UNWIND_DATA_PTR + UNWIND_HEADER_BYTES && end <= this.memory.length, "asyncify's data lies in memory");
    unwinding.snapshot.stack = { export: name, data: this.memory.slice(UNWIND_DATA_PTR + UNWIND_HEADER_BYTES, end) };
    // The header still says where the data ends: rewind from it as it is.
    unwinding.original = unwinding.snapshot.memory.slice(UNWIND_DATA_PTR, end);
    this.rewinding = unwinding;
    asyncify.startRewind(UNWIND_DATA_PTR);
  }

  /**
   * A restored snapshot taken mid-export: lay its stack into memory, rewind, and run the export
   * on to its end (it reaches the checkpoint where the snapshot was taken, then goes on).
   */
  private resumeStack(snapshot: VmSnapshot): void {
    const stack = snapshot.stack;
    const asyncify = this.asyncify;
    assert(stack !== undefined, "resumeStack needs a stack");
    if (asyncify === null) throw new Stop("error", 1, "the snapshot holds a stack, but this module was not built for unwinding");
    const end = UNWIND_DATA_PTR + UNWIND_HEADER_BYTES + stack.data.length;
    const memory = this.memory;
    if (end > memory.length) throw new Stop("error", 1, "the snapshot's stack does not fit its memory");
    const original = memory.slice(UNWIND_DATA_PTR, end);
    memory.set(stack.data, UNWIND_DATA_PTR + UNWIND_HEADER_BYTES);
    const view = new DataView(memory.buffer);
    view.setUint32(UNWIND_DATA_PTR, end, true);
    view.setUint32(UNWIND_DATA_PTR + 4, end, true);
    if (typeof this.rawExports[stack.export] !== "function") {
      throw new Stop("error", 1, `the snapshot's stack is under ${stack.export}, which this module does not export`);
    }
    this.rewinding = { snapshot, startedMs: performance.now(), original, setDeadline: true, post: false };
    asyncify.startRewind(UNWIND_DATA_PTR);
    this.callTop(stack.export, true);
    assert(this.rewinding === null, "the rewind reached its checkpoint");
  }

  /** The rewind reached the checkpoint of the snapshot: the guest runs on from here. */
  private endRewind(): void {
    const asyncify = this.asyncify;
    const rewinding = this.rewinding;
    assert(asyncify !== null && rewinding !== null && rewinding.original !== null, "a rewind is in progress");
    this.rewinding = null;
    asyncify.stopRewind();
    assert(asyncify.getState() === ASYNCIFY_NORMAL, "the rewind is over");
    this.memory.set(rewinding.original, UNWIND_DATA_PTR);
    if (rewinding.setDeadline) this.setDeadline(this.nextDeadline());
    if (rewinding.post) {
      const snapshot = rewinding.snapshot;
      snapshot.pauseMs = performance.now() - rewinding.startedMs;
      // Transferred, not copied: the copy is the snapshot's, nobody here reads it again.
      this.post({ t: "snapshot", snapshot, requested: true }, [snapshot.memory.buffer as ArrayBuffer]);
    }
    this.sliceStartMs = performance.now();
  }

  /** Continue from a snapshot: the guest resumes idle, right after the idle tick. */
  private applySnapshot(snapshot: VmSnapshot): void {
    const memory = this.exports.memory;
    const missingPages = (snapshot.memory.length - memory.buffer.byteLength) / 65536;
    if (missingPages > 0) memory.grow(missingPages);
    this.memory.set(snapshot.memory);
    this.boot.globals.forEach((g, i) => {
      (this.exports[g.exportName] as WebAssembly.Global).value = snapshot.globals[i];
    });
    this.seq = snapshot.seq;
    this.deadline = 0n;
    const d = snapshot.devices;
    this.timerPeriodMs = d.timerPeriodMs;
    this.timerDueMs = performance.now() + d.timerPeriodMs;
    this.irqMasked = d.irqMasked;
    for (const port of d.listening) this.listening.add(port);
    for (const c of d.conns) {
      this.conns.set(c.id, {
        rx: c.rx.length > 0 ? [c.rx] : [],
        rxBytes: c.rx.length,
        peerClosed: c.peerClosed,
        txWindow: c.txWindow,
        rxTotal: c.rxTotal ?? 0,
        txTotal: c.txTotal ?? 0,
        creditTotal: c.creditTotal ?? 0,
        unconfirmed: c.unconfirmed !== undefined && c.unconfirmed.length > 0 ? [c.unconfirmed] : [],
      });
    }
    for (const io of d.diskIos) {
      this.diskIos.set(io.id, { tag: io.tag, ptr: io.ptr, count: io.count, write: io.write, block: io.block, data: io.data });
    }
    this.nextDiskIoId = d.nextDiskIoId;
    if (d.memoryPagesMax !== undefined) this.memoryPagesMax = d.memoryPagesMax;
    // Mid-export, the count is the checkpoint's (its deadline is set when the rewind reaches it).
    // At idle, the idle tick of the snapshot point was taken already; idleLoop takes the next.
    this.fuel.value = snapshot.stack !== undefined ? snapshot.icount : snapshot.icount - 1n;
  }
}

/** The asyncify exports, when the module was instrumented for unwinding. */
function asyncifyExports(exports: WebAssembly.Exports): AsyncifyExports | null {
  const get = (name: string): ((...args: number[]) => number) | null => {
    const value = exports[name];
    return typeof value === "function" ? (value as (...args: number[]) => number) : null;
  };
  const startUnwind = get(ASYNCIFY_EXPORTS.startUnwind);
  const stopUnwind = get(ASYNCIFY_EXPORTS.stopUnwind);
  const startRewind = get(ASYNCIFY_EXPORTS.startRewind);
  const stopRewind = get(ASYNCIFY_EXPORTS.stopRewind);
  const getState = get(ASYNCIFY_EXPORTS.getState);
  if (startUnwind === null || stopUnwind === null || startRewind === null || stopRewind === null || getState === null) return null;
  return { startUnwind, stopUnwind, startRewind, stopRewind, getState };
}

/** Drops the unconfirmed output that credit now covers: the client has it. */
function trimConfirmed(conn: Conn): void {
  let excess = conn.unconfirmed.reduce((sum, chunk) => sum + chunk.length, 0) - Math.max(0, conn.txTotal - conn.creditTotal);
  while (excess > 0 && conn.unconfirmed.length > 0) {
    const first = conn.unconfirmed[0]!;
    if (first.length <= excess) {
      conn.unconfirmed.shift();
      excess -= first.length;
    } else {
      conn.unconfirmed[0] = first.subarray(excess);
      excess = 0;
    }
  }
}
