// A virtual machine: the guest's vCPU on a worker thread, its devices on this (main) thread.
//
// The main thread turns socket and disk activity into device events for the vCPU, and turns
// the vCPU's outputs into socket writes, disk writes and console text. Outputs pass through
// `releaseOutput`, which is where the Output Rule holds them in fault-tolerant mode; here,
// with no backup, they are released at once.

import { MessageChannel, Worker, type MessagePort } from "node:worker_threads";
import { EventKind, type ControlKind, type LogRecord } from "../../protocol/records.js";
import { assert } from "../errors.js";
import { BackupReader, type DiskReads } from "../devices/disk-reads.js";
import { FileDisk } from "../devices/file-disk.js";
import { FencedDisk } from "../devices/read-fence.js";
import { TcpNic, type ListenAddress } from "../devices/tcp-nic.js";
import type { InstrumentedModule } from "../instrument/index.js";
import {
  CONTROL_CPU_SHARE,
  CONTROL_MAIL,
  CONTROL_SLOTS,
  CONTROL_STALL,
  CPU_SHARE_FULL,
  type DeviceEvent,
  type FromVcpu,
  type Output,
  type StreamPosition,
  type ToVcpu,
  type VcpuBoot,
  type VmMode,
  type VmResult,
} from "./messages.js";
import type { VmSnapshot } from "./snapshot.js";

/** Replay: log records sent to the vCPU but not yet consumed, at most. */
const REPLAY_IN_FLIGHT_RECORDS_MAX = 16_384;
/** The most bytes of memory a result carries (a page of a hex view, not a memory dump). */
export const MEMORY_WINDOW_BYTES_MAX = 64 * 1024;
/** snapshot() calls outstanding at once: a clone at a time, with room for a retry. */
const SNAPSHOT_WAITERS_MAX = 4;
/** Default cap on guest memory: 1 GiB. */
export const MEMORY_PAGES_MAX_DEFAULT = 16_384;

/** Where replay gets the log from: batches in order, then null. */
export interface ReplaySource {
  next(): Promise<LogRecord[] | null>;
}

/** A replay source over records already in memory, sent as one batch. */
export function recordsSource(records: LogRecord[]): ReplaySource {
  let sent = false;
  return {
    async next() {
      if (sent) return null;
      sent = true;
      return records;
    },
  };
}

/** A virtual disk's main-thread half: FileDisk, RemoteDisk, or a test's double. */
export interface DiskDevice {
  read(id: number, block: number, count: number): void;
  write(id: number, block: number, data: Uint8Array): void;
  /** Waits for the IOs in flight; the device is not used afterwards. */
  close(): Promise<void>;
}

type Deliver = (event: DeviceEvent) => void;

/** The virtual NIC's main-thread half: TcpNic (local sockets) or SwitchNic (a switch's streams). */
export interface NicDevice {
  /** Connections are streams that outlive this host (VcpuBoot.streamNic). */
  readonly streams: boolean;
  listen(virtualPort: number): void;
  /** The guest read `bytes` of conn's receive buffer: flow control, not an output. */
  rxConsumed(conn: number, bytes: number): void;
  send(conn: number, offset: number, data: Uint8Array): void;
  close(conn: number, offset: number): void;
  /** Client bytes below `offset` are safe in the log (stream NICs only). */
  rxAck(conn: number, offset: number): void;
  /** A backup went live here: take over these streams (stream NICs only). */
  goLive(streams: StreamPosition[], connIdsFrom: number): void;
  shutdown(): Promise<void>;
}

/** Makes the NIC, given where its events go. Called once, when the VM can reach the network. */
export type NicFactory = (deliver: Deliver) => NicDevice;

/**
 * Makes the disk, given where its completions go (DiskDone events, as FileDisk sends them).
 * The Machine calls it once, in its constructor, in every mode, and from then on owns the
 * device: it closes it when the run ends.
 */
export type DiskFactory = (deliver: Deliver) => DiskDevice;

/**
 * A DiskFactory for a device that must be opened, asynchronously, with its `deliver`
 * function before the Machine exists (RemoteDisk.open):
 *
 *   disk: await openDisk((deliver) => RemoteDisk.open(client, vmId, blocks, deliver))
 *
 * Completions go to the Machine the factory is then given to. A device delivers only for IOs
 * submitted to it, so none can come before.
 */
export async function openDisk(open: (deliver: Deliver) => Promise<DiskDevice>): Promise<DiskFactory> {
  let target: Deliver | null = null;
  const device = await open((event) => {
    assert(target !== null, "a disk completion before the disk was given to a Machine");
    target(event);
  });
  return (deliver) => {
    assert(target === null, "one opened disk serves one Machine");
    target = deliver;
    return device;
  };
}

export interface MachineOptions {
  mode: VmMode;
  module: InstrumentedModule;
  diskFile?: string | null;
  /** Instead of diskFile: the disk device (diskBlocks must say its size). */
  disk?: DiskFactory;
  diskBlocks?: number;
  /**
   * Where read data come from in replay (§4.2; host/devices/disk-reads.ts): "logged" (the
   * default) logs them; "backup" logs a reference and the replaying backup reads the disk
   * itself, which must then be the same disk (shared) or a copy in the same state.
   */
  diskReads?: DiskReads;
  /**
   * The disk is this VM's own copy, not shared (§4.1; docs/local-disks.md): writes are
   * internal state, not outputs (never held), and a replaying backup writes its own copy as
   * it goes. Needs diskReads "logged" and a disk (diskFile or disk).
   */
  diskLocal?: boolean;
  memoryPagesMax?: number;
  listen?: (virtualPort: number) => ListenAddress;
  /** Instead of local sockets at `listen`: this NIC (a switch link). */
  nic?: NicFactory;
  maxInstructions?: bigint | null;
  untilIcount?: bigint | null;
  /** Return these bytes of linear memory with the result (at most MEMORY_WINDOW_BYTES_MAX). */
  memoryWindow?: { offset: number; length: number } | null;
  digestAtOutputs?: boolean;
  /** Record: log a marker (an empty Digest record) at every output; see VcpuBoot. */
  markOutputs?: boolean;
  /** Record: log a Progress control after this long without a record (an FT primary). */
  progressMs?: number | null;
  jitterSeed?: number | null;
  snapshotAtIdle?: bigint | null;
  /** Replay: at the end of the log go on as this mode, with this machine's devices (go-live). */
  goLiveAs?: "live" | "record" | null;
  restore?: VmSnapshot | null;
  replay?: ReplaySource;
  onRecords?: (records: LogRecord[]) => void;
  onConsole?: (text: Uint8Array) => void;
  onListening?: (virtualPort: number, address: ListenAddress) => void;
  onSnapshot?: (snapshot: VmSnapshot) => void;
  onLive?: (icount: bigint, seq: number) => void;
  /** Record/live: the guest stopped running for a Pause control (true), or resumed (false). */
  onPaused?: (paused: boolean) => void;
  /** A digest probe (ControlKind.Digest): taken (record/live), or checked against the log (replay). */
  onDigest?: (icount: bigint, digest: Uint8Array, checked: boolean) => void;
  /**
   * The Output Rule's hook: every output, with the number of log records that precede it,
   * and the function that lets it out. Without one, outputs leave at once.
   */
  holdOutput?: (seq: number, release: () => void) => void;
  /** Replay progress: records consumed so far and the count the vCPU stands at. */
  onReplayProgress?: (seq: number, icount: bigint) => void;
  /** Record: the vCPU stopped for a stall at `seq`. */
  onStalled?: (seq: number) => void;
  onDeviceError?: (message: string) => void;
}

export class Machine {
  readonly done: Promise<VmResult>;
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly urgentPort: MessagePort;
  private readonly slots: Int32Array;
  private readonly nic: NicDevice | null = null;
  private readonly disk: DiskDevice | null = null;
  /** diskReads "backup", recording: writes wait for the backup's reads (read-fence.ts). */
  private readonly fence: FencedDisk | null = null;
  /** diskReads "backup", replaying: the backup's own reads (disk-reads.ts). */
  private readonly backupReader: BackupReader | null = null;
  /**
   * diskLocal, replaying: writes to the backup's copy in flight, whose completions go to the
   * replay, not to the guest. At most the guest's DISK_IOS_MAX: the replay waits for each
   * before it delivers the write's logged completion.
   */
  private readonly replayWrites = new Set<number>();
  private replaying: boolean;
  private replaySent = 0;
  private replayConsumed = 0;
  private replayFeeding = false;
  private replayEnded = false;
  private finished = false;
  /** Callers of snapshot() waiting for the vCPU's next snapshot, in order. */
  private readonly snapshotWaiters: ((snapshot: VmSnapshot) => void)[] = [];

  constructor(private readonly options: MachineOptions) {
    const window = options.memoryWindow;
    assert(
      window == null || (Number.isSafeInteger(window.offset) && window.offset >= 0 && window.length >= 0 && window.length <= MEMORY_WINDOW_BYTES_MAX),
      "a memory window within MEMORY_WINDOW_BYTES_MAX",
    );
    assert(!(options.disk && options.diskFile), "one disk: a device or a file");
    assert(!options.disk || (options.diskBlocks ?? 0) > 0, "an injected disk comes with its size in diskBlocks");
    const diskReads = options.diskReads ?? "logged";
    assert(!(options.diskLocal && diskReads === "backup"), "a disk of its own takes logged reads: its copy lags the primary's");
    assert(!options.diskLocal || options.disk !== undefined || Boolean(options.diskFile), "a disk of its own needs a disk");
    this.replaying = options.mode === "replay";
    // A backup read's completion is the replay's, not an event for the guest; so is a write
    // to a backup's own copy.
    const deliver = (event: DeviceEvent) => {
      if (event.kind === EventKind.DiskDone && this.replayWrites.delete(event.arg)) {
        if (event.value !== 0) options.onDeviceError?.(`a write to this backup's own disk copy failed (status ${event.value})`);
        this.send({ t: "backup_read", id: event.arg, value: event.value });
        return;
      }
      if (this.backupReader?.completed(event) !== true) this.send({ t: "event", event });
    };
    if (options.disk) this.disk = options.disk(deliver);
    // A replay that reads or writes the disk itself opens it even when it will never go live.
    if (options.diskFile && options.mode === "replay" && !options.goLiveAs && (diskReads === "backup" || options.diskLocal)) {
      this.disk = FileDisk.open(options.diskFile, options.diskBlocks ?? 0, deliver);
    }
    if (options.mode !== "replay" || options.goLiveAs) {
      this.nic =
        options.nic?.(deliver) ??
        new TcpNic(
          options.listen ?? ((port) => ({ host: "127.0.0.1", port })),
          deliver,
          (port, address) => options.onListening?.(port, address),
          (message) => options.onDeviceError?.(message),
        );
      if (options.diskFile) this.disk = FileDisk.open(options.diskFile, options.diskBlocks ?? 0, deliver);
    }
    if (this.disk !== null && diskReads === "backup") {
      const device = this.disk;
      if (options.mode === "replay") {
        this.backupReader = new BackupReader(
          device,
          (id, value, data) => this.send({ t: "backup_read", id, value, ...(data === undefined ? {} : { data }) }),
          (message) => options.onDeviceError?.(message),
        );
      }
      // Recording (now, or once live): under FT (outputs held) a backup exists until the
      // driver says otherwise (backupProgress).
      if (options.mode !== "replay" || options.goLiveAs) this.disk = this.fence = new FencedDisk(device, options.holdOutput !== undefined);
    }
    const shared = new SharedArrayBuffer(CONTROL_SLOTS * Int32Array.BYTES_PER_ELEMENT);
    this.slots = new Int32Array(shared);
    Atomics.store(this.slots, CONTROL_CPU_SHARE, CPU_SHARE_FULL);
    const channel = new MessageChannel();
    this.port = channel.port1;
    const urgent = new MessageChannel();
    this.urgentPort = urgent.port1;
    const boot: VcpuBoot = {
      mode: options.mode,
      wasm: options.module.wasm,
      globals: options.module.globals,
      diskBlocks: options.diskFile || options.disk || options.mode === "replay" ? (options.diskBlocks ?? 0) : 0,
      diskReads,
      diskLocal: options.diskLocal ?? false,
      memoryPagesMax: options.memoryPagesMax ?? MEMORY_PAGES_MAX_DEFAULT,
      maxInstructions: options.maxInstructions ?? null,
      untilIcount: options.untilIcount ?? null,
      memoryWindow: options.memoryWindow ?? null,
      digestAtOutputs: options.digestAtOutputs ?? false,
      markOutputs: options.markOutputs ?? false,
      jitterSeed: options.jitterSeed ?? null,
      progressMs: options.progressMs ?? null,
      snapshotAtIdle: options.snapshotAtIdle ?? null,
      goLiveAs: options.goLiveAs ?? null,
      streamNic: this.nic?.streams ?? false,
      restore: options.restore ?? null,
      control: shared,
      port: channel.port2,
      urgentPort: urgent.port2,
    };
    this.worker = new Worker(workerEntry(), { workerData: boot, transferList: [channel.port2, urgent.port2] });
    this.done = new Promise<VmResult>((resolve) => {
      const fail = (message: string) =>
        resolve({ icount: 0n, digest: "", entries: 0, stop: "error", exitCode: 1, message });
      this.worker.on("message", (message: FromVcpu) => {
        if (message.t === "done") {
          this.finished = true;
          void this.shutdown().then(() => resolve(message.result));
          return;
        }
        this.receive(message);
      });
      this.worker.on("error", (error) => fail(`vCPU failed: ${error.message}`));
      this.worker.on("exit", (code) => {
        if (!this.finished) void this.shutdown().then(() => fail(`vCPU exited with code ${code} before finishing`));
      });
    });
    if (options.mode === "replay") void this.feedReplay();
  }

  /**
   * diskReads "backup", FT primary: the backup has replayed every record < replayedSeq (its
   * acks); null when this VM has no backup to wait for (alone). Writes to blocks the backup has
   * yet to read wait for it (read-fence.ts). Call it whenever either changes.
   */
  backupProgress(replayedSeq: number | null): void {
    this.fence?.progress(replayedSeq);
  }

  /** diskReads "backup": writes that waited for a backup's read so far (read-fence.ts). */
  get diskWritesFenced(): number {
    return this.fence?.writesFenced ?? 0;
  }

  /** Stall the vCPU at its next log flush (a full log buffer, §3.2), or let it go again. */
  setStall(stalled: boolean): void {
    Atomics.store(this.slots, CONTROL_STALL, stalled ? 1 : 0);
    Atomics.notify(this.slots, CONTROL_STALL);
  }

  /**
   * The share of a CPU the guest may use, in [0.01, 1] (record and live; §3.2: slow the
   * primary while its backup lags). Takes effect at the vCPU's next checkpoint.
   */
  setCpuShare(share: number): void {
    assert(share >= 0.01 && share <= 1, `a CPU share in [0.01, 1], not ${share}`);
    Atomics.store(this.slots, CONTROL_CPU_SHARE, Math.round(share * CPU_SHARE_FULL));
  }

  /**
   * A control entry (§3.3), applied at the guest's next checkpoint or idle point and logged
   * there in record mode (record and live; docs/log-format.md says what each does):
   * PowerOff ends the run with stop "poweroff"; Pause holds the guest until a Resume
   * (onPaused reports both); MemoryMax sets the memory.grow limit to `value` pages. A stop
   * request received with them wins. A replaying VM keeps them until it goes live.
   */
  control(kind: ControlKind, value = 0): void {
    assert(Number.isSafeInteger(value), `an integer control argument, not ${value}`);
    this.send({ t: "control", kind, value });
  }

  /**
   * A snapshot of the running guest (record and live; a live clone, §3.1), taken at the next
   * point where the vCPU can take one, after which it goes on. `onTaken` runs synchronously on
   * the snapshot's arrival: every record before `snapshot.seq` has reached onRecords by then,
   * and none after it, so a caller can start a new backup's log exactly there. Never called
   * if the VM ends first.
   */
  snapshot(onTaken: (snapshot: VmSnapshot) => void): void {
    assert(this.options.mode !== "replay" || this.options.goLiveAs !== null, "a replaying VM has nothing of its own to snapshot");
    assert(this.snapshotWaiters.length < SNAPSHOT_WAITERS_MAX, "snapshot requests are bounded");
    this.snapshotWaiters.push(onTaken);
    this.send({ t: "snapshot" });
  }

  /** Ends the vCPU at once, wherever it is: what a crash of its host looks like. */
  kill(): void {
    void this.worker.terminate();
  }

  /** Ask the guest to stop at its next delivery point (record and live). */
  stop(): void {
    this.send({ t: "stop" });
  }

  private send(message: ToVcpu): void {
    if (this.finished) return;
    const urgent = message.t === "stop" || message.t === "control" || message.t === "snapshot";
    (urgent ? this.urgentPort : this.port).postMessage(message);
    Atomics.add(this.slots, CONTROL_MAIL, 1);
    Atomics.notify(this.slots, CONTROL_MAIL);
  }

  private receive(message: Exclude<FromVcpu, { t: "done" }>): void {
    switch (message.t) {
      case "log":
        this.fence?.logged(message.records);
        this.options.onRecords?.(message.records);
        break;
      case "out": {
        const out = message.out;
        // A disk read and a listen are requests to a device, not outputs: nothing to hold; nor
        // is a write to a disk of its own (§4.1).
        if (this.options.holdOutput === undefined || out.o === "disk_read" || out.o === "nic_listen" || (out.o === "disk_write" && this.options.diskLocal)) {
          this.releaseOutput(out);
        } else {
          this.options.holdOutput(message.seq, () => this.releaseOutput(out));
        }
        break;
      }
      case "stalled":
        this.options.onStalled?.(message.seq);
        break;
      case "rx_consumed":
        this.nic?.rxConsumed(message.conn, message.bytes);
        break;
      case "consumed":
        this.replayConsumed = message.count;
        this.backupReader?.consumed(message.count);
        this.options.onReplayProgress?.(message.count, message.icount);
        void this.feedReplay();
        break;
      case "snapshot": {
        if (message.requested) this.snapshotWaiters.shift()?.(message.snapshot);
        else this.options.onSnapshot?.(message.snapshot);
        break;
      }
      case "paused":
        this.options.onPaused?.(message.paused);
        break;
      case "digest":
        this.options.onDigest?.(message.icount, message.digest, message.checked);
        break;
      case "live":
        this.replaying = false;
        this.nic?.goLive(message.streams, message.connIdsFrom);
        for (const port of message.listening) this.nic?.listen(port);
        for (const io of message.diskIos) {
          if (io.data === null) this.disk?.read(io.id, io.block, io.count);
          else this.disk?.write(io.id, io.block, io.data);
        }
        this.options.onLive?.(message.icount, message.seq);
        break;
    }
  }

  private releaseOutput(out: Output): void {
    switch (out.o) {
      case "console":
        this.options.onConsole?.(out.text);
        break;
      case "nic_listen":
        this.nic?.listen(out.port);
        break;
      case "nic_send":
        this.nic?.send(out.conn, out.offset, out.data);
        break;
      case "nic_close":
        this.nic?.close(out.conn, out.offset);
        break;
      case "nic_rx_ack":
        this.nic?.rxAck(out.conn, out.offset);
        break;
      case "disk_read":
        this.disk?.read(out.id, out.block, out.count);
        break;
      case "disk_write":
        if (this.replaying) this.replayWrites.add(out.id);
        this.disk?.write(out.id, out.block, out.data);
        break;
    }
  }

  /** Sends log records ahead of the vCPU, keeping at most a bounded number in flight. */
  private async feedReplay(): Promise<void> {
    const source = this.options.replay;
    if (source === undefined || this.replayFeeding || this.replayEnded) return;
    this.replayFeeding = true;
    try {
      const start = this.options.restore?.seq ?? 0;
      while (!this.finished && this.replaySent - (this.replayConsumed - start) < REPLAY_IN_FLIGHT_RECORDS_MAX) {
        const records = await source.next();
        if (records === null) {
          this.replayEnded = true;
          this.send({ t: "records_end" });
          return;
        }
        if (records.length === 0) continue;
        this.replaySent += records.length;
        this.send({ t: "records", records });
        // After the records: their reads' answers then reach the vCPU after them.
        this.backupReader?.received(records);
      }
    } finally {
      this.replayFeeding = false;
    }
  }

  private async shutdown(): Promise<void> {
    await this.nic?.shutdown();
    await this.disk?.close();
    this.port.close();
    this.urgentPort.close();
  }
}

/** The worker script: compiled JS in dist/, or the TypeScript source under vitest and tsx. */
function workerEntry(): URL {
  const fromSource = import.meta.url.endsWith(".ts");
  return new URL(fromSource ? "./vcpu-worker-source.mjs" : "./vcpu-worker.js", import.meta.url);
}
