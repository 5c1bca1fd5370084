// The primary's side of the FT protocol (§2.2, §2.3, §3.2, §3.3 of the paper), as a pure state
// machine: no I/O, no timers, no clock, no randomness. The driver feeds it events (records
// appended by the vCPU, outputs, channel messages, ticks, test-and-set answers), then calls
// `ready()` and performs what the returned PrimaryReady says, in the order documented there.
// This is etcd raft's Node/Ready shape; it is what lets test/ft simulate the protocol.
//
// A primary records for one backup or several (`--backups N`, docs/ft-protocol.md "More than
// one backup"); each has its own progress (acked, sent, window, replayed: etcd raft's
// Progress), and every rule below reads "every backup" where the paper says "the backup".
//
// States and transitions (asserted in `become`):
//
//   paired ──some backups lost──▶ renewing ──won──▶ paired
//     │  ▲                           └──lost──▶ halted
//     │  └──────pair()──────┐
//     ├──all backups lost──▶ goingAlone ──won──▶ alone
//     │                         └──lost──▶ halted
//     └──superseded / power-off acked──▶ halted ◀──superseded / power-off── alone
//
// - paired: recording for its backups. Records go out to each as `entries`; an output leaves
//   only once EVERY backup has acknowledged every record before it (the Output Rule, §2.2):
//   any one of them may be the one that goes live. The VM runs on meanwhile; only outputs wait.
// - renewing: some backups are declared dead (no message for timeoutTicks, or the driver says
//   so), others are not. The primary cannot wait for a dead backup forever, nor just forget
//   it: a backup that is only cut off may be contending for generation + 1 right now, and it
//   lacks what the others acknowledged since. So the primary contends for generation + 1 too,
//   telling the backups it keeps (`renew`) that they stay its backups there; it releases
//   nothing until it has won. Won: it runs generation + 1 with the backups it kept, and the
//   dropped ones can never go live (they would need generation + 1). Lost: the dropped
//   backup is live; halt. The set kept is fixed when the contest starts (a kept backup may
//   have recorded the renew): one that falls silent meanwhile is dropped by the next contest,
//   right after this one is won.
// - goingAlone: every backup is declared dead. The same contest, keeping nobody (§2.3, and
//   the FAQ: the arbiter is used in both directions). While the arbiter is unreachable the
//   primary retries with a capped backoff and keeps holding output; the VM keeps running
//   (outputs queue, then `stall`). Acks that arrive meanwhile are ignored: the register decides.
// - alone: live without a backup, generation + 1; outputs leave at once, nothing is logged to
//   anyone. `pair()` starts recording for a new backup cloned at the current position (§3.1);
//   so does `pair()` while paired, for one more backup.
// - halted: final. Lost the test-and-set, learned that a higher generation is live (a stale
//   primary, paused past the timeout: it could not release anything meanwhile, because no
//   backup acknowledged its records), or the VM was powered off / ended.
//
// Within one generation the set of backups only grows (pair()); removing one always takes
// winning the next generation. That is what makes "a backup of generation G holds every
// output released in G" true of every backup that can ever contend for G + 1.
//
// After `halted`, every input is ignored: the vCPU may still deliver a few records and
// outputs that were in flight when the driver stopped it.

import { encodedRecordBytes } from "../../protocol/codec.js";
import { ControlKind, type LogRecord, RecordKind } from "../../protocol/records.js";
import { assert } from "../errors.js";
import { type HaltReason, isTerminal, type ProtocolError, READY_ERRORS_MAX, take } from "./common.js";
import { type PrimaryConfig, primaryConfig, type PrimaryOptions, SOLE_BACKUP } from "./config.js";
import type { BackupToPrimary, PrimaryToBackup, TestAndSetRequest, TestAndSetResult } from "./messages.js";
import { BoundedQueue } from "./queue.js";
import { TestAndSetClient } from "./tas.js";

export type PrimaryState = "paired" | "renewing" | "goingAlone" | "alone" | "halted";

/** How the driver names a backup: messages go to it, acks come from it. Unique per pairing. */
export type BackupId = string;

/** A message for one backup's logging channel. */
export interface Outgoing {
  to: BackupId;
  message: PrimaryToBackup;
}

/**
 * What the driver must do now. Perform the fields in this order:
 *
 * 1. `stall`, `cpuShare`: levels, not edges; apply them to the vCPU at once.
 * 2. `messages`: send each on its backup's logging channel, in order. Records are not copied:
 *    encode them before the vCPU could reuse anything they reference.
 * 3. `goAlone` / `renewed`: the primary won the test-and-set and is now that generation, with
 *    no backup left (`goAlone`) or with the backups it kept (`renewed`): use the new
 *    generation from here on. Do this before step 4: the outputs in this Ready's `release`
 *    are released by that win.
 * 4. `release`: output ids that may now leave, in the order they were registered. Outputs are
 *    released by acks or by winning the test-and-set, never by time; releasing one is
 *    irrevocable, so a driver that has not performed them must not drop them. They were
 *    earned with the backups before this Ready's `dropped` went (a backup may be dropped by
 *    the contest that starts right after the win that released them).
 * 5. `dropped`: these backups are no longer this VM's: close their channels and never connect
 *    to them again (a message of a newer generation must never reach them). No message of
 *    this Ready is for them.
 * 6. `testAndSet`: issue this request to the arbiter and report its one answer with
 *    `testAndSetResult` (a driver-side timeout answers "unreachable"). At most one is ever
 *    outstanding.
 * 7. `halt`: final. Stop the vCPU; drop every output still held (never send them). Outputs in
 *    `release` of the same Ready were acknowledged before the halt and may still be sent.
 */
export interface PrimaryReady {
  messages: readonly Outgoing[];
  dropped: readonly BackupId[];
  release: readonly number[];
  /** The log buffer or the held outputs are full: the vCPU must stop until this clears. */
  stall: boolean;
  /** The vCPU's share of CPU time, 0.05..1 by default, from lag control (§3.2). */
  cpuShare: number;
  testAndSet: TestAndSetRequest | null;
  goAlone: { generation: number } | null;
  renewed: { generation: number } | null;
  halt: HaltReason | null;
  /** Figures, for the dashboard and the driver's lag-in-ms estimate: the worst backup's lag. */
  lagIcount: bigint;
  unackedRecords: number;
  unackedBytes: number;
  heldOutputs: number;
  errors: readonly ProtocolError[];
}

/** One backup's progress, for status figures. Every seq is an exclusive bound. */
export interface BackupProgress {
  id: BackupId;
  ackedSeq: bigint;
  sentSeq: bigint;
  windowEndSeq: bigint;
  replayedSeq: bigint;
  replayedIcount: bigint;
  /** The primary's icount minus this backup's replayed icount (0 if ahead). */
  lagIcount: bigint;
  /** The generation this backup's messages carried last: it lags the primary's after a renewal. */
  generation: number;
  connected: boolean;
  /** Declared dead while the primary was renewing: dropped once that contest is won. */
  lost: boolean;
}

const TRANSITIONS: Record<PrimaryState, readonly PrimaryState[]> = {
  paired: ["renewing", "goingAlone", "halted"],
  renewing: ["paired", "halted"],
  goingAlone: ["alone", "halted"],
  alone: ["paired", "halted"],
  halted: [],
};

/** A backup as the primary sees it (etcd raft's Progress). */
interface Backup {
  readonly id: BackupId;
  /** Where recording for this backup began: no ack of its can be below it. */
  readonly startSeq: bigint;
  /** The generation it was paired in: it never speaks an older one (guards a reused id). */
  readonly pairedGeneration: number;
  /** It holds every record < ackedSeq. */
  ackedSeq: bigint;
  /** Records < sentSeq have been handed to the driver to send on this connection. */
  sentSeq: bigint;
  /** It accepts records < windowEndSeq (largest advertised). */
  windowEndSeq: bigint;
  replayedSeq: bigint;
  replayedIcount: bigint;
  /** The highest generation its messages carried. Below the primary's: it needs a renew. */
  generationSeen: number;
  connected: boolean;
  /** The channel has been up at least once: a close means something. */
  everConnected: boolean;
  /**
   * False from pair() until its channel first comes up: a clone's snapshot is in transit
   * meanwhile, and its silence is no failure. The driver bounds that wait itself
   * (backupLost). A backup the primary starts with counts silence from the start.
   */
  contacted: boolean;
  /** Ticks since the channel closed, while it stays closed (reconnectGraceTicks). */
  disconnectedTicks: number;
  silenceTicks: number;
  idleTicks: number;
  sinceAckProgressTicks: number;
  helloDue: boolean;
  heartbeatDue: boolean;
  renewDue: boolean;
  /** Declared dead during a contest: still a backup of the contested generation, dropped next. */
  lost: boolean;
}

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
  /** EVERY backup holds every record < ackedSeq: the minimum of their acks. */
  private ackedSeq: bigint;
  /** Records [ackedSeq, appendedSeq) and their encoded sizes: the log buffer (§3.2). */
  private readonly buffer: BoundedQueue<LogRecord>;
  private readonly bufferSizes: BoundedQueue<number>;
  private bufferBytes = 0;
  /** seq + 1 of a PowerOff or End record, once appended: nothing may follow it. */
  private terminalSeq: bigint | null = null;
  private terminalReason: HaltReason | null = null;
  /** The last Pause/Resume control appended was a Pause (unknown before startSeq: false). */
  private guestPausedNow = false;

  /** The backups, in pairing order; at most backupsMax. Empty when alone or going alone. */
  private readonly backups = new Map<BackupId, Backup>();

  // Outputs held under the Output Rule, in registration order (their seqs never decrease).
  private readonly heldIds: BoundedQueue<number>;
  private readonly heldSeqs: BoundedQueue<bigint>;
  private lastOutputSeq: bigint;

  private cpuSharePermille = 1000;
  private lagTicks = 0;

  /** A fresh client per contest: a primary contends again for each later generation. */
  private tas: TestAndSetClient;

  // What the next Ready reports.
  private pendingMessages: Outgoing[] = [];
  private pendingDropped: BackupId[] = [];
  private pendingRelease: number[] = [];
  private pendingTas: TestAndSetRequest | null = null;
  private pendingGoAlone: { generation: number } | null = null;
  private pendingRenewed: { generation: number } | null = null;
  private pendingHalt: HaltReason | null = null;
  private pendingErrors: ProtocolError[] = [];

  /** Counters, for tests and the dashboard. */
  readonly stats = { retransmits: 0, protocolErrors: 0, recordsSent: 0, outputsReleased: 0, renewals: 0 };

  constructor(config: PrimaryOptions) {
    this.config = primaryConfig(config);
    const c = this.config;
    this.stateNow = c.mode;
    this.generationNow = c.generation;
    this.appendedSeq = c.startSeq;
    this.appendedIcount = c.startIcount;
    this.ackedSeq = c.startSeq;
    this.lastOutputSeq = c.startSeq;
    this.buffer = new BoundedQueue(c.bufferRecordsMax + c.stallSlackRecords, "primary log buffer");
    this.bufferSizes = new BoundedQueue(c.bufferRecordsMax + c.stallSlackRecords, "primary log buffer sizes");
    this.heldIds = new BoundedQueue(c.heldOutputsMax + c.heldOutputsSlack, "held outputs");
    this.heldSeqs = new BoundedQueue(c.heldOutputsMax + c.heldOutputsSlack, "held output seqs");
    this.tas = new TestAndSetClient(c.tasRetryMinTicks, c.tasRetryMaxTicks);
    // Backups it starts with were started with it: their silence counts from the start.
    if (c.mode === "paired") for (const id of c.backups) this.addBackup(id, true);
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

  /** The backups' ids, in pairing order (kept ones only, while renewing). */
  get backupIds(): BackupId[] {
    return [...this.backups.keys()];
  }

  /**
   * Where the log stands; every value is an exclusive bound (docs/ft-protocol.md). With several
   * backups each is the minimum over them: what every backup has.
   */
  position(): { appendedSeq: bigint; ackedSeq: bigint; sentSeq: bigint; windowEndSeq: bigint; replayedSeq: bigint } {
    let sentSeq: bigint | null = null;
    let windowEndSeq: bigint | null = null;
    let replayedSeq: bigint | null = null;
    for (const backup of this.backups.values()) {
      if (sentSeq === null || backup.sentSeq < sentSeq) sentSeq = backup.sentSeq;
      if (windowEndSeq === null || backup.windowEndSeq < windowEndSeq) windowEndSeq = backup.windowEndSeq;
      if (replayedSeq === null || backup.replayedSeq < replayedSeq) replayedSeq = backup.replayedSeq;
    }
    return {
      appendedSeq: this.appendedSeq,
      ackedSeq: this.ackedSeq,
      sentSeq: sentSeq ?? this.ackedSeq,
      windowEndSeq: windowEndSeq ?? this.ackedSeq,
      replayedSeq: replayedSeq ?? this.ackedSeq,
    };
  }

  /** Each backup's progress, in pairing order (status figures). */
  backupProgress(): BackupProgress[] {
    return [...this.backups.values()].map((backup) => ({
      id: backup.id,
      ackedSeq: backup.ackedSeq,
      sentSeq: backup.sentSeq,
      windowEndSeq: backup.windowEndSeq,
      replayedSeq: backup.replayedSeq,
      replayedIcount: backup.replayedIcount,
      lagIcount: this.appendedIcount > backup.replayedIcount ? this.appendedIcount - backup.replayedIcount : 0n,
      generation: backup.generationSeen,
      connected: backup.connected,
      lost: backup.lost,
    }));
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
    const recording = this.recording;
    for (const record of records) {
      assert(this.terminalSeq === null, "no record after a PowerOff or End record");
      assert(record.seq === this.appendedSeq, `append: seq ${record.seq} continues at ${this.appendedSeq}`);
      assert(record.icount >= this.appendedIcount, "append: icount never decreases");
      if (recording) {
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

  // ---- inputs from the channels -------------------------------------------------------------
  //
  // `backup` names the channel's backup; it may be left out while there is at most one. Events
  // of a backup this primary does not have (dropped, or never paired) are ignored: a driver may
  // still deliver what was in flight on a channel it is closing.

  /** The backup's logging channel is connected (again): everything unacknowledged is resent. */
  channelUp(backup?: BackupId): void {
    const b = this.backup(backup);
    if (b === undefined) return;
    b.connected = true;
    b.everConnected = true;
    b.disconnectedTicks = 0;
    b.contacted = true;
    b.helloDue = true;
    // A renew sent on the old connection may have been lost with it.
    b.renewDue = true;
    b.sentSeq = b.ackedSeq;
  }

  /** The backup's logging channel dropped. Not a failure by itself: the timeout decides. */
  channelDown(backup?: BackupId): void {
    const b = this.backup(backup);
    if (b === undefined) return;
    b.connected = false;
    b.sentSeq = b.ackedSeq;
  }

  receive(message: BackupToPrimary, backup?: BackupId): void {
    if (this.stateNow === "halted") return;
    if (message.vmId !== this.config.vmId) {
      this.error("WRONG_VM", `message for VM ${message.vmId}`);
      return;
    }
    if (message.generation > this.generationNow) {
      this.halt("superseded");
      return;
    }
    // A backup we no longer have (going alone: we no longer listen), or one not yet renewed:
    // its older generation is fine (its ack is as true as ever), below its pairing is not ours.
    const b = this.backup(backup);
    if (b === undefined || !this.recording || message.generation < b.pairedGeneration) return;
    if (message.t === "hello") {
      if (message.role !== "backup") {
        this.error("WRONG_ROLE", `hello from a ${message.role}`);
        return;
      }
      b.silenceTicks = 0;
      if (message.generation > b.generationSeen) b.generationSeen = message.generation;
      return;
    }
    this.onAck(b, message);
  }

  private onAck(b: Backup, ack: Extract<BackupToPrimary, { t: "ack" }>): void {
    if (ack.ackSeq > this.appendedSeq || ack.replayedSeq > ack.ackSeq || ack.ackSeq < b.startSeq) {
      this.error("BAD_ACK", `ack ${ack.ackSeq} replayed ${ack.replayedSeq} with ${this.appendedSeq} appended`);
      return;
    }
    b.silenceTicks = 0;
    if (ack.generation > b.generationSeen) b.generationSeen = ack.generation;
    if (ack.windowEndSeq > b.windowEndSeq) b.windowEndSeq = ack.windowEndSeq;
    if (ack.replayedSeq > b.replayedSeq) {
      b.replayedSeq = ack.replayedSeq;
      b.replayedIcount = ack.replayedIcount;
    }
    if (ack.ackSeq > b.ackedSeq) {
      b.ackedSeq = ack.ackSeq;
      if (b.sentSeq < b.ackedSeq) b.sentSeq = b.ackedSeq;
      b.sinceAckProgressTicks = 0;
      this.advance();
      if (this.stateNow === "halted") return;
    }
    if (ack.resend && ack.ackSeq === b.ackedSeq && b.sentSeq > b.ackedSeq) {
      // A gap at the backup: go back to the first record it lacks.
      b.sentSeq = b.ackedSeq;
      this.stats.retransmits++;
    }
  }

  /**
   * The minimum ack moved (an ack, or a backup dropped): trim the buffer to it and, while
   * paired, release what it covers. While renewing nothing leaves: the register decides first.
   */
  private advance(): void {
    let min: bigint | null = null;
    for (const backup of this.backups.values()) if (min === null || backup.ackedSeq < min) min = backup.ackedSeq;
    if (min === null) return;
    // Bounded: at most a buffer's worth of records.
    while (this.ackedSeq < min) {
      this.buffer.shift();
      this.bufferBytes -= this.bufferSizes.shift();
      this.ackedSeq++;
    }
    if (this.stateNow !== "paired") return;
    while (this.heldSeqs.length > 0 && this.heldSeqs.at(0) <= this.ackedSeq) {
      this.heldSeqs.shift();
      this.release(this.heldIds.shift());
    }
    if (this.terminalSeq !== null && this.ackedSeq >= this.terminalSeq) {
      // Every backup holds the PowerOff/End record: each will stop rather than go live (§3.3).
      this.halt(this.terminalReason!);
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
      case "renewing": {
        const retry = this.tas.tick();
        if (retry !== null) this.pendingTas = retry;
        break;
      }
      case "paired":
        break;
    }
    const lost: Backup[] = [];
    const renewTarget = this.renewTarget;
    for (const b of this.backups.values()) {
      if (b.lost) continue;
      if (!b.connected && b.everConnected && c.reconnectGraceTicks > 0 && ++b.disconnectedTicks >= c.reconnectGraceTicks) {
        lost.push(b);
        continue;
      }
      if (b.contacted) b.silenceTicks++;
      if (b.silenceTicks >= c.timeoutTicks) {
        lost.push(b);
        continue;
      }
      b.idleTicks++;
      if (b.idleTicks >= c.heartbeatTicks) {
        b.heartbeatDue = true;
        // Once per heartbeat interval until it speaks the new generation: a renew may be lost.
        if (b.generationSeen < renewTarget) b.renewDue = true;
      }
      // Time since the oldest record in flight was sent or last acknowledged.
      if (b.sentSeq > b.ackedSeq) b.sinceAckProgressTicks++;
      else b.sinceAckProgressTicks = 0;
      if (b.sinceAckProgressTicks >= c.retransmitTicks) {
        b.sinceAckProgressTicks = 0;
        b.sentSeq = b.ackedSeq;
        this.stats.retransmits++;
      }
    }
    if (lost.length > 0) {
      if (this.stateNow === "paired") {
        this.contest(lost);
        return;
      }
      // Renewing: the set is fixed for this contest; these go with the next one.
      for (const b of lost) b.lost = true;
    }
    this.lagTicks++;
    if (this.lagTicks >= c.lagCheckTicks) {
      this.lagTicks = 0;
      this.adjustCpuShare();
    }
  }

  /**
   * The driver knows a backup is gone (its host said so, the cluster service did, an operator
   * removed it), or with no id: every backup is suspect (this host was suspended).
   */
  backupLost(backup?: BackupId): void {
    const lost = backup === undefined ? [...this.backups.values()] : [this.backups.get(backup)].filter((b) => b !== undefined);
    if (lost.length === 0) return;
    if (this.stateNow === "paired") this.contest(lost);
    else if (this.stateNow === "renewing") for (const b of lost) b.lost = true;
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
    assert(this.stateNow === "goingAlone" || this.stateNow === "renewing", "testAndSetResult: only while going alone or renewing");
    switch (this.tas.result(result)) {
      case "won": {
        this.generationNow++;
        if (this.stateNow === "goingAlone") {
          this.become("alone");
          this.pendingGoAlone = { generation: this.generationNow };
          // Nobody else can go live for this generation now: every held output may leave.
          while (this.heldIds.length > 0) {
            this.heldSeqs.shift();
            this.release(this.heldIds.shift());
          }
          if (this.terminalReason !== null) this.halt(this.terminalReason);
          return;
        }
        this.become("paired");
        this.stats.renewals++;
        this.pendingRenewed = { generation: this.generationNow };
        // The dropped backups can never go live now; the kept ones hold what they acked.
        this.advance();
        // advance() halts once every backup holds a PowerOff/End record.
        if ((this.stateNow as PrimaryState) === "halted") return;
        const lost = [...this.backups.values()].filter((b) => b.lost);
        if (lost.length > 0) this.contest(lost);
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
   * `nextSeq`. Same generation: the next failure is settled on generation + 1. From alone, or
   * while paired, for one more backup; never while a contest is open (its set is fixed).
   */
  pair(backup: BackupId = SOLE_BACKUP): void {
    assert(this.terminalSeq === null, "pair: not after a PowerOff or End record");
    assert(this.stateNow === "alone" || this.stateNow === "paired", `pair: only alone or paired, not ${this.stateNow}`);
    assert(!this.backups.has(backup), `pair: ${backup} is a backup already`);
    assert(this.backups.size < this.config.backupsMax, `pair: at most ${this.config.backupsMax} backups`);
    if (this.stateNow === "alone") {
      this.become("paired");
      // Alone, nothing was buffered: every record so far is in the clone's snapshot.
      this.ackedSeq = this.appendedSeq;
      this.cpuSharePermille = 1000;
      this.lagTicks = 0;
    }
    this.addBackup(backup, false);
  }

  // ---- output -------------------------------------------------------------------------------

  ready(): PrimaryReady {
    if (this.recording) for (const backup of this.backups.values()) if (backup.connected) this.flush(backup);
    const c = this.config;
    const unackedRecords = this.recording ? Number(this.appendedSeq - this.ackedSeq) : 0;
    const stall =
      this.stateNow === "halted" ||
      this.heldIds.length >= c.heldOutputsMax ||
      unackedRecords >= c.bufferRecordsMax ||
      this.bufferBytes >= c.bufferBytesMax;
    const ready: PrimaryReady = {
      messages: take(this.pendingMessages),
      dropped: take(this.pendingDropped),
      release: take(this.pendingRelease),
      stall,
      cpuShare: this.recording ? this.cpuSharePermille / 1000 : 1,
      testAndSet: this.pendingTas,
      goAlone: this.pendingGoAlone,
      renewed: this.pendingRenewed,
      halt: this.pendingHalt,
      lagIcount: this.lagIcount(),
      unackedRecords,
      unackedBytes: this.bufferBytes,
      heldOutputs: this.heldIds.length,
      errors: take(this.pendingErrors),
    };
    this.pendingTas = null;
    this.pendingGoAlone = null;
    this.pendingRenewed = null;
    this.pendingHalt = null;
    return ready;
  }

  /**
   * Queues, for one backup: hello, a renew if it does not speak the generation yet, entries
   * within its window, and a heartbeat if nothing else. Paired, a backup that has not spoken
   * the current generation gets a renew before anything of that generation: the renew sent
   * during the contest may have been lost, and without it the backup would take the new
   * generation for a successor's and halt.
   */
  private flush(b: Backup): void {
    const c = this.config;
    const envelope = { vmId: c.vmId, generation: this.generationNow };
    const out: PrimaryToBackup[] = [];
    if (b.helloDue) {
      out.push({ t: "hello", ...envelope, role: "primary" });
      b.helloDue = false;
    }
    const end = this.appendedSeq < b.windowEndSeq ? this.appendedSeq : b.windowEndSeq;
    // Bounded: every pass sends at least one record, and there are at most a buffer's worth.
    while (b.sentSeq < end) {
      const records: LogRecord[] = [];
      let bytes = 0;
      let index = Number(b.sentSeq - this.ackedSeq);
      while (b.sentSeq < end && records.length < c.batchRecordsMax) {
        const size = this.bufferSizes.at(index);
        if (records.length > 0 && bytes + size > c.batchBytesMax) break;
        records.push(this.buffer.at(index));
        bytes += size;
        index++;
        b.sentSeq++;
      }
      this.stats.recordsSent += records.length;
      out.push({ t: "entries", ...envelope, records });
    }
    if (b.heartbeatDue && out.length === 0) out.push({ t: "heartbeat", ...envelope });
    b.heartbeatDue = false;
    const target = this.renewTarget;
    const carriesNew = this.stateNow === "paired" && out.some((message) => message.t !== "hello");
    if (b.generationSeen < target && (b.renewDue || carriesNew)) {
      // After the hello: the driver's peer takes nothing before it.
      out.splice(out[0]?.t === "hello" ? 1 : 0, 0, { t: "renew", vmId: c.vmId, generation: target, owner: c.hostId });
      b.renewDue = false;
    }
    if (out.length > 0) b.idleTicks = 0;
    for (const message of out) this.pendingMessages.push({ to: b.id, message });
  }

  // ---- internals ----------------------------------------------------------------------------

  /** Recording for backups: records are buffered and sent. */
  private get recording(): boolean {
    return this.stateNow === "paired" || this.stateNow === "renewing";
  }

  /** The generation a renew announces: the one contested while renewing, else the current one. */
  private get renewTarget(): number {
    return this.stateNow === "renewing" ? this.generationNow + 1 : this.generationNow;
  }

  private backup(id: BackupId | undefined): Backup | undefined {
    if (id !== undefined) return this.backups.get(id);
    assert(this.backups.size <= 1, "name the backup: there are several");
    return this.backups.values().next().value;
  }

  private addBackup(id: BackupId, contacted: boolean): void {
    assert(id.length > 0, "a backup id is not empty");
    this.backups.set(id, {
      id,
      startSeq: this.appendedSeq,
      pairedGeneration: this.generationNow,
      ackedSeq: this.appendedSeq,
      sentSeq: this.appendedSeq,
      windowEndSeq: this.appendedSeq,
      replayedSeq: this.appendedSeq,
      replayedIcount: this.appendedIcount,
      generationSeen: this.generationNow,
      connected: false,
      everConnected: false,
      contacted,
      disconnectedTicks: 0,
      silenceTicks: 0,
      idleTicks: 0,
      sinceAckProgressTicks: 0,
      helloDue: false,
      heartbeatDue: false,
      renewDue: false,
      lost: false,
    });
  }

  private lagIcount(): bigint {
    if (!this.recording) return 0n;
    let worst = 0n;
    for (const backup of this.backups.values()) {
      const lag = this.appendedIcount - backup.replayedIcount;
      if (lag > worst) worst = lag;
    }
    return worst;
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

  /**
   * Settle generation + 1 at the arbiter without the `lost` backups: drop them now (they are
   * sent nothing more), keep the others, and hold every output until the register answers.
   */
  private contest(lost: readonly Backup[]): void {
    for (const b of lost) {
      this.backups.delete(b.id);
      this.pendingDropped.push(b.id);
    }
    this.tas = new TestAndSetClient(this.config.tasRetryMinTicks, this.config.tasRetryMaxTicks);
    this.pendingTas = this.tas.start({ vmId: this.config.vmId, generation: this.generationNow + 1, owner: this.config.hostId });
    if (this.backups.size === 0) {
      this.become("goingAlone");
      // Whether it wins (alone) or loses (halted), these records are never sent again.
      this.buffer.clear();
      this.bufferSizes.clear();
      this.bufferBytes = 0;
      this.ackedSeq = this.appendedSeq;
      return;
    }
    this.become("renewing");
    for (const b of this.backups.values()) b.renewDue = true;
    // The minimum ack may have risen with the dropped ones gone: trim (renewing releases nothing).
    this.advance();
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

  /** Pause/Resume are the operator's (§3.3); they flow to the backups like any record. */
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
