// The backup's side of the FT protocol (§2.2, §2.3, §3.2, §3.3 of the paper), as a pure state
// machine like PrimaryCore: events in, `ready()` out, no I/O, no clock, no randomness.
//
// States and transitions (asserted in `become`):
//
//   replaying ──timeout──▶ finishingReplay ──replayed all──▶ testAndSet ──won──▶ live
//       │                        │                               │  └──lost──▶ halted
//       └──PowerOff/End/superseded/diverged──▶ halted ◀──superseded/diverged──┘
//
// - replaying: receives entries into a bounded buffer and acknowledges each batch as soon as
//   it is in the buffer (§3.2: the ack means received, not replayed). Checks that seqs are
//   dense: duplicates are dropped (and re-acked), a gap asks for a resend once per position.
//   The buffer is the records handed to the vCPU and not yet consumed; the backup advertises
//   room through `windowEndSeq`, so a backup that replays slowly stops the primary's sending,
//   whose buffer then fills and stalls the primary's vCPU: the §3.2 flow control.
// - finishingReplay: the primary is declared failed (no message of any kind for timeoutTicks).
//   The backup takes nothing more from the channel and acks nothing more (FAQ: a backup that
//   has decided to go live must not let the old primary release output), then replays every
//   record it holds: going live consumes the whole log (Invariant 5, §2.3).
// - testAndSet: contends for register generation + 1, retrying with a capped backoff while the
//   arbiter is unreachable. It never goes live without winning.
// - live: won. The driver switches the vCPU from replay to live at exactly `goLive.nextSeq`,
//   re-issues pending IOs, announces the VM's new location, and runs a PrimaryCore in mode
//   "alone" for the new generation. This core is done.
// - halted: final. Lost the test-and-set, learned a higher generation is live, replay
//   diverged, or the log ended with PowerOff/End: a powered-off VM stays off (§3.3).
//
// One of several backups (docs/ft-protocol.md, "More than one backup"): when its primary drops
// another backup it contends for generation G + 1 and sends the backups it keeps a `renew` for
// G + 1. Such a backup is *prepared* for G + 1: it stays in G, and adopts G + 1 with the first
// other message of G + 1 from its primary (sent only once the primary won). Any other message
// of a higher generation means it was dropped, or a successor is live: it halts. If its primary
// falls silent while it is prepared, the primary may have won G + 1 and died before saying so:
// the backup first asks the arbiter for G + 1 *on the primary's behalf* (owner: the primary's
// host, from the renew). Won means the primary owns G + 1 (or does now, so that a backup it
// dropped can never win it) and this backup is one of its backups there: it contends for G + 2
// as itself. Lost means a dropped backup is live: it halts.

import { encodedRecordBytes } from "../../protocol/codec.js";
import { ControlKind, type LogRecord, RecordKind } from "../../protocol/records.js";
import { assert } from "../errors.js";
import { type HaltReason, isTerminal, type ProtocolError, READY_ERRORS_MAX, take } from "./common.js";
import { type BackupConfig, backupConfig, type BackupOptions } from "./config.js";
import type { AckMessage, BackupToPrimary, PrimaryToBackup, TestAndSetRequest, TestAndSetResult } from "./messages.js";
import { BoundedQueue } from "./queue.js";
import { TestAndSetClient } from "./tas.js";

export type BackupState = "replaying" | "finishingReplay" | "testAndSet" | "live" | "halted";

/**
 * What the driver must do now, in this order:
 *
 * 1. `deliver`: hand these records to the replaying vCPU, in order, before step 2. The acks in
 *    `messages` promise the records are on this host (§3.2); a later go-live replays all of
 *    them, so once delivered they must never be dropped.
 * 2. `messages`: send on the logging channel, in order.
 * 3. `finishReplay`: the primary is declared failed. No more records will come; let the vCPU
 *    replay everything it holds and report `replayed()` when it reaches the end. The vCPU
 *    stays in replay mode, blocked at the end of the log, until `goLive`.
 * 4. `testAndSet`: issue this request to the arbiter and report its one answer with
 *    `testAndSetResult` (a driver-side timeout answers "unreachable"). At most one is ever
 *    outstanding.
 * 5. `goLive` (final for this core): the vCPU has consumed every record < `nextSeq` and stands
 *    at `icount`. Switch it to live execution right there, re-issue the disk IOs that were
 *    started in the log and not completed (§3.4), announce the new location to the switch,
 *    and run a PrimaryCore({ mode: "alone", generation, startSeq: nextSeq, startIcount:
 *    icount }). Only then may outputs leave.
 * 6. `halt` (final): stop the vCPU; never go live.
 */
export interface BackupReady {
  deliver: readonly LogRecord[];
  messages: readonly BackupToPrimary[];
  finishReplay: boolean;
  testAndSet: TestAndSetRequest | null;
  goLive: { generation: number; nextSeq: bigint; icount: bigint } | null;
  halt: HaltReason | null;
  errors: readonly ProtocolError[];
}

const TRANSITIONS: Record<BackupState, readonly BackupState[]> = {
  replaying: ["finishingReplay", "halted"],
  finishingReplay: ["testAndSet", "halted"],
  testAndSet: ["live", "halted"],
  live: [],
  halted: [],
};

export class BackupCore {
  readonly config: BackupConfig;
  private stateNow: BackupState = "replaying";
  private haltReasonNow: HaltReason | null = null;
  /** The generation it runs in: config.generation, or a later one its primary renewed it to. */
  private generationNow: number;
  /** A renew for a later generation: the primary contends for it (or won it), keeping us. */
  private prepared: { generation: number; owner: string } | null = null;
  /** The outstanding test-and-set is on behalf of the prepared generation's owner. */
  private onBehalf = false;

  /** Every record < receivedSeq is in the buffer or already replayed. */
  private receivedSeq: bigint;
  /** The vCPU has consumed every record < replayedSeq, and stands at replayedIcount. */
  private replayedSeq: bigint;
  private replayedIcount: bigint;
  /** Encoded sizes of the buffered records [replayedSeq, receivedSeq). */
  private readonly bufferSizes: BoundedQueue<number>;
  private bufferBytes = 0;
  /** The position of the last resend request: one per gap position per heartbeat interval. */
  private resendAskedSeq = -1n;
  private resendTicks = 0;
  private advertisedWindowEndSeq: bigint;
  private primaryPausedNow = false;

  private silenceTicks = 0;
  /** A message from a primary has arrived: from then on silence counts against timeoutTicks. */
  private contacted = false;
  /** Ticks since the channel closed, while it stays closed (reconnectGraceTicks). */
  private disconnectedTicks = 0;
  private idleTicks = 0;
  private connected = false;
  private helloDue = false;
  private ackDue = false;
  private resendDue = false;
  private progressDue = false;

  /** A fresh client per contest: one on the primary's behalf, then one as itself. */
  private tas: TestAndSetClient;

  private pendingDeliver: LogRecord[] = [];
  private pendingMessages: BackupToPrimary[] = [];
  private pendingFinishReplay = false;
  private pendingTas: TestAndSetRequest | null = null;
  private pendingGoLive: BackupReady["goLive"] = null;
  private pendingHalt: HaltReason | null = null;
  private pendingErrors: ProtocolError[] = [];

  readonly stats = { duplicates: 0, gaps: 0, dropped: 0, protocolErrors: 0, acks: 0 };

  constructor(config: BackupOptions) {
    this.config = backupConfig(config);
    const c = this.config;
    this.generationNow = c.generation;
    this.receivedSeq = c.startSeq;
    this.replayedSeq = c.startSeq;
    this.replayedIcount = c.startIcount;
    this.advertisedWindowEndSeq = c.startSeq;
    this.bufferSizes = new BoundedQueue(c.bufferRecordsMax, "backup log buffer");
    this.tas = new TestAndSetClient(c.tasRetryMinTicks, c.tasRetryMaxTicks);
  }

  get state(): BackupState {
    return this.stateNow;
  }

  get haltReason(): HaltReason | null {
    return this.haltReasonNow;
  }

  /** The generation of its pair: it starts as config.generation, a renew moves it on. */
  get generation(): number {
    return this.generationNow;
  }

  /** The generation a renew prepared it for, if it has not adopted it yet. */
  get preparedGeneration(): number | null {
    return this.prepared?.generation ?? null;
  }

  /** Where the log stands: records < receivedSeq held, < replayedSeq consumed by the vCPU. */
  position(): { receivedSeq: bigint; replayedSeq: bigint; replayedIcount: bigint; bufferBytes: number } {
    return {
      receivedSeq: this.receivedSeq,
      replayedSeq: this.replayedSeq,
      replayedIcount: this.replayedIcount,
      bufferBytes: this.bufferBytes,
    };
  }

  /** The last Pause control received was not followed by a Resume (for the dashboard). */
  get primaryPaused(): boolean {
    return this.primaryPausedNow;
  }

  // ---- inputs from the channel --------------------------------------------------------------

  channelUp(): void {
    this.connected = true;
    this.disconnectedTicks = 0;
    this.helloDue = true;
    this.ackDue = true;
  }

  channelDown(): void {
    this.connected = false;
  }

  receive(message: PrimaryToBackup): void {
    if (this.stateNow === "live" || this.stateNow === "halted") return;
    if (message.vmId !== this.config.vmId) {
      this.error("WRONG_VM", `message for VM ${message.vmId}`);
      return;
    }
    if (message.t === "renew") {
      // Its own generation or an older one: a renew that arrived late. Once the primary is
      // declared failed, nothing changes what this backup contends for.
      if (this.stateNow !== "replaying" || message.generation <= this.generationNow) return;
      if (this.prepared === null || message.generation > this.prepared.generation) {
        this.prepared = { generation: message.generation, owner: message.owner };
      }
      this.contacted = true;
      this.silenceTicks = 0;
      return;
    }
    if (message.generation > this.generationNow) {
      if (this.prepared !== null && message.generation <= this.prepared.generation) {
        // The primary won the generation it renewed us for (it sends nothing else of it before):
        // we are its backup there. Not once it is declared failed: then the register decides.
        if (this.stateNow !== "replaying") return;
        this.generationNow = message.generation;
        if (this.prepared.generation === message.generation) this.prepared = null;
        // Tell the primary at once that we speak its generation (its renews stop).
        this.ackDue = true;
      } else if (message.t === "hello") {
        // A hello carries nothing; the renew that prepares us may follow it on this connection.
        return;
      } else {
        this.halt("superseded");
        return;
      }
    }
    if (message.generation < this.generationNow) {
      // A primary of an earlier generation, which lost to a newer one: it must halt, not feed us.
      // Only its hello is reported, so a stale peer costs one log line, not one per batch.
      if (message.t === "hello") this.error("STALE_GENERATION", `hello from generation ${message.generation}`);
      return;
    }
    // This backup has declared the primary failed and takes nothing more from it.
    if (this.stateNow !== "replaying") return;
    this.contacted = true;
    switch (message.t) {
      case "hello":
        if (message.role !== "primary") {
          this.error("WRONG_ROLE", `hello from a ${message.role}`);
          return;
        }
        this.silenceTicks = 0;
        this.ackDue = true;
        return;
      case "heartbeat":
        this.silenceTicks = 0;
        return;
      case "entries":
        this.onEntries(message.records);
        return;
    }
  }

  private onEntries(records: readonly LogRecord[]): void {
    const c = this.config;
    const first = records[0];
    if (first === undefined || records.some((record, index) => record.seq !== first.seq + BigInt(index))) {
      this.error("BAD_BATCH", "an entries batch holds dense ascending seqs");
      return;
    }
    this.silenceTicks = 0;
    // Every batch is acknowledged, duplicates too: the ack of the original may have been lost.
    this.ackDue = true;
    const windowEndSeq = this.replayedSeq + BigInt(c.bufferRecordsMax);
    for (const record of records) {
      if (record.seq < this.receivedSeq) {
        this.stats.duplicates++;
        continue;
      }
      if (record.seq > this.receivedSeq) {
        this.stats.gaps++;
        if (this.resendAskedSeq !== this.receivedSeq) {
          this.resendAskedSeq = this.receivedSeq;
          this.resendDue = true;
        }
        return;
      }
      const bytes = encodedRecordBytes(record);
      if (bytes > c.recordBytesMax) {
        this.error("BAD_BATCH", `a record of ${bytes} bytes`);
        return;
      }
      const full =
        record.seq >= windowEndSeq || (this.bufferSizes.length > 0 && this.bufferBytes + bytes > c.bufferBytesMax);
      if (full) {
        // Not acked, so the primary resends it once there is room.
        this.stats.dropped += Number(records[records.length - 1]!.seq - record.seq) + 1;
        return;
      }
      this.bufferSizes.push(bytes);
      this.bufferBytes += bytes;
      this.receivedSeq++;
      this.pendingDeliver.push(record);
      if (record.kind === RecordKind.Control) {
        if (record.a === ControlKind.Pause) this.primaryPausedNow = true;
        if (record.a === ControlKind.Resume) this.primaryPausedNow = false;
      }
      if (isTerminal(record)) {
        // Ack it, so the primary knows this backup will not go live, then stop (§3.3).
        this.queueAck();
        this.halt(record.kind === RecordKind.End ? "end" : "powerOff");
        return;
      }
    }
  }

  // ---- inputs from the vCPU -----------------------------------------------------------------

  /** The vCPU has consumed every record < `nextSeq` and stands at `icount`. */
  replayed(nextSeq: bigint, icount: bigint): void {
    if (this.stateNow === "live" || this.stateNow === "halted") return;
    assert(nextSeq >= this.replayedSeq, "replayed: progress never goes back");
    assert(
      nextSeq <= this.receivedSeq - BigInt(this.pendingDeliver.length),
      `replayed: ${nextSeq} ≤ the records delivered`,
    );
    assert(icount >= this.replayedIcount, "replayed: icount never decreases");
    while (this.replayedSeq < nextSeq) {
      this.bufferBytes -= this.bufferSizes.shift();
      this.replayedSeq++;
    }
    this.replayedIcount = icount;
    if (this.stateNow === "replaying") {
      this.progressDue = true;
      // Open the window at once when replay freed a lot of it, or the primary may stall.
      const windowEndSeq = this.replayedSeq + BigInt(this.config.bufferRecordsMax);
      if (windowEndSeq - this.advertisedWindowEndSeq >= BigInt(this.config.windowUpdateRecords)) this.ackDue = true;
    } else if (this.stateNow === "finishingReplay" && this.replayedSeq === this.receivedSeq) {
      this.contend();
    }
  }

  /** The vCPU found its state differs from the primary's: this replica must never go live. */
  diverged(): void {
    if (this.stateNow !== "live" && this.stateNow !== "halted") this.halt("diverged");
  }

  // ---- time and failure ---------------------------------------------------------------------

  tick(): void {
    const c = this.config;
    switch (this.stateNow) {
      case "live":
      case "halted":
      case "finishingReplay":
        return;
      case "testAndSet": {
        const retry = this.tas.tick();
        if (retry !== null) this.pendingTas = retry;
        return;
      }
      case "replaying":
        break;
    }
    this.silenceTicks++;
    if (!this.connected && this.contacted && c.reconnectGraceTicks > 0 && ++this.disconnectedTicks >= c.reconnectGraceTicks) {
      this.primaryFailed();
      return;
    }
    const limit = this.contacted || c.firstContactTicks === 0 ? c.timeoutTicks : Math.max(c.timeoutTicks, c.firstContactTicks);
    if (this.silenceTicks >= limit) {
      this.primaryFailed();
      return;
    }
    this.idleTicks++;
    if (this.idleTicks >= c.heartbeatTicks || this.progressDue) this.ackDue = true;
    this.resendTicks++;
    if (this.resendTicks >= c.heartbeatTicks) {
      // The resend itself may have been lost: the same gap may be reported again.
      this.resendTicks = 0;
      this.resendAskedSeq = -1n;
    }
    this.progressDue = false;
  }

  /** The driver knows the primary is gone (its host said so, or the cluster service did). */
  primaryLost(): void {
    if (this.stateNow === "replaying") this.primaryFailed();
  }

  testAndSetResult(result: TestAndSetResult): void {
    if (this.stateNow === "halted") return;
    assert(this.stateNow === "testAndSet", "testAndSetResult: only while contending");
    switch (this.tas.result(result)) {
      case "won":
        if (this.onBehalf) {
          // The primary owns the prepared generation, and we are its backup there.
          this.onBehalf = false;
          this.generationNow = this.prepared!.generation;
          this.prepared = null;
          this.startTas({ vmId: this.config.vmId, generation: this.generationNow + 1, owner: this.config.hostId });
          return;
        }
        this.become("live");
        this.pendingGoLive = { generation: this.generationNow + 1, nextSeq: this.receivedSeq, icount: this.replayedIcount };
        return;
      case "lost":
        this.halt("lostTestAndSet");
        return;
      case "unreachable":
        return;
    }
  }

  /**
   * A higher generation is live. Not news if a renew prepared us for it: that may be our own
   * primary's, and if it is not, the test-and-set on its behalf is lost and we halt then.
   */
  generationSuperseded(generation: number): void {
    if (this.stateNow === "live" || this.stateNow === "halted" || generation <= this.generationNow) return;
    if (this.prepared !== null && generation <= this.prepared.generation) return;
    this.halt("superseded");
  }

  // ---- output -------------------------------------------------------------------------------

  ready(): BackupReady {
    if (this.stateNow === "replaying" && this.connected) {
      if (this.helloDue) {
        this.pendingMessages.push({ t: "hello", vmId: this.config.vmId, generation: this.generationNow, role: "backup" });
        this.helloDue = false;
      }
      if (this.ackDue || this.resendDue) this.queueAck();
    }
    const ready: BackupReady = {
      deliver: take(this.pendingDeliver),
      messages: take(this.pendingMessages),
      finishReplay: this.pendingFinishReplay,
      testAndSet: this.pendingTas,
      goLive: this.pendingGoLive,
      halt: this.pendingHalt,
      errors: take(this.pendingErrors),
    };
    this.pendingFinishReplay = false;
    this.pendingTas = null;
    this.pendingGoLive = null;
    this.pendingHalt = null;
    return ready;
  }

  // ---- internals ----------------------------------------------------------------------------

  private queueAck(): void {
    if (!this.connected) return;
    const ack: AckMessage = {
      t: "ack",
      vmId: this.config.vmId,
      generation: this.generationNow,
      ackSeq: this.receivedSeq,
      windowEndSeq: this.replayedSeq + BigInt(this.config.bufferRecordsMax),
      replayedSeq: this.replayedSeq,
      replayedIcount: this.replayedIcount,
      resend: this.resendDue,
    };
    this.pendingMessages.push(ack);
    this.advertisedWindowEndSeq = ack.windowEndSeq;
    this.ackDue = false;
    this.resendDue = false;
    this.idleTicks = 0;
    this.stats.acks++;
  }

  private primaryFailed(): void {
    this.become("finishingReplay");
    this.pendingFinishReplay = true;
    this.ackDue = false;
    this.resendDue = false;
    if (this.replayedSeq === this.receivedSeq && this.pendingDeliver.length === 0) this.contend();
  }

  private contend(): void {
    this.become("testAndSet");
    if (this.prepared !== null) {
      // First make sure the primary holds the generation it renewed us for (see the top).
      this.onBehalf = true;
      this.startTas({ vmId: this.config.vmId, generation: this.prepared.generation, owner: this.prepared.owner });
      return;
    }
    this.startTas({ vmId: this.config.vmId, generation: this.generationNow + 1, owner: this.config.hostId });
  }

  private startTas(request: TestAndSetRequest): void {
    this.tas = new TestAndSetClient(this.config.tasRetryMinTicks, this.config.tasRetryMaxTicks);
    this.pendingTas = this.tas.start(request);
  }

  private halt(reason: HaltReason): void {
    this.become("halted");
    this.haltReasonNow = reason;
    this.pendingHalt = reason;
    this.pendingTas = null;
    this.bufferSizes.clear();
    this.bufferBytes = 0;
  }

  private become(next: BackupState): void {
    assert(TRANSITIONS[this.stateNow].includes(next), `backup: ${this.stateNow} → ${next} is not a legal transition`);
    this.stateNow = next;
  }

  private error(code: ProtocolError["code"], detail: string): void {
    this.stats.protocolErrors++;
    if (this.pendingErrors.length < READY_ERRORS_MAX) this.pendingErrors.push({ code, detail });
  }
}
