// The primary's side of the FT protocol (§2.2, §2.3, §3.2, §3.3 of the paper), as a pure state
// machine: no I/O, no timers, no clock, no randomness. The driver feeds it events (records
// appended by the vCPU, outputs, channel messages, ticks, test-and-set answers), then calls
// `ready()` and performs what the returned PrimaryReady says, in the order documented there.
// This is etcd raft's Node/Ready shape; it is what lets test/ft simulate the protocol.
//
// States and transitions (asserted in `become`):
//
//   paired ──timeout / backupLost──▶ goingAlone ──won──▶ alone ──pair()──▶ paired
//     │                                 │  └──lost──▶ halted
//     └──superseded / power-off acked──▶ halted ◀──superseded / power-off── alone
//
// - paired: recording for a backup. Records go out as `entries`; an output leaves only once
//   the backup has acknowledged every record before it (the Output Rule, §2.2). The VM runs on
//   meanwhile; only outputs wait.
// - goingAlone: the backup is declared dead (no message for timeoutTicks, or the driver says
//   so). The primary must WIN the test-and-set of generation + 1 before it releases anything:
//   on a partition where both sides are up, the backup is contending for the same register,
//   and if both went live without it they would both emit output (split brain). Whoever wins
//   runs as generation + 1; the loser halts (§2.3, and the FAQ: the arbiter is used in both
//   directions). While the arbiter is unreachable the primary retries with a capped backoff
//   and keeps holding output; the VM keeps running (outputs queue, then `stall`). Once the
//   primary has declared the backup dead it stops sending and stops counting acks: the
//   decision is the register's now, and any ack that arrives is ignored.
// - alone: live without a backup, generation + 1; outputs leave at once, nothing is logged to
//   anyone. `pair()` starts recording for a new backup cloned at the current position (§3.1).
// - halted: final. Lost the test-and-set, learned that a higher generation is live (a stale
//   primary, paused past the timeout: it could not release anything meanwhile, because no
//   backup acknowledged its records), or the VM was powered off / ended.
//
// After `halted`, every input is ignored: the vCPU may still deliver a few records and
// outputs that were in flight when the driver stopped it.

import { encodedRecordBytes } from "../../protocol/codec.js";
import { ControlKind, type LogRecord, RecordKind } from "../../protocol/records.js";
import { assert } from "../errors.js";
import { type HaltReason, isTerminal, type ProtocolError, READY_ERRORS_MAX, take } from "./common.js";
import { type PrimaryConfig, primaryConfig, type PrimaryOptions } from "./config.js";
import type { BackupToPrimary, PrimaryToBackup, TestAndSetRequest, TestAndSetResult } from "./messages.js";
import { BoundedQueue } from "./queue.js";
import { TestAndSetClient } from "./tas.js";

export type PrimaryState = "paired" | "goingAlone" | "alone" | "halted";

/**
 * What the driver must do now. Perform the fields in this order:
 *
 * 1. `stall`, `cpuShare`: levels, not edges; apply them to the vCPU at once.
 * 2. `messages`: send on the logging channel, in order. Records are not copied: encode them
 *    before the vCPU could reuse anything they reference.
 * 3. `goAlone`: the primary won the test-and-set and is now generation `goAlone.generation`:
 *    stop sending to the old backup and use the new generation from here on. Do this before
 *    step 4: the outputs in this Ready's `release` are released by that win.
 * 4. `release`: output ids that may now leave, in the order they were registered. Outputs are
 *    released by an ack or by winning the test-and-set, never by time; releasing one is
 *    irrevocable, so a driver that has not performed them must not drop them.
 * 5. `testAndSet`: issue this request to the arbiter and report its one answer with
 *    `testAndSetResult` (a driver-side timeout answers "unreachable"). At most one is ever
 *    outstanding.
 * 6. `halt`: final. Stop the vCPU; drop every output still held (never send them). Outputs in
 *    `release` of the same Ready were acknowledged before the halt and may still be sent.
 */
export interface PrimaryReady {
  messages: readonly PrimaryToBackup[];
  release: readonly number[];
  /** The log buffer or the held outputs are full: the vCPU must stop until this clears. */
  stall: boolean;
  /** The vCPU's share of CPU time, 0.05..1 by default, from lag control (§3.2). */
  cpuShare: number;
  testAndSet: TestAndSetRequest | null;
  goAlone: { generation: number } | null;
  halt: HaltReason | null;
  /** Figures, for the dashboard and the driver's lag-in-ms estimate. */
  lagIcount: bigint;
  unackedRecords: number;
  unackedBytes: number;
  heldOutputs: number;
  errors: readonly ProtocolError[];
}

const TRANSITIONS: Record<PrimaryState, readonly PrimaryState[]> = {
  paired: ["goingAlone", "halted"],
  goingAlone: ["alone", "halted"],
  alone: ["paired", "halted"],
  halted: [],
};

export class PrimaryCore {
  readonly config: PrimaryConfig;
  private stateNow: PrimaryState;
  private generationNow: number;
  private haltReasonNow: HaltReason | null = null;

  // The log. Every seq below is an exclusive bound ("records before").
  /** Next seq to append. */
  private appendedSeq: bigint;
  /** icount of the last record appended: the primary's position for lag. */
  private appendedIcount: bigint;
  /** The backup holds every record < ackedSeq. */
  private ackedSeq: bigint;
  /** Records < sentSeq have been handed to the driver to send on this connection. */
  private sentSeq: bigint;
  /** The backup accepts records < windowEndSeq (largest advertised). */
  private windowEndSeq: bigint;
  /** Where recording for the current backup began: no ack can be below it. */
  private pairSeq: bigint;
  /** Records [ackedSeq, appendedSeq) and their encoded sizes: the log buffer (§3.2). */
  private readonly buffer: BoundedQueue<LogRecord>;
  private readonly bufferSizes: BoundedQueue<number>;
  private bufferBytes = 0;
  /** seq + 1 of a PowerOff or End record, once appended: nothing may follow it. */
  private terminalSeq: bigint | null = null;
  private terminalReason: HaltReason | null = null;
  /** The last Pause/Resume control appended was a Pause (unknown before startSeq: false). */
  private guestPausedNow = false;

  // Outputs held under the Output Rule, in registration order (their seqs never decrease).
  private readonly heldIds: BoundedQueue<number>;
  private readonly heldSeqs: BoundedQueue<bigint>;
  private lastOutputSeq: bigint;

  // The backup's replay position, for lag.
  private replayedSeq: bigint;
  private replayedIcount: bigint;
  private cpuSharePermille = 1000;

  // Logical time.
  private silenceTicks = 0;
  private idleTicks = 0;
  private sinceAckProgressTicks = 0;
  private lagTicks = 0;
  private connected = false;
  /**
   * False from pair() until the new backup's channel first comes up: a clone's snapshot is in
   * transit meanwhile, and its silence is no failure. The driver bounds that wait itself
   * (backupLost). A primary that starts paired counts silence from the start.
   */
  private contactedSincePair = true;
  /** Ticks since the channel closed, while it stays closed (reconnectGraceTicks). */
  private disconnectedTicks = 0;
  /** The channel to the current backup has been up at least once: a close means something. */
  private everConnected = false;
  private helloDue = false;
  private heartbeatDue = false;

  /** A fresh client per contention: a primary may pair again and contend for a later generation. */
  private tas: TestAndSetClient;

  // What the next Ready reports.
  private pendingMessages: PrimaryToBackup[] = [];
  private pendingRelease: number[] = [];
  private pendingTas: TestAndSetRequest | null = null;
  private pendingGoAlone: { generation: number } | null = null;
  private pendingHalt: HaltReason | null = null;
  private pendingErrors: ProtocolError[] = [];

  /** Counters, for tests and the dashboard. */
  readonly stats = { retransmits: 0, protocolErrors: 0, recordsSent: 0, outputsReleased: 0 };

  constructor(config: PrimaryOptions) {
    this.config = primaryConfig(config);
    const c = this.config;
    this.stateNow = c.mode;
    this.generationNow = c.generation;
    this.appendedSeq = c.startSeq;
    this.appendedIcount = c.startIcount;
    this.ackedSeq = c.startSeq;
    this.pairSeq = c.startSeq;
    this.sentSeq = c.startSeq;
    this.windowEndSeq = c.startSeq;
    this.lastOutputSeq = c.startSeq;
    this.replayedSeq = c.startSeq;
    this.replayedIcount = c.startIcount;
    this.buffer = new BoundedQueue(c.bufferRecordsMax + c.stallSlackRecords, "primary log buffer");
    this.bufferSizes = new BoundedQueue(c.bufferRecordsMax + c.stallSlackRecords, "primary log buffer sizes");
    this.heldIds = new BoundedQueue(c.heldOutputsMax + c.heldOutputsSlack, "held outputs");
    this.heldSeqs = new BoundedQueue(c.heldOutputsMax + c.heldOutputsSlack, "held output seqs");
    this.tas = new TestAndSetClient(c.tasRetryMinTicks, c.tasRetryMaxTicks);
  }

  get state(): PrimaryState {
    return this.stateNow;
  }

  get generation(): number {
    return this.generationNow;
  }

  get haltReason(): HaltReason | null {
    return this.haltReasonNow;
  }

  /** The operator paused the guest (for the dashboard; a paused VM still heartbeats). */
  get guestPaused(): boolean {
    return this.guestPausedNow;
  }

  /** The next seq the vCPU will append. */
  get nextSeq(): bigint {
    return this.appendedSeq;
  }

  /** Where the log stands; every value is an exclusive bound (docs/ft-protocol.md). */
  position(): { appendedSeq: bigint; ackedSeq: bigint; sentSeq: bigint; windowEndSeq: bigint; replayedSeq: bigint } {
    return {
      appendedSeq: this.appendedSeq,
      ackedSeq: this.ackedSeq,
      sentSeq: this.sentSeq,
      windowEndSeq: this.windowEndSeq,
      replayedSeq: this.replayedSeq,
    };
  }

  // ---- inputs from the vCPU -----------------------------------------------------------------

  /**
   * Records from the vCPU, in order, seqs continuing densely from the last. After a PowerOff
   * control or an End record nothing may be appended. Asserts on a broken stream, or when the
   * buffer passes its limit + slack (the driver ignored `stall`).
   */
  append(records: readonly LogRecord[]): void {
    if (this.stateNow === "halted") return;
    const c = this.config;
    for (const record of records) {
      assert(this.terminalSeq === null, "no record after a PowerOff or End record");
      assert(record.seq === this.appendedSeq, `append: seq ${record.seq} continues at ${this.appendedSeq}`);
      assert(record.icount >= this.appendedIcount, "append: icount never decreases");
      if (this.stateNow === "paired") {
        // Checked before anything changes, so that a failed assertion leaves the core as it was.
        const bytes = encodedRecordBytes(record);
        assert(bytes <= c.recordBytesMax, `append: record of ${bytes} bytes ≤ recordBytesMax`);
        assert(this.bufferBytes + bytes <= c.bufferBytesMax + c.stallSlackBytes, "append: log buffer within limit + slack");
        this.buffer.push(record);
        this.bufferSizes.push(bytes);
        this.bufferBytes += bytes;
      }
      this.checkControl(record);
      this.appendedSeq++;
      this.appendedIcount = record.icount;
      if (isTerminal(record)) {
        this.terminalSeq = this.appendedSeq;
        this.terminalReason = record.kind === RecordKind.End ? "end" : "powerOff";
      }
    }
    // Nobody to tell: a VM running alone stops at its PowerOff/End at once.
    if (this.stateNow === "alone" && this.terminalReason !== null) this.halt(this.terminalReason);
  }

  /**
   * An output of the guest that may leave once every record with seq < `seq` is safe. `seq`
   * must count the output's own marker record (the Digest the vCPU logs at each output): a
   * backup that goes live after the last record before an output could take a different path
   * before reaching it (§2.2). Seqs never decrease; `seq` ≤ the records appended so far.
   */
  output(id: number, seq: bigint): void {
    if (this.stateNow === "halted") return;
    assert(Number.isSafeInteger(id), "output id is a safe integer");
    assert(seq <= this.appendedSeq, `output seq ${seq} ≤ appended ${this.appendedSeq}`);
    assert(seq >= this.lastOutputSeq, "output seqs never decrease");
    this.lastOutputSeq = seq;
    if (this.stateNow === "alone" || (this.stateNow === "paired" && this.heldIds.length === 0 && seq <= this.ackedSeq)) {
      this.release(id);
      return;
    }
    this.heldIds.push(id);
    this.heldSeqs.push(seq);
  }

  // ---- inputs from the channel --------------------------------------------------------------

  /** The logging channel is connected (again): everything unacknowledged is resent. */
  channelUp(): void {
    this.connected = true;
    this.everConnected = true;
    this.disconnectedTicks = 0;
    this.contactedSincePair = true;
    this.helloDue = true;
    this.sentSeq = this.ackedSeq;
  }

  /** The logging channel dropped. Not a failure by itself: the timeout decides. */
  channelDown(): void {
    this.connected = false;
    this.sentSeq = this.ackedSeq;
  }

  receive(message: BackupToPrimary): void {
    if (this.stateNow === "halted") return;
    if (message.vmId !== this.config.vmId) {
      this.error("WRONG_VM", `message for VM ${message.vmId}`);
      return;
    }
    if (message.generation > this.generationNow) {
      this.halt("superseded");
      return;
    }
    // Stale, or a backup we no longer listen to (goingAlone) or no longer have (alone).
    if (message.generation < this.generationNow || this.stateNow !== "paired") return;
    if (message.t === "hello") {
      if (message.role !== "backup") this.error("WRONG_ROLE", `hello from a ${message.role}`);
      else this.silenceTicks = 0;
      return;
    }
    this.onAck(message);
  }

  private onAck(ack: Extract<BackupToPrimary, { t: "ack" }>): void {
    if (ack.ackSeq > this.appendedSeq || ack.replayedSeq > ack.ackSeq || ack.ackSeq < this.pairSeq) {
      this.error("BAD_ACK", `ack ${ack.ackSeq} replayed ${ack.replayedSeq} with ${this.appendedSeq} appended`);
      return;
    }
    this.silenceTicks = 0;
    if (ack.windowEndSeq > this.windowEndSeq) this.windowEndSeq = ack.windowEndSeq;
    if (ack.replayedSeq > this.replayedSeq) {
      this.replayedSeq = ack.replayedSeq;
      this.replayedIcount = ack.replayedIcount;
    }
    if (ack.ackSeq > this.ackedSeq) {
      while (this.ackedSeq < ack.ackSeq) {
        this.buffer.shift();
        this.bufferBytes -= this.bufferSizes.shift();
        this.ackedSeq++;
      }
      if (this.sentSeq < this.ackedSeq) this.sentSeq = this.ackedSeq;
      this.sinceAckProgressTicks = 0;
      while (this.heldSeqs.length > 0 && this.heldSeqs.at(0) <= this.ackedSeq) {
        this.heldSeqs.shift();
        this.release(this.heldIds.shift());
      }
      if (this.terminalSeq !== null && this.ackedSeq >= this.terminalSeq) {
        // The backup holds the PowerOff/End record: it will stop rather than go live (§3.3).
        this.halt(this.terminalReason!);
        return;
      }
    }
    if (ack.resend && ack.ackSeq === this.ackedSeq && this.sentSeq > this.ackedSeq) {
      // A gap at the backup: go back to the first record it lacks.
      this.sentSeq = this.ackedSeq;
      this.stats.retransmits++;
    }
  }

  // ---- time and failure ---------------------------------------------------------------------

  /** One tick of logical time. Do not catch up after the process itself stalled (see docs). */
  tick(): void {
    const c = this.config;
    switch (this.stateNow) {
      case "halted":
      case "alone":
        return;
      case "goingAlone": {
        const retry = this.tas.tick();
        if (retry !== null) this.pendingTas = retry;
        return;
      }
      case "paired":
        break;
    }
    if (!this.connected && this.everConnected && c.reconnectGraceTicks > 0 && ++this.disconnectedTicks >= c.reconnectGraceTicks) {
      this.goingAlone();
      return;
    }
    if (this.contactedSincePair) this.silenceTicks++;
    if (this.silenceTicks >= c.timeoutTicks) {
      this.goingAlone();
      return;
    }
    this.idleTicks++;
    if (this.idleTicks >= c.heartbeatTicks) this.heartbeatDue = true;
    // Time since the oldest record in flight was sent or last acknowledged.
    if (this.sentSeq > this.ackedSeq) this.sinceAckProgressTicks++;
    else this.sinceAckProgressTicks = 0;
    if (this.sinceAckProgressTicks >= c.retransmitTicks) {
      this.sinceAckProgressTicks = 0;
      this.sentSeq = this.ackedSeq;
      this.stats.retransmits++;
    }
    this.lagTicks++;
    if (this.lagTicks >= c.lagCheckTicks) {
      this.lagTicks = 0;
      this.adjustCpuShare();
    }
  }

  /** The driver knows the backup is gone (its host said so, or the cluster service did). */
  backupLost(): void {
    if (this.stateNow === "paired") this.goingAlone();
  }

  /**
   * Lag control's limit in instructions (§3.2). The driver sets it from its measured rate so
   * that the limit stays about a second of the primary's execution, whatever the guest does.
   */
  setLagIcountMax(limit: bigint): void {
    assert(limit > 0n, "lagIcountMax > 0");
    this.config.lagIcountMax = limit;
  }

  testAndSetResult(result: TestAndSetResult): void {
    if (this.stateNow === "halted") return;
    assert(this.stateNow === "goingAlone", "testAndSetResult: only while going alone");
    switch (this.tas.result(result)) {
      case "won": {
        this.become("alone");
        this.generationNow++;
        this.pendingGoAlone = { generation: this.generationNow };
        // Nobody else can go live for this generation now: every held output may leave.
        while (this.heldIds.length > 0) {
          this.heldSeqs.shift();
          this.release(this.heldIds.shift());
        }
        if (this.terminalReason !== null) this.halt(this.terminalReason);
        return;
      }
      case "lost":
        this.halt("lostTestAndSet");
        return;
      case "unreachable":
        return;
    }
  }

  /** The arbiter, the cluster service or a peer says generation `generation` is live. */
  generationSuperseded(generation: number): void {
    if (this.stateNow !== "halted" && generation > this.generationNow) this.halt("superseded");
  }

  /**
   * Start recording for a new backup cloned at the current position (§3.1): the vCPU is
   * stopped at a record boundary while the snapshot is taken, so the backup's log starts at
   * `nextSeq`. Same generation: the next failure is settled on generation + 1.
   */
  pair(): void {
    assert(this.terminalSeq === null, "pair: not after a PowerOff or End record");
    this.become("paired");
    this.ackedSeq = this.appendedSeq;
    this.sentSeq = this.appendedSeq;
    this.windowEndSeq = this.appendedSeq;
    this.replayedSeq = this.appendedSeq;
    this.replayedIcount = this.appendedIcount;
    this.cpuSharePermille = 1000;
    this.silenceTicks = 0;
    this.idleTicks = 0;
    this.sinceAckProgressTicks = 0;
    this.lagTicks = 0;
    this.connected = false;
    this.everConnected = false;
    this.disconnectedTicks = 0;
    this.contactedSincePair = false;
    this.pairSeq = this.appendedSeq;
  }

  // ---- output -------------------------------------------------------------------------------

  ready(): PrimaryReady {
    if (this.stateNow === "paired" && this.connected) this.flush();
    const c = this.config;
    const unackedRecords = this.stateNow === "paired" ? Number(this.appendedSeq - this.ackedSeq) : 0;
    const stall =
      this.stateNow === "halted" ||
      this.heldIds.length >= c.heldOutputsMax ||
      unackedRecords >= c.bufferRecordsMax ||
      this.bufferBytes >= c.bufferBytesMax;
    const ready: PrimaryReady = {
      messages: take(this.pendingMessages),
      release: take(this.pendingRelease),
      stall,
      cpuShare: this.stateNow === "paired" ? this.cpuSharePermille / 1000 : 1,
      testAndSet: this.pendingTas,
      goAlone: this.pendingGoAlone,
      halt: this.pendingHalt,
      lagIcount: this.lagIcount(),
      unackedRecords,
      unackedBytes: this.bufferBytes,
      heldOutputs: this.heldIds.length,
      errors: take(this.pendingErrors),
    };
    this.pendingTas = null;
    this.pendingGoAlone = null;
    this.pendingHalt = null;
    return ready;
  }

  /** Queues hello, entries within the backup's window, and a heartbeat if nothing else. */
  private flush(): void {
    const c = this.config;
    const envelope = { vmId: c.vmId, generation: this.generationNow };
    if (this.helloDue) {
      this.pendingMessages.push({ t: "hello", ...envelope, role: "primary" });
      this.helloDue = false;
    }
    const end = this.appendedSeq < this.windowEndSeq ? this.appendedSeq : this.windowEndSeq;
    // Bounded: every pass sends at least one record, and there are at most a buffer's worth.
    while (this.sentSeq < end) {
      const records: LogRecord[] = [];
      let bytes = 0;
      let index = Number(this.sentSeq - this.ackedSeq);
      while (this.sentSeq < end && records.length < c.batchRecordsMax) {
        const size = this.bufferSizes.at(index);
        if (records.length > 0 && bytes + size > c.batchBytesMax) break;
        records.push(this.buffer.at(index));
        bytes += size;
        index++;
        this.sentSeq++;
      }
      this.stats.recordsSent += records.length;
      this.pendingMessages.push({ t: "entries", ...envelope, records });
    }
    if (this.heartbeatDue && this.pendingMessages.length === 0) this.pendingMessages.push({ t: "heartbeat", ...envelope });
    this.heartbeatDue = false;
    if (this.pendingMessages.length > 0) this.idleTicks = 0;
  }

  // ---- internals ----------------------------------------------------------------------------

  private lagIcount(): bigint {
    if (this.stateNow !== "paired") return 0n;
    const lag = this.appendedIcount - this.replayedIcount;
    return lag > 0n ? lag : 0n;
  }

  /** §3.2: a slow loop; down a step while lag is over the limit, up while under half of it. */
  private adjustCpuShare(): void {
    const c = this.config;
    const lag = this.lagIcount();
    if (lag > c.lagIcountMax) {
      this.cpuSharePermille = Math.max(c.cpuShareMinPermille, this.cpuSharePermille - c.cpuShareStepDownPermille);
    } else if (lag * 2n <= c.lagIcountMax) {
      this.cpuSharePermille = Math.min(1000, this.cpuSharePermille + c.cpuShareStepUpPermille);
    }
  }

  private goingAlone(): void {
    this.become("goingAlone");
    // Whether it wins (alone) or loses (halted), these records are never sent again.
    this.buffer.clear();
    this.bufferSizes.clear();
    this.bufferBytes = 0;
    this.tas = new TestAndSetClient(this.config.tasRetryMinTicks, this.config.tasRetryMaxTicks);
    this.pendingTas = this.tas.start({ vmId: this.config.vmId, generation: this.generationNow + 1, owner: this.config.hostId });
  }

  private release(id: number): void {
    this.pendingRelease.push(id);
    this.stats.outputsReleased++;
  }

  private halt(reason: HaltReason): void {
    this.become("halted");
    this.haltReasonNow = reason;
    this.pendingHalt = reason;
    this.heldIds.clear();
    this.heldSeqs.clear();
    this.buffer.clear();
    this.bufferSizes.clear();
    this.bufferBytes = 0;
    this.pendingTas = null;
  }

  private become(next: PrimaryState): void {
    assert(TRANSITIONS[this.stateNow].includes(next), `primary: ${this.stateNow} → ${next} is not a legal transition`);
    this.stateNow = next;
  }

  /** Pause/Resume are the operator's (§3.3); they flow to the backup like any record. */
  private checkControl(record: LogRecord): void {
    if (record.kind !== RecordKind.Control) return;
    if (record.a === ControlKind.Pause) this.guestPausedNow = true;
    else if (record.a === ControlKind.Resume) this.guestPausedNow = false;
  }

  private error(code: ProtocolError["code"], detail: string): void {
    this.stats.protocolErrors++;
    if (this.pendingErrors.length < READY_ERRORS_MAX) this.pendingErrors.push({ code, detail });
  }
}
