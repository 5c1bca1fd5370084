// A deterministic in-memory world for the FT protocol cores: hosts (A runs the primary, B.. its
// backups, one more is a spare: three hosts with one backup, N + 2 with N), a network, an
// arbiter (test-and-set registers on the storage server) and a cluster service, all driven by
// one seeded PRNG and a global tick. The cores are the real ones (host/ft); everything around them
// is a model of what the driver and the environment do:
//
// - a primary vCPU that produces records and outputs (each output preceded by its marker
//   record, as the real vCPU logs a Digest at each output), obeying `stall` and `cpuShare`;
// - backup vCPUs that replay delivered records at their own (sometimes very slow) rate;
// - a network that loses, duplicates, reorders (random delays), partitions and notifies
//   channelDown/channelUp; messages are addressed to a core incarnation, like a connection;
// - hosts that crash (stop forever) or pause (handle nothing for N ticks; their inbox fills
//   and is handled on resume; no tick catch-up);
// - an arbiter that can be unreachable from a host, before a request or after applying it
//   (the answer is lost and the host retries: the register must be idempotent per owner);
// - a cluster service that starts a new backup for a primary with fewer than `backups` (§3.1)
//   and sometimes tells stale cores that a higher generation is live.
//
// The Checker (checker.ts) watches every release, go-live and halt. Any violation throws a
// SimFailure; runSchedule turns it into a result that names the seed.

import { PrimaryCore } from "../../../host/ft/primary.js";
import { BackupCore } from "../../../host/ft/backup.js";
import type { BackupConfig, PrimaryConfig } from "../../../host/ft/config.js";
import type { ChannelMessage, TestAndSetRequest, TestAndSetResult } from "../../../host/ft/messages.js";
import { ControlKind, EMPTY_BYTES, EventKind, type LogRecord, RecordKind } from "../../../protocol/records.js";
import { Prng } from "./prng.js";
import { Checker, History, SimFailure } from "./checker.js";

export type HostName = string;
/** The hosts of a world with one backup: A the primary, B its backup, C a spare. */
export const HOSTS: readonly HostName[] = ["A", "B", "C"];
/** Backups a world may start with (`WorldOptions.backups`). */
export const SIM_BACKUPS_MAX = 3;

/** A world with `backups` backups: A the primary, B.. the backups, then one spare. */
export function hostNames(backups: number): HostName[] {
  return Array.from({ length: backups + 2 }, (_, index) => String.fromCharCode(65 + index));
}

export type Fault =
  /** The link between two hosts drops everything; `notify`: both ends see channelDown/Up. */
  | { at: number; kind: "partition"; a: HostName; b: HostName; ticks: number; notify: boolean }
  /** The host cannot reach the arbiter. */
  | { at: number; kind: "arbiterDown"; host: HostName; ticks: number }
  | { at: number; kind: "crash"; host: HostName }
  /** The host handles nothing for `ticks` (SIGSTOP, a long GC, a VM migration stun). */
  | { at: number; kind: "pause"; host: HostName; ticks: number }
  /** The operator powers the VM off: the primary logs a PowerOff control (§3.3). */
  | { at: number; kind: "powerOff" }
  /** The operator pauses the guest for `ticks`: Pause, then Resume controls. */
  | { at: number; kind: "guestPause"; ticks: number }
  /** Replay on whichever host runs the backup slows to `perTick` records per tick. */
  | { at: number; kind: "slowReplay"; ticks: number; perTick: number };

/** Deliberate bugs, to prove the checker catches them (test/ft/checker.test.ts). */
export type Bug =
  /** The primary's driver releases each output as soon as the vCPU produces it. */
  | "releaseBeforeAck"
  /** The backup acks records as if it held everything the primary has appended. */
  | "ackAhead"
  /** A core that asks for the test-and-set goes live without asking the arbiter. */
  | "skipTestAndSet"
  /** On failover the backup's driver drops the records its vCPU had not replayed yet. */
  | "discardUnreplayed"
  /** A primary that suspects its backup releases held outputs before winning the register. */
  | "releaseOnSuspicion"
  /** Several backups: the primary's driver counts one backup's acks for every backup. */
  | "ackOneForAll"
  /**
   * Several backups: a backup prepared for its primary's next generation skips asking for it
   * on the primary's behalf (as if the primary surely owned it) and contends for the one after.
   */
  | "skipOnBehalf";

export interface NetOptions {
  /** Every message takes this long... */
  delayTicks: number;
  /** ...except this share of them, delayed 1..3 ticks more: they overtake nothing, others overtake them. */
  reorderPermille: number;
  lossPermille: number;
  dupPermille: number;
}

export interface WorldOptions {
  seed: number;
  faults: Fault[];
  /** Faults happen in [0, faultTicks); then everything heals for healTicks. */
  faultTicks: number;
  healTicks: number;
  /** A release must happen in the last livenessTicks if anyone can still make progress. */
  livenessTicks: number;
  net: NetOptions;
  /** Records the primary vCPU produces per tick at full CPU share, in thousandths. */
  recordsPerTickPermille: number;
  /** A vCPU never produces more than this per tick (the stall slacks are sized for it). */
  recordsPerTickMax: number;
  /** Chance that a record is followed by an output (its marker record and the output). */
  outputPermille: number;
  replayPerTick: number;
  /** How many backups the primary starts with, and the cluster service restores (default 1). */
  backups?: number;
  primary: Partial<PrimaryConfig>;
  backup: Partial<BackupConfig>;
  /** Start a new backup this long after a primary went alone, at most `max` times. */
  respawn: { delayTicks: number; max: number } | null;
  /** Chance that the cluster service tells a stale core about a new generation. */
  supersededNoticePermille: number;
  arbiterLatencyMaxTicks: number;
  arbiterTimeoutTicks: number;
  bugs: readonly Bug[];
  trace: boolean;
}

export interface SimStats {
  ticks: number;
  messagesSent: number;
  messagesLost: number;
  messagesDuplicated: number;
  records: number;
  outputs: number;
  released: number;
  goLive: number;
  goAlone: number;
  /** Contests a primary won keeping some of its backups. */
  renewed: number;
  /** Releases by a superseded history, inside the prefix the live one shares (harmless). */
  lateReleases: number;
  /** Ticks a primary vCPU spent stalled (full buffer) or throttled (lag control, §3.2). */
  stalledTicks: number;
  throttledTicks: number;
  respawns: number;
  tasRequests: number;
  tasUnreachable: number;
  /** Test-and-sets a backup asked on its primary's behalf, and how many of them it won. */
  tasOnBehalf: number;
  tasOnBehalfWon: number;
  /** Backups that took a renewed generation from their primary. */
  renewsAdopted: number;
  halts: Record<string, number>;
  faults: Record<string, number>;
}

export interface SimResult {
  seed: number;
  ok: boolean;
  failure: { code: string; detail: string } | null;
  stats: SimStats;
  trace: string[];
}

const VM_ID = "vm-sim";
const DATA_SIZES = [0, 0, 8, 24, 64, 120].map((n) => new Uint8Array(n));
const DIGEST = new Uint8Array(32);
/** Largest record the sim makes, encoded (120 data bytes + fields), rounded up. */
export const SIM_RECORD_BYTES_MAX = 200;

interface PrimaryRun {
  kind: "primary";
  id: number;
  host: Host;
  core: PrimaryCore;
  history: History;
  /** Its backups, by the core's ids (the backup runs' ids). */
  peers: Map<string, BackupRun>;
  alone: boolean;
  /** Since when it has had fewer backups than the world wants (for the cluster service). */
  aloneSinceTick: number;
  stall: boolean;
  cpuShare: number;
  budgetPermille: number;
  nextOutputId: number;
  outputSeqs: Map<number, number>;
  /** Controls the operator asked for, appended at the next record boundary. */
  controls: ControlKind[];
  guestPaused: boolean;
  ended: boolean;
  bugReleased: Set<number>;
}

interface BackupRun {
  kind: "backup";
  id: number;
  host: Host;
  core: BackupCore;
  /** The whole log this replica holds: the snapshot's prefix, then every record delivered. */
  received: LogRecord[];
  replayed: number;
  primary: PrimaryRun;
  sawTerminal: boolean;
  /** Bug discardUnreplayed: where the log was cut. */
  cutAt: number | null;
  /** The core's generation at the last Ready: it rises when it takes a renew. */
  generation: number;
}

type Run = PrimaryRun | BackupRun;

type InboxItem =
  /** `from`: the sending backup's id, for a primary. */
  | { t: "message"; runId: number; message: ChannelMessage; from: string | undefined }
  /** `backup`: which of a primary's channels. */
  | { t: "channel"; runId: number; up: boolean; backup: string | undefined }
  | { t: "tas"; runId: number; result: TestAndSetResult }
  | { t: "superseded"; runId: number; generation: number };

class Host {
  crashed = false;
  pausedUntilTick = 0;
  inbox: InboxItem[] = [];
  run: Run | null = null;
  arbiterDownUntilTick = 0;
  constructor(readonly name: HostName) {}
}

interface InFlight {
  to: Host;
  from: Host;
  item: InboxItem;
  /**
   * link: the logging channel, cut by partitions. arbiter: a test-and-set answer, which
   * becomes "unreachable" if the host cannot reach the arbiter when it arrives. service: the
   * cluster service's notices, which only a crash stops.
   */
  via: "link" | "arbiter" | "service";
}

export class World {
  readonly rng: Prng;
  readonly hosts: Record<HostName, Host>;
  readonly hostNames: readonly HostName[];
  private readonly backupsWanted: number;
  readonly checker: Checker;
  readonly stats: SimStats;
  readonly trace: string[] = [];
  private tick = 0;
  private nextRunId = 1;
  private readonly timeline: InFlight[][];
  private readonly faultsAt: Fault[][];
  private readonly heals: { at: number; apply: () => void }[] = [];
  private readonly linkDownUntil = new Map<string, number>();
  private readonly arbiter = new Map<number, HostName>();
  private slowReplay: { untilTick: number; perTick: number } | null = null;
  private respawns = 0;
  private readonly endTick: number;

  constructor(readonly options: WorldOptions) {
    this.rng = new Prng(options.seed);
    this.backupsWanted = options.backups ?? 1;
    if (!(this.backupsWanted >= 1 && this.backupsWanted <= SIM_BACKUPS_MAX)) throw new Error(`backups: 1..${SIM_BACKUPS_MAX}`);
    this.hostNames = hostNames(this.backupsWanted);
    this.hosts = Object.fromEntries(this.hostNames.map((name) => [name, new Host(name)]));
    this.endTick = options.faultTicks + options.healTicks;
    this.timeline = Array.from({ length: this.endTick + 64 }, () => []);
    this.faultsAt = Array.from({ length: this.endTick }, () => []);
    for (const fault of options.faults) this.faultsAt[fault.at]!.push(fault);
    this.stats = {
      ticks: 0,
      messagesSent: 0,
      messagesLost: 0,
      messagesDuplicated: 0,
      records: 0,
      outputs: 0,
      released: 0,
      goLive: 0,
      goAlone: 0,
      renewed: 0,
      lateReleases: 0,
      stalledTicks: 0,
      throttledTicks: 0,
      respawns: 0,
      tasRequests: 0,
      tasUnreachable: 0,
      tasOnBehalf: 0,
      tasOnBehalfWon: 0,
      renewsAdopted: 0,
      halts: {},
      faults: {},
    };
    // Generation 1: A is the primary, B.. its backups, all from the VM's first instruction.
    const history = new History(1);
    this.checker = new Checker(history, options.trace ? (line) => this.log(line) : null);
    // Run ids are handed out in order: the primary's first, then each backup's.
    const backupIds = Array.from({ length: this.backupsWanted }, (_, index) => String(this.nextRunId + 1 + index));
    const primary = this.startPrimary(this.hosts.A!, history, { mode: "paired", generation: 1, startSeq: 0n, startIcount: 0n, backups: backupIds });
    for (const name of this.hostNames.slice(1, 1 + this.backupsWanted)) {
      const backup = this.startBackup(this.hosts[name]!, primary, 0n, 0n);
      primary.peers.set(String(backup.id), backup);
      primary.core.channelUp(String(backup.id));
      backup.core.channelUp();
    }
  }

  run(): void {
    while (this.tick < this.endTick) this.step();
    this.checker.checkLiveness(this.livenessExpected(), this.endTick, this.options.livenessTicks);
  }

  private log(line: string): void {
    if (this.options.trace) this.trace.push(`${String(this.tick).padStart(4)} ${line}`);
  }

  // ---- runs ---------------------------------------------------------------------------------

  private startPrimary(
    host: Host,
    history: History,
    start: { mode: "paired" | "alone"; generation: number; startSeq: bigint; startIcount: bigint; backups?: string[] },
  ): PrimaryRun {
    const core = new PrimaryCore({ ...this.options.primary, vmId: VM_ID, hostId: host.name, ...start });
    const run: PrimaryRun = {
      kind: "primary",
      id: this.nextRunId++,
      host,
      core,
      history,
      peers: new Map(),
      alone: start.mode === "alone",
      aloneSinceTick: start.mode === "alone" ? this.tick : Infinity,
      stall: false,
      cpuShare: 1,
      budgetPermille: 0,
      nextOutputId: 1,
      outputSeqs: new Map(),
      controls: [],
      guestPaused: false,
      ended: false,
      bugReleased: new Set(),
    };
    host.run = run;
    if (this.options.trace) this.log(`${host.name} primary gen ${start.generation} ${start.mode} at seq ${start.startSeq}`);
    return run;
  }

  private startBackup(host: Host, primary: PrimaryRun, startSeq: bigint, startIcount: bigint): BackupRun {
    const core = new BackupCore({
      ...this.options.backup,
      vmId: VM_ID,
      hostId: host.name,
      generation: primary.core.generation,
      startSeq,
      startIcount,
    });
    const run: BackupRun = {
      kind: "backup",
      id: this.nextRunId++,
      host,
      core,
      received: primary.history.records.slice(0, Number(startSeq)),
      replayed: Number(startSeq),
      primary,
      sawTerminal: false,
      cutAt: null,
      generation: primary.core.generation,
    };
    host.run = run;
    if (this.options.trace) this.log(`${host.name} backup gen ${primary.core.generation} of ${primary.host.name} at seq ${startSeq}`);
    return run;
  }

  // ---- the tick -----------------------------------------------------------------------------

  step(): void {
    const t = this.tick;
    for (const fault of this.faultsAt[t] ?? []) this.applyFault(fault);
    for (let index = this.heals.length - 1; index >= 0; index--) {
      if (this.heals[index]!.at === t) {
        this.heals[index]!.apply();
        this.heals.splice(index, 1);
      }
    }
    for (const flight of this.timeline[t]!) this.arrive(flight);
    this.timeline[t] = [];
    const order = this.rng.chance(0.5) ? this.hostNames : [...this.hostNames].reverse();
    for (const name of order) {
      const host = this.hosts[name]!;
      if (host.crashed || t < host.pausedUntilTick) continue;
      this.hostStep(host);
    }
    this.clusterService();
    this.tick++;
    this.stats.ticks++;
  }

  private hostStep(host: Host): void {
    const inbox = host.inbox;
    host.inbox = [];
    for (const item of inbox) {
      const run = host.run;
      if (run === null || run.id !== item.runId) continue;
      this.handle(run, item);
      // A go-live replaces the run: perform what the old one decided before the next item.
      if (item.t !== "message") this.perform(run);
    }
    const run = host.run;
    if (run === null) return;
    run.core.tick();
    if (run.kind === "primary") this.primaryVcpu(run);
    else this.backupVcpu(run);
    this.perform(run);
  }

  private handle(run: Run, item: InboxItem): void {
    switch (item.t) {
      case "message":
        if (run.kind === "primary") {
          if (item.message.t !== "ack" && item.message.t !== "hello") return;
          if (item.message.t === "ack" && this.options.bugs.includes("ackOneForAll")) {
            for (const id of run.peers.keys()) run.core.receive(item.message, id);
          } else {
            run.core.receive(item.message, item.from);
          }
        } else if (item.message.t !== "ack") {
          run.core.receive(item.message);
        }
        return;
      case "channel":
        if (run.kind === "primary") {
          if (item.up) run.core.channelUp(item.backup);
          else run.core.channelDown(item.backup);
        } else if (item.up) {
          run.core.channelUp();
        } else {
          run.core.channelDown();
        }
        return;
      case "tas":
        if (this.options.trace) this.log(`${run.host.name} test-and-set answer: ${item.result}`);
        run.core.testAndSetResult(item.result);
        return;
      case "superseded":
        if (this.options.trace) this.log(`${run.host.name} told generation ${item.generation} is live`);
        run.core.generationSuperseded(item.generation);
        return;
    }
  }

  // ---- vCPUs --------------------------------------------------------------------------------

  private primaryVcpu(run: PrimaryRun): void {
    if (run.core.state === "halted" || run.ended) return;
    if (run.stall) {
      this.stats.stalledTicks++;
      return;
    }
    if (run.cpuShare < 1) this.stats.throttledTicks++;
    const o = this.options;
    let budget = o.recordsPerTickMax;
    // Operator controls go in first, at the next record boundary.
    while (run.controls.length > 0 && budget > 0) {
      const control = run.controls.shift()!;
      if (control === ControlKind.Pause && run.guestPaused) continue;
      if (control === ControlKind.Resume && !run.guestPaused) continue;
      this.appendRecord(run, RecordKind.Control, control, EMPTY_BYTES);
      budget--;
      if (control === ControlKind.Pause) run.guestPaused = true;
      if (control === ControlKind.Resume) run.guestPaused = false;
      if (control === ControlKind.PowerOff) {
        run.ended = true;
        return;
      }
    }
    if (run.guestPaused) return;
    run.budgetPermille += Math.round(o.recordsPerTickPermille * run.cpuShare);
    while (run.budgetPermille >= 1000 && budget > 0) {
      run.budgetPermille -= 1000;
      budget--;
      this.appendRecord(run, this.rng.chance(0.5) ? RecordKind.Event : RecordKind.Input, EventKind.Timer, this.rng.pick(DATA_SIZES));
      if (budget > 0 && this.rng.below(1000) < o.outputPermille) {
        budget--;
        this.appendRecord(run, RecordKind.Digest, 0, DIGEST);
        const id = run.nextOutputId++;
        const seq = run.history.records.length;
        run.outputSeqs.set(id, seq);
        this.stats.outputs++;
        run.core.output(id, BigInt(seq));
        if (this.options.bugs.includes("releaseBeforeAck")) {
          run.bugReleased.add(id);
          this.release(run, id);
        }
      }
    }
    if (run.budgetPermille > 1000) run.budgetPermille = 1000;
  }

  private appendRecord(run: PrimaryRun, kind: RecordKind, a: number, data: Uint8Array): void {
    const records = run.history.records;
    const last = records[records.length - 1];
    const record: LogRecord = {
      kind,
      seq: BigInt(records.length),
      icount: (last?.icount ?? 0n) + BigInt(1 + this.rng.below(1000)),
      a,
      b: 0,
      value: 0n,
      data,
    };
    records.push(record);
    this.stats.records++;
    run.core.append([record]);
  }

  private backupVcpu(run: BackupRun): void {
    const state = run.core.state;
    if (state === "live" || state === "halted") return;
    const perTick =
      this.slowReplay !== null && this.tick < this.slowReplay.untilTick ? this.slowReplay.perTick : this.options.replayPerTick;
    const target = Math.min(run.received.length, run.replayed + perTick);
    if (target === run.replayed) return;
    run.replayed = target;
    run.core.replayed(BigInt(target), run.received[target - 1]!.icount);
  }

  // ---- performing a Ready -------------------------------------------------------------------

  private perform(run: Run): void {
    if (run.kind === "primary") this.performPrimary(run);
    else this.performBackup(run);
  }

  private performPrimary(run: PrimaryRun): void {
    const ready = run.core.ready();
    run.stall = ready.stall;
    run.cpuShare = ready.cpuShare;
    for (const { to, message } of ready.messages) {
      const backup = run.peers.get(to);
      if (backup === undefined) throw new SimFailure("BAD_ADDRESS", `${run.host.name} sent to ${to}, not one of its backups`);
      this.send(run, backup, message);
    }
    if (ready.renewed !== null) {
      this.stats.renewed++;
      if (this.options.trace) {
        const kept = [...run.peers.values()].map((backup) => backup.host.name).join(",");
        this.log(`${run.host.name} renews as generation ${ready.renewed.generation} with ${kept}`);
      }
      this.checker.wentLive(run.host.name, ready.renewed.generation, this.arbiter.get(ready.renewed.generation), run.history, null);
      this.superseded(run.host, ready.renewed.generation);
    }
    if (ready.goAlone !== null) {
      this.stats.goAlone++;
      if (this.options.trace) this.log(`${run.host.name} goes alone as generation ${ready.goAlone.generation}`);
      this.checker.wentLive(run.host.name, ready.goAlone.generation, this.arbiter.get(ready.goAlone.generation), run.history, null);
      run.alone = true;
      run.aloneSinceTick = this.tick;
      this.superseded(run.host, ready.goAlone.generation);
    }
    for (const id of ready.release) {
      if (run.bugReleased.delete(id)) continue;
      this.release(run, id);
    }
    // After the releases: they were earned with these backups still in the set (PrimaryReady).
    for (const id of ready.dropped) {
      const backup = run.peers.get(id);
      if (backup === undefined) throw new SimFailure("BAD_ADDRESS", `${run.host.name} dropped ${id}, not one of its backups`);
      run.peers.delete(id);
      if (run.peers.size < this.backupsWanted && run.aloneSinceTick === Infinity) run.aloneSinceTick = this.tick;
      if (this.options.trace && this.backupsWanted > 1) this.log(`${run.host.name} drops its backup on ${backup.host.name}`);
    }
    if (ready.testAndSet !== null && this.options.bugs.includes("releaseOnSuspicion")) {
      for (const id of [...run.outputSeqs.keys()]) {
        if (run.bugReleased.has(id)) continue;
        run.bugReleased.add(id);
        this.release(run, id, true);
      }
    }
    if (ready.testAndSet !== null) this.testAndSet(run, ready.testAndSet);
    if (ready.halt !== null) {
      this.halted(run, ready.halt);
      if (ready.halt === "powerOff" || ready.halt === "end") this.checker.vmEnded(run.core.generation);
    }
  }

  private release(run: PrimaryRun, id: number, alone = run.alone): void {
    const seq = run.outputSeqs.get(id);
    if (seq === undefined) throw new SimFailure("UNKNOWN_OUTPUT", `${run.host.name} released output ${id} twice or never made`);
    run.outputSeqs.delete(id);
    this.stats.released++;
    // The Output Rule with several backups: every one of them must hold the records.
    let backupHolds: number | null = null;
    for (const backup of run.peers.values()) if (backupHolds === null || backup.received.length < backupHolds) backupHolds = backup.received.length;
    if (this.checker.released(run.host.name, run.history, seq, alone, backupHolds, this.tick)) this.stats.lateReleases++;
  }

  private performBackup(run: BackupRun): void {
    const ready = run.core.ready();
    if (run.core.generation > run.generation) {
      run.generation = run.core.generation;
      this.stats.renewsAdopted++;
      if (this.options.trace) this.log(`${run.host.name} backup takes generation ${run.generation}`);
    }
    for (const record of ready.deliver) {
      const position = run.received.length;
      if (record.seq !== BigInt(position) || run.primary.history.records[position] !== record) {
        throw new SimFailure("BAD_DELIVERY", `${run.host.name} delivered seq ${record.seq} at position ${position}`);
      }
      run.received.push(record);
      if (record.kind === RecordKind.End || (record.kind === RecordKind.Control && record.a === ControlKind.PowerOff)) {
        run.sawTerminal = true;
      }
    }
    for (const message of ready.messages) {
      if (message.t === "ack" && this.options.bugs.includes("ackAhead")) {
        const appended = BigInt(run.primary.history.records.length);
        this.send(run, run.primary, { ...message, ackSeq: appended, windowEndSeq: appended + 64n });
      } else {
        this.send(run, run.primary, message);
      }
    }
    if (ready.finishReplay) {
      if (this.options.trace) this.log(`${run.host.name} declares the primary failed: finishing replay`);
      if (this.options.bugs.includes("discardUnreplayed") && run.replayed < run.received.length) {
        run.cutAt = run.replayed;
        run.replayed = run.received.length;
        run.core.replayed(BigInt(run.replayed), run.received[run.replayed - 1]!.icount);
      }
    }
    if (ready.testAndSet !== null) this.testAndSet(run, ready.testAndSet);
    if (ready.goLive !== null) this.goLive(run, ready.goLive);
    if (ready.halt !== null) this.halted(run, ready.halt);
  }

  private goLive(run: BackupRun, goLive: { generation: number; nextSeq: bigint; icount: bigint }): void {
    this.stats.goLive++;
    if (run.sawTerminal) throw new SimFailure("LIVE_AFTER_POWER_OFF", `${run.host.name} went live after receiving PowerOff/End`);
    const length = run.cutAt ?? run.received.length;
    if (run.cutAt === null && (run.replayed !== length || goLive.nextSeq !== BigInt(length))) {
      throw new SimFailure(
        "LIVE_BEFORE_REPLAY",
        `${run.host.name} went live at ${goLive.nextSeq} having replayed ${run.replayed} of ${length}`,
      );
    }
    const history = new History(goLive.generation, run.received.slice(0, length));
    if (this.options.trace) this.log(`${run.host.name} goes live as generation ${goLive.generation} at seq ${length}`);
    this.checker.wentLive(run.host.name, goLive.generation, this.arbiter.get(goLive.generation), history, length);
    const primary = this.startPrimary(run.host, history, {
      mode: "alone",
      generation: goLive.generation,
      startSeq: BigInt(length),
      startIcount: length === 0 ? 0n : history.records[length - 1]!.icount,
    });
    this.superseded(run.host, goLive.generation);
    // The guest is paused if the log says so; the operator's pending controls follow the VM.
    for (let index = length - 1; index >= 0; index--) {
      const record = history.records[index]!;
      if (record.kind === RecordKind.Control && (record.a === ControlKind.Pause || record.a === ControlKind.Resume)) {
        primary.guestPaused = record.a === ControlKind.Pause;
        break;
      }
    }
    primary.controls = [...run.primary.controls];
  }

  private halted(run: Run, reason: string): void {
    this.stats.halts[reason] = (this.stats.halts[reason] ?? 0) + 1;
    if (this.options.trace) this.log(`${run.host.name} ${run.kind} halts: ${reason}`);
  }

  // ---- network and arbiter ------------------------------------------------------------------

  private send(from: Run, peer: Run, message: ChannelMessage): void {
    this.stats.messagesSent++;
    const to = peer.host;
    const o = this.options.net;
    if (this.linkDown(from.host, to) || this.rng.below(1000) < o.lossPermille) {
      this.stats.messagesLost++;
      return;
    }
    const item: InboxItem = { t: "message", runId: peer.id, message, from: from.kind === "backup" ? String(from.id) : undefined };
    const delay = () => o.delayTicks + (this.rng.below(1000) < o.reorderPermille ? 1 + this.rng.below(3) : 0);
    this.schedule(delay(), { to, from: from.host, item, via: "link" });
    if (this.rng.below(1000) < o.dupPermille) {
      this.stats.messagesDuplicated++;
      this.schedule(delay() + this.rng.below(3), { to, from: from.host, item, via: "link" });
    }
  }

  private schedule(delayTicks: number, flight: InFlight): void {
    const at = Math.min(this.tick + delayTicks, this.timeline.length - 1);
    this.timeline[at]!.push(flight);
  }

  private arrive(flight: InFlight): void {
    const { to, from, item } = flight;
    if (to.crashed) return;
    if (flight.via === "arbiter") {
      // The answer is lost if the host cannot reach the arbiter now; the request stands.
      if (item.t === "tas" && this.tick < to.arbiterDownUntilTick && item.result !== "unreachable") {
        to.inbox.push({ ...item, result: "unreachable" });
        this.stats.tasUnreachable++;
        return;
      }
    } else if (flight.via === "link" && this.linkDown(from, to)) {
      this.stats.messagesLost++;
      return;
    }
    to.inbox.push(item);
  }

  private testAndSet(run: Run, request: TestAndSetRequest): void {
    this.stats.tasRequests++;
    const host = run.host;
    const onBehalf = request.owner !== host.name;
    if (onBehalf) this.stats.tasOnBehalf++;
    if (this.options.trace) this.log(`${host.name} asks the arbiter for generation ${request.generation}${onBehalf ? ` for ${request.owner}` : ""}`);
    let result: TestAndSetResult;
    let delay: number;
    if (this.options.bugs.includes("skipTestAndSet") || (onBehalf && this.options.bugs.includes("skipOnBehalf"))) {
      result = "won";
      delay = 1;
    } else if (this.tick < host.arbiterDownUntilTick) {
      result = "unreachable";
      delay = this.options.arbiterTimeoutTicks;
      this.stats.tasUnreachable++;
    } else {
      const owner = this.arbiter.get(request.generation);
      if (owner === undefined) this.arbiter.set(request.generation, request.owner as HostName);
      result = owner === undefined || owner === request.owner ? "won" : "lost";
      delay = 1 + this.rng.below(this.options.arbiterLatencyMaxTicks);
      if (onBehalf && result === "won") this.stats.tasOnBehalfWon++;
    }
    this.schedule(delay, { to: host, from: host, item: { t: "tas", runId: run.id, result }, via: "arbiter" });
  }

  private linkDown(a: Host, b: Host): boolean {
    return this.tick < (this.linkDownUntil.get(linkKey(a.name, b.name)) ?? 0);
  }

  // ---- faults -------------------------------------------------------------------------------

  private applyFault(fault: Fault): void {
    this.stats.faults[fault.kind] = (this.stats.faults[fault.kind] ?? 0) + 1;
    switch (fault.kind) {
      case "partition": {
        const key = linkKey(fault.a, fault.b);
        const until = this.tick + fault.ticks;
        this.linkDownUntil.set(key, Math.max(until, this.linkDownUntil.get(key) ?? 0));
        if (this.options.trace) this.log(`partition ${fault.a}|${fault.b} for ${fault.ticks}`);
        if (fault.notify) {
          this.notifyChannel(fault.a, fault.b, false);
          this.heals.push({ at: until, apply: () => this.notifyChannel(fault.a, fault.b, true) });
        }
        return;
      }
      case "arbiterDown": {
        const host = this.hosts[fault.host]!;
        host.arbiterDownUntilTick = Math.max(host.arbiterDownUntilTick, this.tick + fault.ticks);
        if (this.options.trace) this.log(`${fault.host} cannot reach the arbiter for ${fault.ticks}`);
        return;
      }
      case "crash":
        this.hosts[fault.host]!.crashed = true;
        if (this.options.trace) this.log(`${fault.host} crashes`);
        return;
      case "pause": {
        const host = this.hosts[fault.host]!;
        host.pausedUntilTick = Math.max(host.pausedUntilTick, this.tick + fault.ticks);
        if (this.options.trace) this.log(`${fault.host} pauses for ${fault.ticks}`);
        return;
      }
      case "powerOff":
      case "guestPause": {
        const primary = this.livePrimary();
        if (primary === null) return;
        if (this.options.trace) this.log(`operator: ${fault.kind} on ${primary.host.name}`);
        if (fault.kind === "powerOff") {
          primary.controls.push(ControlKind.PowerOff);
        } else {
          primary.controls.push(ControlKind.Pause);
          this.heals.push({
            at: Math.min(this.tick + fault.ticks, this.options.faultTicks),
            apply: () => this.livePrimary()?.controls.push(ControlKind.Resume),
          });
        }
        return;
      }
      case "slowReplay":
        this.slowReplay = { untilTick: this.tick + fault.ticks, perTick: fault.perTick };
        if (this.options.trace) this.log(`replay slows to ${fault.perTick}/tick for ${fault.ticks}`);
        return;
    }
  }

  /** Both ends of the link hear of it, through their inboxes (a paused host hears later). */
  private notifyChannel(a: HostName, b: HostName, up: boolean): void {
    for (const [near, far] of [
      [a, b],
      [b, a],
    ] as const) {
      const host = this.hosts[near];
      const run = host?.run ?? null;
      if (host === undefined || run === null) continue;
      if (run.kind === "backup") {
        if (run.primary.host.name === far) host.inbox.push({ t: "channel", runId: run.id, up, backup: undefined });
        continue;
      }
      for (const [id, backup] of run.peers) {
        if (backup.host.name === far) host.inbox.push({ t: "channel", runId: run.id, up, backup: id });
      }
    }
  }

  /** The primary run the operator talks to: the newest non-halted one. */
  private livePrimary(): PrimaryRun | null {
    let best: PrimaryRun | null = null;
    for (const name of this.hostNames) {
      const run = this.hosts[name]!.run;
      if (run === null || run.kind !== "primary" || run.core.state === "halted" || this.hosts[name]!.crashed) continue;
      if (best === null || run.core.generation > best.core.generation) best = run;
    }
    return best;
  }

  // ---- the cluster service ------------------------------------------------------------------

  private clusterService(): void {
    if (this.tick >= this.options.faultTicks) {
      // Healing: the operator resumes a guest left paused (its Resume may have gone to a
      // primary that was then superseded).
      for (const name of this.hostNames) {
        const run = this.hosts[name]!.run;
        if (run?.kind === "primary" && run.guestPaused && !run.controls.includes(ControlKind.Resume)) {
          run.controls.push(ControlKind.Resume);
        }
      }
    }
    const respawn = this.options.respawn;
    if (respawn === null || this.respawns >= respawn.max || this.tick >= this.options.faultTicks) return;
    for (const name of this.hostNames) {
      const host = this.hosts[name]!;
      const run = host.run;
      if (run === null || run.kind !== "primary" || run.ended || run.peers.size >= this.backupsWanted) continue;
      // Never during a contest: the set of backups it settles is fixed.
      if (run.core.state !== "alone" && run.core.state !== "paired") continue;
      if (host.crashed || this.tick < host.pausedUntilTick || this.tick - run.aloneSinceTick < respawn.delayTicks) continue;
      const spare = this.hostNames.map((n) => this.hosts[n]!).find(
        (h) =>
          h !== host &&
          !h.crashed &&
          this.tick >= h.pausedUntilTick &&
          (h.run === null || h.run.core.state === "halted"),
      );
      if (spare === undefined) continue;
      // FT VMotion (§3.1): the vCPU is stopped at a record boundary; the clone starts there.
      const startSeq = run.core.nextSeq;
      const records = run.history.records;
      const startIcount = records.length === 0 ? 0n : records[records.length - 1]!.icount;
      const backup = this.startBackup(spare, run, startSeq, startIcount);
      const id = String(backup.id);
      run.core.pair(id);
      run.peers.set(id, backup);
      run.alone = false;
      // The next clone waits its delay again, counted from this one.
      run.aloneSinceTick = run.peers.size < this.backupsWanted ? this.tick : Infinity;
      run.core.channelUp(id);
      backup.core.channelUp();
      this.respawns++;
      this.stats.respawns++;
      if (this.respawns >= respawn.max) return;
    }
  }

  private superseded(winner: Host, generation: number): void {
    for (const name of this.hostNames) {
      const host = this.hosts[name]!;
      const run = host.run;
      if (host === winner || run === null || this.rng.below(1000) >= this.options.supersededNoticePermille) continue;
      this.schedule(1 + this.rng.below(20), {
        to: host,
        from: winner,
        item: { t: "superseded", runId: run.id, generation },
        via: "service",
      });
    }
  }

  // ---- liveness -----------------------------------------------------------------------------

  /**
   * Progress is owed at the end unless the VM was powered off, or no host that is up still
   * runs a core that has not halted (both crashed; or the test-and-set winner crashed before
   * going live, and the loser halted as it must).
   */
  private livenessExpected(): boolean {
    if (this.options.faults.some((fault) => fault.kind === "powerOff")) return false;
    return this.hostNames.some((name) => {
      const host = this.hosts[name]!;
      const run = host.run;
      return !host.crashed && run !== null && run.core.state !== "halted";
    });
  }
}

function linkKey(a: HostName, b: HostName): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}

export function runWorld(options: WorldOptions): SimResult {
  const world = new World(options);
  try {
    world.run();
    return { seed: options.seed, ok: true, failure: null, stats: world.stats, trace: world.trace };
  } catch (error) {
    if (!(error instanceof SimFailure)) {
      // An assertion inside a core, or a bug in the harness: still a failure with its seed.
      const message = error instanceof Error ? error.message : String(error);
      return { seed: options.seed, ok: false, failure: { code: "EXCEPTION", detail: message }, stats: world.stats, trace: world.trace };
    }
    return {
      seed: options.seed,
      ok: false,
      failure: { code: error.code, detail: error.message },
      stats: world.stats,
      trace: world.trace,
    };
  }
}

/**
 * A trace with each run of consecutive releases by one host folded into one line:
 * "A releases 12 outputs, seq 7..44" (ticks of the first and last), for golden transcripts.
 */
export function summarize(trace: readonly string[]): string[] {
  const out: string[] = [];
  const release = /^\s*(\d+) (\S+) releases output at seq (\d+)( \(alone\))?$/;
  let run: { host: string; from: string; to: string; count: number; first: number; last: number; alone: boolean } | null = null;
  const flush = () => {
    if (run === null) return;
    const seqs = run.count === 1 ? `seq ${run.from}` : `seqs ${run.from}..${run.to}`;
    const ticks = run.first === run.last ? `${run.first}` : `${run.first}-${run.last}`;
    out.push(`${ticks} ${run.host} releases ${run.count} output${run.count === 1 ? "" : "s"}, ${seqs}${run.alone ? " (alone)" : ""}`);
    run = null;
  };
  for (const line of trace) {
    const match = release.exec(line);
    if (match === null) {
      flush();
      out.push(line.trim());
      continue;
    }
    const [, tick, host, seq, alone] = match;
    if (run !== null && (run.host !== host || run.alone !== (alone !== undefined))) flush();
    if (run === null) run = { host: host!, from: seq!, to: seq!, count: 0, first: Number(tick), last: Number(tick), alone: alone !== undefined };
    run.to = seq!;
    run.count++;
    run.last = Number(tick);
  }
  flush();
  return out;
}
