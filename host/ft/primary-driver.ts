// The primary's driver: it runs the guest in record mode and does what the PrimaryCore says,
// in the order PrimaryReady documents: stall and CPU share first, then send, then switch
// generation, then release outputs, then ask the arbiter, then halt.

import type { ControlKind } from "../../protocol/records.js";
import { FAILPOINT_LOG_DELAY_MS, failpoint } from "../failpoints.js";
import type { NetworkGate } from "../network-gate.js";
import type { InstrumentedModule } from "../instrument/index.js";
import { Machine, type MachineOptions } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import type { Arbiter } from "./arbiter.js";
import { Channel, connectChannel } from "./channel.js";
import { TICK_MS, timeoutTicksFor } from "./config.js";
import { SilenceMeter } from "./silence.js";
import { LagClock } from "./lag-clock.js";
import type { BackupToPrimary } from "./messages.js";
import { PrimaryCore, type PrimaryState } from "./primary.js";

/** Lag control aims to keep the backup within this much of the primary's execution (§3.2). */
export const LAG_MS_MAX_DEFAULT = 1000;
/** How often the lag limit in instructions is recomputed from the measured rate. */
const LAG_LIMIT_UPDATE_MS = 1000;
/** Output hold times kept for the status figures. */
const HOLD_SAMPLES = 1024;
/** Pause before connecting the logging channel again after it dropped. */
const RECONNECT_MS = 100;

export type DriverLog = (line: Record<string, unknown>) => void;

/**
 * Without a record for this long, the primary logs a Progress control at its next checkpoint,
 * so that its backup replays a compute-bound stretch as it happens rather than all at once at
 * the next output. 20 ms: lag stays far below the 1 s lag limit, at 16 bytes a record.
 */
const PROGRESS_MS = 20;

export type VmDevices = Pick<
  MachineOptions,
  "listen" | "nic" | "diskFile" | "diskBlocks" | "disk" | "memoryPagesMax" | "onConsole" | "onListening" | "onDeviceError" | "onPaused"
>;

export interface PrimaryDriverOptions {
  vmId: string;
  hostId: string;
  module: InstrumentedModule;
  /** The backup's logging-channel endpoint (ws://...). */
  backupUrl: string;
  arbiter: Arbiter;
  /** The pair's generation (default 1). */
  generation?: number;
  /** Silence after which the peer is declared failed (default 1000 ms; docs/ft-protocol.md). */
  timeoutMs?: number;
  /** The host's network: while cut off, no logging channel (network-gate.ts). */
  network?: NetworkGate;
  token?: string;
  /** The guest's devices: listen addresses, disk, console. */
  devices?: VmDevices;
  lagMsMax?: number;
  /** Called as each output leaves, with the count of records before it and how long it was held. */
  onRelease?: (seq: number, heldMs: number) => void;
  log?: DriverLog;
}

export interface PrimaryStatus {
  role: "primary";
  state: PrimaryState;
  generation: number;
  icount: bigint;
  appendedSeq: bigint;
  sentSeq: bigint;
  ackedSeq: bigint;
  lagIcount: bigint;
  lagMs: number;
  heldOutputs: number;
  cpuShare: number;
  paused: boolean;
  channelOpen: boolean;
  /** The longest silence from the peer while paired, in ms (against the failure timeout). */
  silenceMsMax: number;
  /** Bytes sent on the logging channel since this VM started, over every connection. */
  logBytesSent: number;
  /** How long the Output Rule held the last outputs (up to HOLD_SAMPLES), in ms. */
  outputHoldMsP50: number | null;
  outputHoldMsP99: number | null;
}

export class PrimaryDriver {
  readonly core: PrimaryCore;
  readonly machine: Machine;
  readonly done: Promise<VmResult>;
  private channel: Channel;
  private readonly held = new Map<number, { seq: number; release: () => void; heldSinceMs: number }>();
  private nextOutputId = 1;
  private readonly ticker: NodeJS.Timeout;
  private lastTickMs = performance.now();
  private lastLagUpdateMs = performance.now();
  private readonly lag = new LagClock();
  private icount = 0n;
  private readonly silence = new SilenceMeter();
  private cpuShare = 1;
  private lagIcountNow = 0n;
  /** The core's state at the last pump: transitions happen inside tick() and receive(). */
  private reportedState: PrimaryState = "paired";
  /** Bytes sent on earlier connections of the logging channel. */
  private bytesSentBefore = 0;
  private ended = false;
  private readonly holdMs = new Float64Array(HOLD_SAMPLES);
  private holdCount = 0;
  private readonly log: DriverLog;

  constructor(private readonly options: PrimaryDriverOptions) {
    this.log = (line) => options.log?.({ vm: options.vmId, role: "primary", generation: this.core.generation, ...line });
    this.core = new PrimaryCore({
      vmId: options.vmId,
      generation: options.generation ?? 1,
      hostId: options.hostId,
      ...(options.timeoutMs === undefined ? {} : { timeoutTicks: timeoutTicksFor(options.timeoutMs) }),
    });
    this.machine = new Machine({
      mode: "record",
      module: options.module,
      // Each output gets a marker record: the backup holds it before the output leaves, so a
      // backup that goes live emits exactly the outputs the primary did not (docs/ft-protocol.md).
      markOutputs: true,
      progressMs: PROGRESS_MS,
      ...options.devices,
      onRecords: (records) => {
        const last = records.at(-1);
        if (last !== undefined) {
          this.icount = last.icount;
          this.lag.sample(last.icount, performance.now());
        }
        this.core.append(records);
        this.pump();
      },
      holdOutput: (seq, release) => {
        if (failpoint("release-before-ack")) return release();
        const id = this.nextOutputId++;
        this.held.set(id, { seq, release, heldSinceMs: performance.now() });
        this.core.output(id, BigInt(seq));
        this.pump();
      },
    });
    this.channel = this.connect();
    const unsubscribe = options.network?.onChange((connected) => (connected ? this.reconnect() : this.channel.terminate()));
    this.ticker = setInterval(() => this.tick(), TICK_MS);
    this.done = this.machine.done.finally(() => {
      unsubscribe?.();
      this.ended = true;
      clearInterval(this.ticker);
      this.channel.terminate();
    });
  }

  /** A control entry (§3.3): logged, replayed by the backup, applied at one execution point. */
  control(kind: ControlKind, value = 0): void {
    this.machine.control(kind, value);
  }

  /** Dies as a crashed host would: no End record, no goodbye on the channel. */
  crash(): void {
    this.ended = true;
    clearInterval(this.ticker);
    this.channel.terminate();
    this.machine.kill();
  }

  status(): PrimaryStatus {
    const position = this.core.position();
    return {
      role: "primary",
      state: this.core.state,
      generation: this.core.generation,
      icount: this.icount,
      appendedSeq: position.appendedSeq,
      sentSeq: position.sentSeq,
      ackedSeq: position.ackedSeq,
      lagIcount: this.lagIcountNow,
      lagMs: this.core.state === "paired" ? this.lag.lagMs(this.icount - this.lagIcountNow, performance.now()) : 0,
      heldOutputs: this.held.size,
      cpuShare: this.cpuShare,
      paused: this.core.guestPaused,
      channelOpen: this.channel.open,
      silenceMsMax: this.silence.longestMs,
      logBytesSent: this.bytesSentBefore + this.channel.bytesSent,
      outputHoldMsP50: this.holdPercentile(0.5),
      outputHoldMsP99: this.holdPercentile(0.99),
    };
  }

  private holdPercentile(p: number): number | null {
    const n = Math.min(this.holdCount, HOLD_SAMPLES);
    if (n === 0) return null;
    const sorted = this.holdMs.slice(0, n).sort();
    return Math.round(sorted[Math.min(n - 1, Math.floor(n * p))]! * 1000) / 1000;
  }

  private tick(): void {
    const nowMs = performance.now();
    const sinceMs = nowMs - this.lastTickMs;
    this.lastTickMs = nowMs;
    // This process did not run for a whole timeout (SIGSTOP, a VM pause, swapping): the backup
    // may have declared us dead and gone live meanwhile. Acks still queued in the socket must
    // not release anything now; settle it at the arbiter instead (§2.3).
    if (sinceMs >= this.core.config.timeoutTicks * TICK_MS && this.core.state === "paired") {
      this.log({ level: "warn", msg: "this host was suspended past the timeout", event: "suspended", suspendedMs: Math.round(sinceMs) });
      this.core.backupLost();
    }
    if (nowMs - this.lastLagUpdateMs >= LAG_LIMIT_UPDATE_MS) {
      this.lastLagUpdateMs = nowMs;
      const rate = this.lag.rate();
      const lagMsMax = this.options.lagMsMax ?? LAG_MS_MAX_DEFAULT;
      if (rate > 0) this.core.setLagIcountMax(BigInt(Math.max(1, Math.round((rate * lagMsMax) / 1000))));
    }
    this.core.tick();
    this.pump();
  }

  private reconnect(): void {
    if (this.ended || this.core.state !== "paired" || this.channel.open) return;
    if (this.options.network?.connected === false) return;
    this.bytesSentBefore += this.channel.bytesSent;
    this.channel = this.connect();
  }

  private connect(): Channel {
    return connectChannel(
      this.options.backupUrl,
      {
        open: () => {
          this.core.channelUp();
          this.silence.connected(performance.now());
          this.pump();
        },
        message: (message) => {
          if (this.core.state === "paired") this.silence.heard(performance.now());
          else this.silence.stop();
          this.core.receive(message as BackupToPrimary);
          this.pump();
        },
        close: (reason) => {
          this.log({ level: "info", msg: "logging channel down", reason });
          this.core.channelDown();
          this.pump();
          // A dropped connection is not a failure by itself: the timeout decides (§2.3). Until
          // then, try again; the core resends whatever is unacknowledged.
          if (!this.ended && this.core.state === "paired") setTimeout(() => this.reconnect(), RECONNECT_MS);
        },
      },
      (line) => this.log(line),
    );
  }

  private pump(): void {
    const ready = this.core.ready();
    this.machine.setStall(ready.stall);
    this.lagIcountNow = ready.lagIcount;
    if (ready.cpuShare !== this.cpuShare) {
      this.cpuShare = ready.cpuShare;
      this.machine.setCpuShare(ready.cpuShare);
      this.log({ level: "info", msg: "cpu share", cpuShare: ready.cpuShare, lagIcount: ready.lagIcount });
    }
    for (const message of ready.messages) {
      const channel = this.channel;
      const send = () => channel.send(message.t === "hello" && this.options.token ? { ...message, token: this.options.token } : message);
      if (message.t === "entries" && failpoint("release-before-ack")) setTimeout(send, FAILPOINT_LOG_DELAY_MS);
      else send();
    }
    if (this.core.state === "goingAlone" && this.reportedState === "paired") {
      this.log({ level: "warn", msg: "backup failure detected", event: "failureDetected", peer: "backup" });
    }
    this.reportedState = this.core.state;
    if (ready.goAlone) {
      this.log({ level: "warn", msg: "backup lost: running alone", event: "wentAlone", newGeneration: ready.goAlone.generation });
      this.channel.terminate();
    }
    for (const id of ready.release) {
      const output = this.held.get(id)!;
      this.held.delete(id);
      output.release();
      const heldMs = performance.now() - output.heldSinceMs;
      this.holdMs[this.holdCount++ % HOLD_SAMPLES] = heldMs;
      this.options.onRelease?.(output.seq, heldMs);
    }
    if (ready.testAndSet) {
      void this.options.arbiter.testAndSet(ready.testAndSet).then((result) => {
        this.core.testAndSetResult(result);
        this.pump();
      });
    }
    for (const error of ready.errors) this.log({ level: "warn", msg: "protocol error", error });
    if (ready.halt) {
      this.log({ level: "warn", msg: "halted", event: "halted", reason: ready.halt });
      this.held.clear();
      this.channel.terminate();
      this.machine.stop();
    }
  }
}
