// The backup's driver: it accepts the primary's logging channel, replays what the BackupCore
// delivers, and does what the core says in the order BackupReady documents: deliver before
// acking, then send, then (when the primary is gone) finish the replay, contend for the
// generation, and go live. Going live ends the replay's log: the vCPU then continues with this
// host's devices, exactly where the primary's log stops (§2.3).

import type { WebSocket, WebSocketServer } from "ws";
import type { LogRecord } from "../../protocol/records.js";
import type { InstrumentedModule } from "../instrument/index.js";
import type { NetworkGate } from "../network-gate.js";
import { sameSecret } from "../secret.js";
import { Machine, type ReplaySource } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import type { Arbiter } from "./arbiter.js";
import { type BackupState, BackupCore } from "./backup.js";
import { Channel, listenForChannels } from "./channel.js";
import { RECONNECT_GRACE_MS, TICK_MS, timeoutTicksFor } from "./config.js";
import { SilenceMeter } from "./silence.js";
import type { PrimaryToBackup } from "./messages.js";
import { assert } from "../errors.js";
import type { VmSnapshot } from "../vm/snapshot.js";
import { type DriverLog, PrimaryDriver, PROGRESS_MS, type PrimaryStatus, type RecordHooks, type VmDevices } from "./primary-driver.js";

/**
 * How long a new backup waits for its primary's first message before it declares it failed:
 * the primary is started after the backup and may take seconds to load and compile a large
 * guest on a busy machine. Once a primary has spoken, the failure timeout applies.
 */
const FIRST_CONTACT_MS = 30_000;

export interface BackupDriverOptions {
  vmId: string;
  hostId: string;
  module: InstrumentedModule;
  arbiter: Arbiter;
  /** The pair's generation (default 1). */
  generation?: number;
  /** Silence after which the peer is declared failed (default 1000 ms; docs/ft-protocol.md). */
  timeoutMs?: number;
  /** The host's network: while cut off, no logging channel (network-gate.ts). */
  network?: NetworkGate;
  token?: string;
  /**
   * Listen for the logging channel on a WebSocket server of its own (at host:port, loopback by
   * default), or take connections only through `accept` (a host daemon routes them).
   */
  ownListener?: boolean;
  host?: string;
  port?: number;
  /**
   * Accept permessage-deflate on its own listener (default off unless $LOCKSTEP_LOG_COMPRESSION
   * is "on"); a host daemon's listener has the daemon's setting.
   */
  logCompression?: boolean;
  devices?: VmDevices;
  /**
   * Start from this snapshot of the running primary instead of booting the guest (a live
   * clone, §3.1): the log this backup receives begins at `restore.seq`.
   */
  restore?: VmSnapshot;
  onLive?: (generation: number, icount: bigint) => void;
  log?: DriverLog;
}

export interface BackupStatus {
  role: "backup";
  state: BackupState;
  /** The generation of the pair; once live, the generation this VM now runs as. */
  generation: number;
  icount: bigint;
  receivedSeq: bigint;
  replayedSeq: bigint;
  channelOpen: boolean;
  /** Whether the current (or last) connection negotiated permessage-deflate. */
  logCompression: boolean;
  /** Channel-frame bytes received on the logging channel, and what they took on TCP. */
  logBytesReceived: number;
  logWireBytesReceived: number;
  /** The longest silence from the peer while paired, in ms (against the failure timeout). */
  silenceMsMax: number;
}

/** Records in order for the replaying vCPU; `end()` once the log is complete (go-live). */
class RecordFeed implements ReplaySource {
  private readonly batches: LogRecord[][] = [];
  private ended = false;
  private wake: (() => void) | null = null;

  push(records: readonly LogRecord[]): void {
    if (records.length === 0) return;
    this.batches.push([...records]);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async next(): Promise<LogRecord[] | null> {
    while (this.batches.length === 0 && !this.ended) {
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
    return this.batches.shift() ?? null;
  }
}

export class BackupDriver {
  readonly core: BackupCore;
  readonly machine: Machine;
  readonly done: Promise<VmResult>;
  /** Resolves with the channel's port once it listens (own listener only; else 0). */
  readonly listening: Promise<number>;
  private readonly feed = new RecordFeed();
  private channel: Channel | null = null;
  /** Bytes received on earlier connections of the logging channel. */
  private bytesReceivedBefore = 0;
  private wireBytesReceivedBefore = 0;
  private server: WebSocketServer | null = null;
  /** The vCPU has switched to live: what it outputs from here on is this VM's, not a replay's. */
  private vcpuLive = false;
  private liveGeneration: number | null = null;
  /**
   * The primary this VM became on going live: it owns the vCPU from then on, recording, so
   * that it can be cloned to a new backup and be fault tolerant again (§3.1).
   */
  successor: PrimaryDriver | null = null;
  private successorHooks: RecordHooks | null = null;
  private icount = 0n;
  /** The core's generation at the last pump: a primary with several backups renews it. */
  private reportedGeneration: number;
  private readonly silence = new SilenceMeter();
  private readonly ticker: NodeJS.Timeout;
  private lastTickMs = performance.now();
  private readonly log: DriverLog;

  constructor(private readonly options: BackupDriverOptions) {
    this.log = (line) =>
      options.log?.({ vm: options.vmId, role: "backup", generation: this.liveGeneration ?? this.core.generation, ...line });
    this.core = new BackupCore({
      vmId: options.vmId,
      generation: options.generation ?? 1,
      hostId: options.hostId,
      ...(options.timeoutMs === undefined ? {} : { timeoutTicks: timeoutTicksFor(options.timeoutMs) }),
      reconnectGraceTicks: Math.ceil(RECONNECT_GRACE_MS / TICK_MS),
      firstContactTicks: timeoutTicksFor(FIRST_CONTACT_MS),
      ...(options.restore === undefined ? {} : { startSeq: BigInt(options.restore.seq), startIcount: options.restore.icount }),
    });
    this.icount = options.restore?.icount ?? 0n;
    this.reportedGeneration = this.core.generation;
    const onConsole = options.devices?.onConsole;
    this.machine = new Machine({
      mode: "replay",
      // Live, it records as a primary does, so that a clone can pair it with a new backup.
      goLiveAs: "record",
      markOutputs: true,
      progressMs: PROGRESS_MS,
      module: options.module,
      ...options.devices,
      restore: options.restore ?? null,
      // Records and outputs of the live vCPU belong to the successor; a replay has none of its
      // own except console text, which the gate below drops.
      onRecords: (records) => {
        assert(this.successorHooks !== null, "records only once live");
        this.successorHooks.onRecords(records);
      },
      holdOutput: (seq, release) => (this.vcpuLive && this.successorHooks !== null ? this.successorHooks.holdOutput(seq, release) : release()),
      // A backup's outputs are dropped (§2.2). The vCPU's messages arrive in order, so every
      // output before its "live" message was replayed, even after the core decided to go live.
      onConsole: (text) => {
        if (this.vcpuLive) onConsole?.(text);
      },
      replay: this.feed,
      onReplayProgress: (seq, icount) => {
        this.icount = icount;
        this.core.replayed(BigInt(seq), icount);
        this.pump();
      },
      onLive: (icount) => {
        this.vcpuLive = true;
        this.icount = icount;
      },
    });
    this.listening =
      options.ownListener === false
        ? Promise.resolve(0)
        : listenForChannels(options.host ?? "127.0.0.1", options.port ?? 0, (socket) => this.accept(socket), options.logCompression).then(
            ({ server, port }) => {
              this.server = server;
              return port;
            },
          );
    this.ticker = setInterval(() => this.tick(), TICK_MS);
    const unsubscribe = options.network?.onChange((connected) => connected || this.channel?.terminate());
    this.done = this.machine.done.finally(() => {
      unsubscribe?.();
      clearInterval(this.ticker);
      this.channel?.terminate();
      this.server?.close();
    });
  }

  /** A logging-channel connection from the primary. One at a time; none once live. */
  accept(socket: WebSocket): void {
    if (this.options.network?.connected === false) {
      socket.close(1008, "this host is cut off from the network");
      return;
    }
    if (this.channel?.open || this.liveGeneration !== null) {
      socket.close(1008, "this backup already has a primary");
      return;
    }
    // Nothing from a connection counts until its hello, which carries the token: a peer that
    // skips it cannot feed records to the replay.
    let greeted = false;
    const channel: Channel = new Channel(
      socket,
      {
        message: (message) => {
          if (!greeted) {
            if (message.t !== "hello") return channel.reject(`${message.t} before hello`);
            if (this.options.token !== undefined && !sameSecret(message.token, this.options.token)) return channel.reject("wrong token");
            greeted = true;
          }
          if (this.core.state === "replaying") this.silence.heard(performance.now());
          else this.silence.stop();
          this.core.receive(message as PrimaryToBackup);
          this.pump();
        },
        close: (reason) => {
          this.log({ level: "info", msg: "logging channel down", reason });
          if (this.channel === channel) this.core.channelDown();
          this.pump();
        },
      },
      (line) => this.log(line),
    );
    if (this.channel !== null) {
      this.bytesReceivedBefore += this.channel.bytesReceived;
      this.wireBytesReceivedBefore += this.channel.wireBytesReceived;
    }
    this.channel = channel;
    this.core.channelUp();
    this.silence.connected(performance.now());
    this.pump();
  }

  /**
   * Go live now, without waiting for the failure timeout: an operator has stopped this
   * backup's primary (a migration hands the VM over here). Replays what it holds, wins the
   * next generation and goes live, exactly as after a failure.
   */
  takeOver(): void {
    if (this.core.state !== "replaying") return;
    this.log({ level: "warn", msg: "taking over from a stopped primary", event: "takeOver" });
    this.core.primaryLost();
    this.pump();
  }

  /** Stops the VM (a live backup, or one told to power off). */
  stop(): void {
    this.machine.stop();
  }

  status(): BackupStatus | PrimaryStatus {
    if (this.successor !== null) return this.successor.status();
    const position = this.core.position();
    return {
      role: "backup",
      state: this.core.state,
      generation: this.liveGeneration ?? this.core.generation,
      icount: this.icount,
      receivedSeq: position.receivedSeq,
      replayedSeq: position.replayedSeq,
      channelOpen: this.channel?.open ?? false,
      logCompression: this.channel?.compressed ?? false,
      logBytesReceived: this.bytesReceivedBefore + (this.channel?.bytesReceived ?? 0),
      logWireBytesReceived: this.wireBytesReceivedBefore + (this.channel?.wireBytesReceived ?? 0),
      silenceMsMax: this.silence.longestMs,
    };
  }

  private tick(): void {
    const nowMs = performance.now();
    const sinceMs = nowMs - this.lastTickMs;
    this.lastTickMs = nowMs;
    // Suspended for a whole timeout: the primary may have gone alone meanwhile. Settle it at the
    // arbiter now rather than acking records that a live primary no longer waits for (§2.3).
    if (sinceMs >= this.core.config.timeoutTicks * TICK_MS && this.core.state === "replaying") {
      this.log({ level: "warn", msg: "this host was suspended past the timeout", event: "suspended", suspendedMs: Math.round(sinceMs) });
      this.core.primaryLost();
    }
    this.core.tick();
    this.pump();
  }

  private pump(): void {
    const ready = this.core.ready();
    if (this.core.generation !== this.reportedGeneration) {
      // Its primary dropped another backup and kept this one (docs/ft-protocol.md, "More than
      // one backup"); or, its primary dead, the arbiter said the primary had won that much.
      this.reportedGeneration = this.core.generation;
      this.log({ level: "info", msg: "backup renewed", event: "backupRenewed", newGeneration: this.core.generation });
    }
    this.feed.push(ready.deliver);
    for (const message of ready.messages) this.channel?.send(message);
    if (ready.finishReplay) {
      this.log({ level: "warn", msg: "primary failure detected", event: "failureDetected", peer: "primary" });
      this.channel?.terminate();
    }
    if (ready.testAndSet) {
      void this.options.arbiter.testAndSet(ready.testAndSet).then((result) => {
        this.core.testAndSetResult(result);
        this.pump();
      });
    }
    for (const error of ready.errors) this.log({ level: "warn", msg: "protocol error", error });
    if (ready.goLive) {
      this.liveGeneration = ready.goLive.generation;
      this.log({ level: "warn", msg: "went live", event: "wentLive", icount: ready.goLive.icount });
      clearInterval(this.ticker);
      // The successor takes the vCPU before the log ends, so that it sees every live record.
      const { generation, nextSeq, icount } = ready.goLive;
      this.successor = new PrimaryDriver({
        vmId: this.options.vmId,
        hostId: this.options.hostId,
        module: this.options.module,
        arbiter: this.options.arbiter,
        generation,
        backupUrl: null,
        adopt: { machine: this.machine, startSeq: nextSeq, startIcount: icount, attach: (hooks) => (this.successorHooks = hooks) },
        ...(this.options.timeoutMs === undefined ? {} : { timeoutMs: this.options.timeoutMs }),
        ...(this.options.network === undefined ? {} : { network: this.options.network }),
        ...(this.options.token === undefined ? {} : { token: this.options.token }),
        ...(this.options.logCompression === undefined ? {} : { logCompression: this.options.logCompression }),
        ...(this.options.log === undefined ? {} : { log: this.options.log }),
      });
      this.feed.end();
      this.options.onLive?.(ready.goLive.generation, ready.goLive.icount);
    }
    if (ready.halt) {
      this.log({ level: "warn", msg: "halted", event: "halted", reason: ready.halt });
      // A halted backup never goes live: its replay is of no further use. After a PowerOff or
      // End record the vCPU stops there by itself, with the primary's result.
      if (ready.halt !== "powerOff" && ready.halt !== "end") this.machine.kill();
    }
  }
}

