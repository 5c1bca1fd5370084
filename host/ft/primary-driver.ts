// The primary's driver: it runs the guest in record mode and does what the PrimaryCore says,
// in the order PrimaryReady documents: stall and CPU share first, then send, then switch
// generation, then release outputs, then ask the arbiter, then halt.

import { ControlKind, type LogRecord } from "../../protocol/records.js";
import { assert, LockstepError } from "../errors.js";
import type { VmSnapshot } from "../vm/snapshot.js";
import { FAILPOINT_LOG_DELAY_MS, failpoint } from "../failpoints.js";
import type { NetworkGate } from "../network-gate.js";
import type { InstrumentedModule } from "../instrument/index.js";
import { Machine, type MachineOptions } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import type { Arbiter } from "./arbiter.js";
import { Channel, connectChannel } from "./channel.js";
import { RECONNECT_GRACE_MS, TICK_MS, timeoutTicksFor } from "./config.js";
import { SilenceMeter } from "./silence.js";
import { LagClock } from "./lag-clock.js";
import type { BackupToPrimary } from "./messages.js";
import { type BackupId, PrimaryCore, type PrimaryState } from "./primary.js";
import { type DigestProbeResult, type RecordObserver, RecordTap } from "./record-tap.js";

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
export const PROGRESS_MS = 20;

/**
 * A clone's backup must connect within this long of its snapshot, or it is declared lost (and
 * the primary settles the next generation without it, alone or with its other backups). It
 * covers sending the snapshot and starting the backup from it: about a second for 64 MiB on
 * one machine.
 */
const CLONE_CONTACT_MS_MAX = 60_000;

export type VmDevices = Pick<
  MachineOptions,
  "listen" | "nic" | "diskFile" | "diskBlocks" | "disk" | "diskReads" | "diskLocal" | "memoryPagesMax" | "onConsole" | "onListening" | "onDeviceError" | "onPaused"
>;

export interface PrimaryDriverOptions {
  vmId: string;
  hostId: string;
  module: InstrumentedModule;
  /**
   * The backup's logging-channel endpoint (ws://...); null for a primary that starts alone
   * (a backup that went live) and pairs later with a clone (`clone`).
   */
  backupUrl: string | null;
  /**
   * More than one backup from the start (`--backups N`): every endpoint, in place of
   * `backupUrl`'s one. Outputs then wait for every one of them (docs/ft-protocol.md).
   */
  backupUrls?: readonly string[];
  /**
   * A vCPU that already runs, recording, instead of a new one: a backup's, gone live (§2.3).
   * It hands its records and outputs to `attach`'s hooks from `startSeq` on.
   */
  adopt?: AdoptedMachine;
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
  /**
   * Offer permessage-deflate on the logging channel (default off unless $LOCKSTEP_LOG_COMPRESSION
   * is "on"); it is used only if the backup's side accepts it (docs/performance.md).
   */
  logCompression?: boolean;
  /** Called as each output leaves, with the count of records before it and how long it was held. */
  onRelease?: (seq: number, heldMs: number) => void;
  log?: DriverLog;
}

/** What a primary needs from a vCPU it did not start (BackupDriver, on going live). */
export interface AdoptedMachine {
  machine: Machine;
  /** The log position and count where this primary's records begin. */
  startSeq: bigint;
  startIcount: bigint;
  attach(hooks: RecordHooks): void;
}

/** Where a recording vCPU's records and outputs go (MachineOptions.onRecords, holdOutput). */
export interface RecordHooks {
  onRecords(records: LogRecord[]): void;
  holdOutput(seq: number, release: () => void): void;
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
  /** Channel-frame bytes sent on the logging channel since this VM started, over every connection. */
  logBytesSent: number;
  /** What those frames took on the TCP connections: after compression, with WebSocket headers. */
  logWireBytesSent: number;
  /** Whether the current (or last) connection negotiated permessage-deflate. */
  logCompression: boolean;
  /** How long the Output Rule held the last outputs (up to HOLD_SAMPLES), in ms. */
  outputHoldMsP50: number | null;
  outputHoldMsP99: number | null;
  /**
   * Each backup, in pairing order. The fields above are over all of them: `ackedSeq` what
   * every backup holds, `lagIcount`/`lagMs` the worst lag, `channelOpen` every channel open.
   */
  backups: PrimaryBackupStatus[];
}

/** One backup of a primary, as its status shows it. */
export interface PrimaryBackupStatus {
  id: string;
  /** Its logging channel's endpoint (null: a clone that does not listen yet). */
  url: string | null;
  channelOpen: boolean;
  /** The generation its messages carry: behind the primary's until it takes a renew. */
  generation: number;
  ackedSeq: bigint;
  sentSeq: bigint;
  replayedSeq: bigint;
  lagIcount: bigint;
  lagMs: number;
  silenceMsMax: number;
}

/** One backup's logging channel. */
interface BackupLink {
  readonly id: BackupId;
  /** null: a clone whose backup does not listen yet (`connectBackup` names it). */
  url: string | null;
  /** The current connection; events of an earlier one are ignored. */
  channel: Channel | null;
  readonly silence: SilenceMeter;
  /** A clone's: `connectBackup` waits for its channel (false: abandoned, or the VM ended). */
  onContact: ((connected: boolean) => void) | null;
  contactTimer: NodeJS.Timeout | undefined;
}

export class PrimaryDriver {
  readonly core: PrimaryCore;
  readonly machine: Machine;
  readonly done: Promise<VmResult>;
  /** The backups' logging channels, by the core's backup ids; empty while alone. */
  private readonly links = new Map<BackupId, BackupLink>();
  /** Backup ids are never reused: an old channel's late events must not count for a new backup. */
  private nextBackupNumber = 1;
  private readonly held = new Map<number, { seq: number; release: () => void; heldSinceMs: number }>();
  private nextOutputId = 1;
  private readonly ticker: NodeJS.Timeout;
  private lastTickMs = performance.now();
  private lastLagUpdateMs = performance.now();
  private readonly lag = new LagClock();
  private icount = 0n;
  private cpuShare = 1;
  private lagIcountNow = 0n;
  /** The core's state at the last pump: transitions happen inside tick() and receive(). */
  private reportedState: PrimaryState = "paired";
  /** Bytes sent on earlier connections of the logging channels. */
  private bytesSentBefore = 0;
  private wireBytesSentBefore = 0;
  /** The longest silence of backups no longer here. */
  private silenceMsMaxBefore = 0;
  private ended = false;
  /** A clone's snapshot is requested and not yet taken. */
  private cloning = false;
  /** The clone whose snapshot was taken and whose backup `connectBackup` has not named yet. */
  private cloneLink: BackupLink | null = null;
  /** The last connection's setting, for the status once every channel is gone. */
  private lastCompressed = false;
  /** Read-only replicas and digest probes watching the records appended. */
  private readonly tap = new RecordTap();
  private readonly holdMs = new Float64Array(HOLD_SAMPLES);
  private holdCount = 0;
  private readonly log: DriverLog;

  constructor(private readonly options: PrimaryDriverOptions) {
    this.log = (line) => options.log?.({ vm: options.vmId, role: "primary", generation: this.core.generation, ...line });
    const backupUrls = options.backupUrls ?? (options.backupUrl === null ? [] : [options.backupUrl]);
    assert((backupUrls.length === 0) === (options.adopt !== undefined), "a new primary pairs at once; an adopted one starts alone");
    const backupIds = backupUrls.map(() => this.newBackupId());
    this.core = new PrimaryCore({
      vmId: options.vmId,
      generation: options.generation ?? 1,
      hostId: options.hostId,
      ...(backupIds.length === 0 ? {} : { backups: backupIds }),
      ...(options.timeoutMs === undefined ? {} : { timeoutTicks: timeoutTicksFor(options.timeoutMs) }),
      reconnectGraceTicks: Math.ceil(RECONNECT_GRACE_MS / TICK_MS),
      ...(options.adopt === undefined
        ? {}
        : { mode: "alone" as const, startSeq: options.adopt.startSeq, startIcount: options.adopt.startIcount }),
    });
    this.reportedState = this.core.state;
    this.icount = options.adopt?.startIcount ?? 0n;
    const hooks: RecordHooks = {
      onRecords: (records) => this.recordsAppended(records),
      holdOutput: (seq, release) => this.outputHeld(seq, release),
    };
    if (options.adopt !== undefined) {
      this.machine = options.adopt.machine;
      options.adopt.attach(hooks);
    } else {
      this.machine = new Machine({
        mode: "record",
        module: options.module,
        markOutputs: true,
        progressMs: PROGRESS_MS,
        ...options.devices,
        ...hooks,
      });
    }
    for (const [index, id] of backupIds.entries()) {
      const link = this.addLink(id, backupUrls[index]!);
      link.channel = this.connect(link);
    }
    const unsubscribe = options.network?.onChange((connected) => {
      for (const link of this.links.values()) {
        if (connected) this.reconnect(link);
        else link.channel?.terminate();
      }
    });
    this.ticker = setInterval(() => this.tick(), TICK_MS);
    this.done = this.machine.done.finally(() => {
      unsubscribe?.();
      this.ended = true;
      this.tap.end(`${options.vmId}'s primary on ${options.hostId} stopped`);
      clearInterval(this.ticker);
      for (const link of [...this.links.values()]) this.closeLink(link);
    });
  }

  /** The vCPU logged these records (in order, dense). */
  private recordsAppended(records: LogRecord[]): void {
    const last = records.at(-1);
    if (last !== undefined) {
      this.icount = last.icount;
      this.lag.sample(last.icount, performance.now());
    }
    this.core.append(records);
    this.tap.appended(records);
    this.pump();
  }

  /**
   * Each output comes after a marker record (markOutputs): the backup holds the marker before
   * the output leaves, so a backup that goes live emits exactly the outputs the primary did
   * not (docs/ft-protocol.md).
   */
  private outputHeld(seq: number, release: () => void): void {
    if (failpoint("release-before-ack")) return release();
    const id = this.nextOutputId++;
    this.held.set(id, { seq, release, heldSinceMs: performance.now() });
    this.core.output(id, BigInt(seq));
    this.pump();
  }

  /**
   * Live clone, first half (§3.1): snapshot the running guest and start recording for a new
   * backup from exactly that point. Records and outputs from here on wait in the core (bounded:
   * the vCPU stalls if the clone takes long) until `connectBackup` names where the backup
   * listens. A primary running alone can clone, and one with backups can add one more
   * (`--backups N`); never during a contest, and one clone at a time.
   */
  beginClone(snapshotTimeoutMs: number): Promise<VmSnapshot> {
    const state = this.core.state;
    const full = this.core.backupIds.length >= this.core.config.backupsMax;
    if ((state !== "alone" && state !== "paired") || this.cloning || this.cloneLink !== null || full) {
      const why = this.cloning || this.cloneLink !== null ? "cloning" : full ? `at ${this.core.config.backupsMax} backups` : state;
      return Promise.reject(new LockstepError("CLONE_REFUSED", `${this.options.vmId} is ${why}, not alone or paired: it is getting a backup or settling a generation`));
    }
    this.cloning = true;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.cloning = false;
        reject(new LockstepError("CLONE_REFUSED", `the guest reached no point to snapshot it at within ${snapshotTimeoutMs} ms`));
      }, snapshotTimeoutMs);
      this.machine.snapshot((snapshot) => {
        clearTimeout(timer);
        // Too late, or the VM halted or began a contest meanwhile: this snapshot starts nothing.
        if (!this.cloning || (this.core.state !== "alone" && this.core.state !== "paired")) return;
        this.cloning = false;
        // Synchronous with the snapshot's arrival: every record before snapshot.seq has been
        // appended, none after it, so the new backup's log starts exactly at the snapshot.
        assert(this.core.nextSeq === BigInt(snapshot.seq), "records up to the snapshot arrive before it");
        const id = this.newBackupId();
        this.core.pair(id);
        this.reportedState = "paired";
        const link = this.addLink(id, null);
        this.cloneLink = link;
        // The core does not count the silence of a backup that has not connected yet: bound it here.
        link.contactTimer = setTimeout(() => this.abandonClone("the new backup never connected"), CLONE_CONTACT_MS_MAX);
        this.log({ level: "info", msg: "clone snapshot taken", event: "cloneSnapshot", seq: snapshot.seq, icount: snapshot.icount, memoryBytes: snapshot.memory.length });
        this.pump();
        resolve(snapshot);
      });
    });
  }

  /**
   * Live clone, second half: the backup runs from the snapshot and listens here. Resolves once
   * the logging channel to it is up (false if the clone was abandoned or the VM ended first).
   */
  connectBackup(backupUrl: string): Promise<boolean> {
    const link = this.cloneLink;
    assert(link !== null || this.core.state !== "alone", "connectBackup follows beginClone");
    // The clone was abandoned, or dropped by a contest, or the VM ended.
    if (link === null || this.ended || !this.links.has(link.id)) return Promise.resolve(false);
    this.cloneLink = null;
    const connected = new Promise<boolean>((resolve) => (link.onContact = resolve));
    link.url = backupUrl;
    link.channel = this.connect(link);
    return connected;
  }

  /**
   * An operator removed a backup (a migration, §3.3): settle it at the arbiter now, as on a
   * failure, instead of holding output until the timeout. The removed backup was stopped
   * first, so it cannot contend. `backup` names it: its id (status `backups[].id`), or its
   * channel's endpoint or a prefix of it (its host's); without one, every backup is dropped
   * (a VM with one backup).
   */
  dropBackup(backup?: string): void {
    const links = [...this.links.values()].filter((link) => backup === undefined || link.id === backup || (link.url?.startsWith(backup) ?? false));
    this.log({ level: "info", msg: "backup removed", event: "backupRemoved", count: links.length });
    if (backup === undefined) this.core.backupLost();
    else for (const link of links) this.core.backupLost(link.id);
    this.pump();
  }

  /** The clone failed before its backup connected: declare it lost now rather than at the timeout. */
  abandonClone(reason: string): void {
    const link = [...this.links.values()].find((l) => l.contactTimer !== undefined || l === this.cloneLink);
    if (link === undefined) return;
    clearTimeout(link.contactTimer);
    link.contactTimer = undefined;
    if (this.cloneLink === link) this.cloneLink = null;
    this.contacted(link, false);
    if (link.channel?.open === true || !this.core.backupIds.includes(link.id)) return;
    this.log({ level: "warn", msg: "clone abandoned", event: "cloneFailed", reason });
    this.core.backupLost(link.id);
    this.pump();
  }

  /**
   * A read-only replica (the dashboard's in-browser one): `onSnapshot` gets a snapshot of the
   * running guest, and `observer` every record appended after it. It acknowledges nothing, so
   * outputs never wait for it. Returns the removal (also before the snapshot is taken).
   */
  observe(snapshotTimeoutMs: number, onSnapshot: (snapshot: VmSnapshot) => void, observer: RecordObserver): () => void {
    if (this.ended) throw new LockstepError("REPLICA_REFUSED", `${this.options.vmId} has stopped here`);
    let removed = false;
    let remove: () => void = () => {};
    const timer = setTimeout(() => {
      if (removed) return;
      removed = true;
      observer.end(`the guest reached no point to snapshot it at within ${snapshotTimeoutMs} ms`);
    }, snapshotTimeoutMs);
    this.machine.snapshot((snapshot) => {
      clearTimeout(timer);
      if (removed) return;
      // Synchronous with the snapshot's arrival, as for a clone: the observer's records start
      // exactly at snapshot.seq.
      onSnapshot(snapshot);
      remove = this.tap.add(observer);
    });
    return () => {
      clearTimeout(timer);
      removed = true;
      remove();
    };
  }

  /**
   * A digest probe: the vCPU logs the digest of its state at its next delivery point, and every
   * replica checks its own there. Resolves with what was logged.
   */
  digestProbe(): Promise<DigestProbeResult> {
    const result = this.tap.nextDigest();
    this.machine.control(ControlKind.Digest);
    return result;
  }

  /** A control entry (§3.3): logged, replayed by the backup, applied at one execution point. */
  control(kind: ControlKind, value = 0): void {
    this.machine.control(kind, value);
  }

  /** Dies as a crashed host would: no End record, no goodbye on the channel. */
  crash(): void {
    this.ended = true;
    clearInterval(this.ticker);
    for (const link of this.links.values()) link.channel?.terminate();
    this.machine.kill();
  }

  status(): PrimaryStatus {
    const position = this.core.position();
    const nowMs = performance.now();
    const recording = this.core.state === "paired" || this.core.state === "renewing";
    const backups = this.core.backupProgress().map((progress): PrimaryBackupStatus => {
      const link = this.links.get(progress.id);
      return {
        id: progress.id,
        url: link?.url ?? null,
        channelOpen: link?.channel?.open ?? false,
        generation: progress.generation,
        ackedSeq: progress.ackedSeq,
        sentSeq: progress.sentSeq,
        replayedSeq: progress.replayedSeq,
        lagIcount: progress.lagIcount,
        lagMs: recording ? this.lag.lagMs(this.icount - progress.lagIcount, nowMs) : 0,
        silenceMsMax: link?.silence.longestMs ?? 0,
      };
    });
    const channels = [...this.links.values()].map((link) => link.channel).filter((channel) => channel !== null);
    return {
      role: "primary",
      state: this.core.state,
      generation: this.core.generation,
      icount: this.icount,
      appendedSeq: position.appendedSeq,
      sentSeq: position.sentSeq,
      ackedSeq: position.ackedSeq,
      lagIcount: this.lagIcountNow,
      lagMs: recording ? this.lag.lagMs(this.icount - this.lagIcountNow, nowMs) : 0,
      heldOutputs: this.held.size,
      cpuShare: this.cpuShare,
      paused: this.core.guestPaused,
      channelOpen: backups.length > 0 && backups.every((backup) => backup.channelOpen),
      silenceMsMax: Math.max(this.silenceMsMaxBefore, ...backups.map((backup) => backup.silenceMsMax)),
      logBytesSent: this.bytesSentBefore + channels.reduce((sum, channel) => sum + channel.bytesSent, 0),
      logWireBytesSent: this.wireBytesSentBefore + channels.reduce((sum, channel) => sum + channel.wireBytesSent, 0),
      logCompression: channels.at(-1)?.compressed ?? this.lastCompressed,
      outputHoldMsP50: this.holdPercentile(0.5),
      outputHoldMsP99: this.holdPercentile(0.99),
      backups,
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
    if (sinceMs >= this.core.config.timeoutTicks * TICK_MS && (this.core.state === "paired" || this.core.state === "renewing")) {
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

  private reconnect(link: BackupLink): void {
    if (this.ended || this.links.get(link.id) !== link || link.url === null || link.channel?.open === true) return;
    if (this.core.state !== "paired" && this.core.state !== "renewing") return;
    if (this.options.network?.connected === false) return;
    link.channel = this.connect(link);
  }

  private newBackupId(): BackupId {
    return `b${this.nextBackupNumber++}`;
  }

  private addLink(id: BackupId, url: string | null): BackupLink {
    const link: BackupLink = { id, url, channel: null, silence: new SilenceMeter(), onContact: null, contactTimer: undefined };
    this.links.set(id, link);
    return link;
  }

  /** The backup is no longer this VM's (dropped, or the VM stopped): its channel goes for good. */
  private closeLink(link: BackupLink): void {
    clearTimeout(link.contactTimer);
    link.contactTimer = undefined;
    this.contacted(link, false);
    if (this.cloneLink === link) this.cloneLink = null;
    this.links.delete(link.id);
    this.retire(link.channel);
    this.silenceMsMaxBefore = Math.max(this.silenceMsMaxBefore, link.silence.longestMs);
    link.channel?.terminate();
  }

  /** Counts a connection's bytes among the earlier ones' before it is replaced or closed. */
  private retire(channel: Channel | null): void {
    if (channel === null) return;
    this.bytesSentBefore += channel.bytesSent;
    this.wireBytesSentBefore += channel.wireBytesSent;
    this.lastCompressed = channel.compressed;
  }

  private contacted(link: BackupLink, connected: boolean): void {
    link.onContact?.(connected);
    link.onContact = null;
  }

  private connect(link: BackupLink): Channel {
    assert(link.url !== null, "a backup's channel needs its endpoint");
    this.retire(link.channel);
    // Events of a connection this driver has replaced (a reconnect) or closed (a dropped
    // backup) are ignored: only a backup's current channel may change the core's view of it.
    const current = () => this.links.get(link.id) === link && link.channel === channel;
    const channel: Channel = connectChannel(
      link.url,
      {
        open: () => {
          if (!current()) return;
          clearTimeout(link.contactTimer);
          link.contactTimer = undefined;
          this.contacted(link, true);
          this.core.channelUp(link.id);
          link.silence.connected(performance.now());
          this.pump();
        },
        message: (message) => {
          if (!current()) return;
          const state = this.core.state;
          if (state === "paired" || state === "renewing") link.silence.heard(performance.now());
          else link.silence.stop();
          this.core.receive(message as BackupToPrimary, link.id);
          this.pump();
        },
        close: (reason) => {
          if (!current()) return;
          this.log({ level: "info", msg: "logging channel down", backup: link.id, reason });
          this.core.channelDown(link.id);
          this.pump();
          // A dropped connection is not a failure by itself: the timeout decides (§2.3). Until
          // then, try again; the core resends whatever is unacknowledged.
          if (!this.ended) setTimeout(() => this.reconnect(link), RECONNECT_MS);
        },
      },
      (line) => this.log({ ...line, backup: link.id }),
      this.options.logCompression,
    );
    return channel;
  }

  private pump(): void {
    const ready = this.core.ready();
    // diskReads "backup": a write waits until the backup has read its blocks' old contents
    // (§4.2, read-fence.ts); alone, nothing is waited for. goingAlone keeps waiting, and so
    // does a halted primary: what waits then is dropped, never written (FencedDisk.close).
    const state = this.core.state;
    if (state === "paired") this.machine.backupProgress(Number(this.core.position().replayedSeq));
    else if (state === "alone") this.machine.backupProgress(null);
    this.machine.setStall(ready.stall);
    this.lagIcountNow = ready.lagIcount;
    if (ready.cpuShare !== this.cpuShare) {
      this.cpuShare = ready.cpuShare;
      this.machine.setCpuShare(ready.cpuShare);
      this.log({ level: "info", msg: "cpu share", cpuShare: ready.cpuShare, lagIcount: ready.lagIcount });
    }
    for (const { to, message } of ready.messages) {
      const channel = this.links.get(to)?.channel ?? null;
      const send = () => channel?.send(message.t === "hello" && this.options.token ? { ...message, token: this.options.token } : message);
      if (message.t === "entries" && failpoint("release-before-ack")) setTimeout(send, FAILPOINT_LOG_DELAY_MS);
      else send();
    }
    const settling = this.core.state === "goingAlone" || this.core.state === "renewing";
    if (settling && this.reportedState === "paired") {
      this.log({ level: "warn", msg: "backup failure detected", event: "failureDetected", peer: "backup", dropped: ready.dropped.length, kept: this.core.backupIds.length });
    }
    this.reportedState = this.core.state;
    if (ready.goAlone) {
      this.log({ level: "warn", msg: "backup lost: running alone", event: "wentAlone", newGeneration: ready.goAlone.generation });
    }
    if (ready.renewed) {
      const backups = this.core.backupIds.length;
      this.log({ level: "warn", msg: `renewed with ${backups} backup${backups === 1 ? "" : "s"}`, event: "renewed", newGeneration: ready.renewed.generation, backups });
    }
    for (const id of ready.release) {
      const output = this.held.get(id)!;
      this.held.delete(id);
      output.release();
      const heldMs = performance.now() - output.heldSinceMs;
      this.holdMs[this.holdCount++ % HOLD_SAMPLES] = heldMs;
      this.options.onRelease?.(output.seq, heldMs);
    }
    for (const id of ready.dropped) {
      // Gone for good: a later clone is a new backup with a new id and channel.
      const link = this.links.get(id);
      this.log({ level: "warn", msg: "backup dropped", event: "backupDropped", backup: id, url: link?.url ?? null });
      if (link !== undefined) this.closeLink(link);
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
      for (const link of this.links.values()) link.channel?.terminate();
      this.machine.stop();
    }
  }
}
