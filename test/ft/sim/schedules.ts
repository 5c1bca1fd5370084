// Random schedules for the simulation: a configuration (timeouts, limits, rates), a network
// and a list of faults, all drawn from the seed. The cores run with the same logic as in
// production but compressed timings (a timeout of a few ticks instead of 100), so that a short
// schedule holds several failures; the protocol does not depend on the scale.

import { Prng } from "./prng.js";
import { type Fault, type HostName, hostNames, SIM_RECORD_BYTES_MAX, type WorldOptions } from "./world.js";

export const FAMILIES = [
  ["calm", 4],
  ["backupCrash", 8],
  ["primaryCrash", 12],
  ["partition", 12],
  ["primaryPause", 10],
  ["backupPause", 8],
  ["arbiterFlap", 8],
  ["powerOff", 6],
  ["slowBackup", 6],
  ["chaos", 26],
] as const;

export type Family = (typeof FAMILIES)[number][0];

const TOTAL_WEIGHT = FAMILIES.reduce((sum, [, weight]) => sum + weight, 0);

export interface Schedule {
  family: Family;
  options: WorldOptions;
}

/**
 * The schedule of `seed`. `overrides.backups` (default 1) sets how many backups the primary
 * has; with more than one, the faults fall on any of them, any subset of them, or the primary
 * and some of them together. One backup draws exactly what it always drew.
 */
export function randomSchedule(seed: number, overrides: Partial<WorldOptions> = {}): Schedule {
  const backups = overrides.backups ?? 1;
  // Its own stream, so that the world's draws do not shift when the schedule's do.
  const rng = new Prng((seed ^ 0x5bd1e995) >>> 0);
  const heartbeatTicks = 1 + rng.below(3);
  const timeoutTicks = heartbeatTicks * (3 + rng.below(4));
  const tasRetryMinTicks = 1 + rng.below(2);
  const tasRetryMaxTicks = tasRetryMinTicks * (2 + rng.below(4));
  const backupBufferRecords = 4 + rng.below(40);
  const recordsPerTickMax = 4;
  // Half the schedules also treat a channel closed past a grace as a failure, as the drivers do.
  const reconnectGraceTicks = rng.chance(0.5) ? 0 : 1 + rng.below(timeoutTicks);
  const common = { heartbeatTicks, timeoutTicks, reconnectGraceTicks, tasRetryMinTicks, tasRetryMaxTicks, recordBytesMax: SIM_RECORD_BYTES_MAX };
  const faultTicks = 150 + rng.below(150);
  const livenessTicks = 80;
  // With several backups a primary may drop them one contest after another.
  const healTicks =
    3 * timeoutTicks + backupBufferRecords + 4 * tasRetryMaxTicks + 40 + livenessTicks + (backups - 1) * (timeoutTicks + 2 * tasRetryMaxTicks);

  let pick = rng.below(TOTAL_WEIGHT);
  let family: Family = "calm";
  for (const [name, weight] of FAMILIES) {
    if (pick < weight) {
      family = name;
      break;
    }
    pick -= weight;
  }
  const faults = familyFaults(rng, family, faultTicks, timeoutTicks, backups);

  const options: WorldOptions = {
    seed,
    faults,
    faultTicks,
    healTicks,
    livenessTicks,
    net: {
      delayTicks: 1 + rng.below(3),
      reorderPermille: rng.chance(0.3) ? 0 : rng.below(200),
      lossPermille: rng.chance(0.3) ? 0 : rng.below(80),
      dupPermille: rng.chance(0.3) ? 0 : rng.below(50),
    },
    recordsPerTickPermille: 500 + rng.below(2500),
    recordsPerTickMax,
    outputPermille: 200 + rng.below(300),
    replayPerTick: 1 + rng.below(5),
    primary: {
      ...common,
      bufferRecordsMax: 6 + rng.below(40),
      bufferBytesMax: 600 + rng.below(4000),
      // The vCPU makes at most recordsPerTickMax records (2 per output) before it sees `stall`.
      stallSlackRecords: recordsPerTickMax,
      stallSlackBytes: recordsPerTickMax * SIM_RECORD_BYTES_MAX,
      heldOutputsMax: 2 + rng.below(20),
      heldOutputsSlack: recordsPerTickMax,
      batchRecordsMax: 1 + rng.below(8),
      batchBytesMax: SIM_RECORD_BYTES_MAX + rng.below(800),
      retransmitTicks: 2 + rng.below(8),
      lagIcountMax: BigInt(5_000 + rng.below(30_000)),
      lagCheckTicks: 1 + rng.below(5),
      cpuShareMinPermille: 100 + rng.below(200),
      cpuShareStepDownPermille: 20 + rng.below(100),
      cpuShareStepUpPermille: 50 + rng.below(150),
    },
    backup: {
      ...common,
      bufferRecordsMax: backupBufferRecords,
      bufferBytesMax: 400 + rng.below(4000),
      windowUpdateRecords: 1 + rng.below(backupBufferRecords),
    },
    // Enough clones to restore every backup of a world twice.
    respawn: rng.chance(0.7) ? { delayTicks: 5 + rng.below(20), max: 2 * backups } : null,
    supersededNoticePermille: rng.chance(0.5) ? 0 : 500,
    arbiterLatencyMaxTicks: 1 + rng.below(3),
    arbiterTimeoutTicks: 2 + rng.below(4),
    bugs: [],
    trace: false,
    ...overrides,
    backups,
  };
  return { family, options };
}

/** The chaos family's kinds of fault that any world has (familyFaultsMany adds one more). */
const CHAOS_CHOICES = 7;

/**
 * The faults every family is made of, each drawn from `rng` in a fixed order (a schedule's
 * seed must give the same faults whichever family function asks), starting within the fault
 * window and lasting some timeouts but ending before the window does.
 */
function faultMaker(rng: Prng, faultTicks: number, timeoutTicks: number) {
  const at = () => 5 + rng.below(faultTicks - 10);
  /** A duration from `min` to `max` timeouts, ending before the faults end. */
  const lasting = (start: number, min: number, max: number) =>
    Math.max(1, Math.min(faultTicks - start, Math.round(timeoutTicks * (min + (max - min) * (rng.below(1000) / 1000)))));
  const partition = (a: HostName, b: HostName, start = at()): Fault => ({ at: start, kind: "partition", a, b, ticks: lasting(start, 0.5, 3), notify: rng.chance(0.5) });
  const pause = (h: HostName, start = at()): Fault => ({ at: start, kind: "pause", host: h, ticks: lasting(start, 0.3, 4) });
  const arbiterDown = (h: HostName, start = at()): Fault => {
    const from = Math.min(start, faultTicks - 1);
    return { at: from, kind: "arbiterDown", host: h, ticks: lasting(from, 1, 5) };
  };
  const slow = (): Fault => {
    const start = at();
    return { at: start, kind: "slowReplay", ticks: lasting(start, 1, 6), perTick: rng.below(2) };
  };
  const guestPause = (): Fault => {
    const start = at();
    return { at: start, kind: "guestPause", ticks: lasting(start, 0.5, 3) };
  };
  /** One chaos fault of kind `choice` (0..CHAOS_CHOICES-1) on hosts drawn by `host`. */
  const chaos = (faults: Fault[], choice: number, host: () => HostName): void => {
    switch (choice) {
      case 0:
        faults.push(partition(host(), host()));
        break;
      case 1:
        faults.push(arbiterDown(host()));
        break;
      case 2:
        if (rng.chance(0.4)) faults.push({ at: at(), kind: "crash", host: host() });
        break;
      case 3:
      case 4:
        faults.push(pause(host()));
        break;
      case 5:
        faults.push(slow());
        break;
      case 6:
        faults.push(guestPause());
        break;
    }
  };
  return { at, partition, pause, arbiterDown, slow, guestPause, chaos };
}

function familyFaults(rng: Prng, family: Family, faultTicks: number, timeoutTicks: number, backups: number): Fault[] {
  if (backups > 1) return familyFaultsMany(rng, family, faultTicks, timeoutTicks, backups);
  const faults: Fault[] = [];
  const make = faultMaker(rng, faultTicks, timeoutTicks);
  const { at, partition, pause, arbiterDown, slow, guestPause } = make;
  const host = (): HostName => rng.pick(["A", "B", "C"] as const);
  switch (family) {
    case "calm":
      break;
    case "backupCrash":
      faults.push({ at: at(), kind: "crash", host: "B" });
      break;
    case "primaryCrash": {
      const start = at();
      faults.push({ at: start, kind: "crash", host: "A" });
      // The backup must wait for the arbiter, never go live without it.
      if (rng.chance(0.4)) faults.push(arbiterDown("B", start + rng.below(2 * timeoutTicks)));
      break;
    }
    case "partition":
      faults.push(partition("A", "B"));
      if (rng.chance(0.3)) faults.push(partition("A", "B"));
      break;
    case "primaryPause":
      faults.push(pause("A"));
      break;
    case "backupPause":
      faults.push(pause("B"));
      break;
    case "arbiterFlap": {
      // A partition between the pair while one or both cannot reach the arbiter either.
      const cut = partition("A", "B");
      faults.push(cut);
      faults.push(arbiterDown("B", cut.at + rng.below(timeoutTicks)));
      if (rng.chance(0.6)) faults.push(arbiterDown("A", cut.at + rng.below(timeoutTicks)));
      break;
    }
    case "powerOff":
      faults.push({ at: at(), kind: "powerOff" });
      if (rng.chance(0.5)) faults.push(rng.chance(0.5) ? partition("A", "B") : { at: at(), kind: "crash", host: host() });
      break;
    case "slowBackup":
      faults.push(slow(), slow());
      break;
    case "chaos": {
      const count = 2 + rng.below(6);
      for (let index = 0; index < count; index++) make.chaos(faults, rng.below(CHAOS_CHOICES), host);
      break;
    }
  }
  // Background noise in every family.
  if (rng.chance(0.3)) faults.push(arbiterDown(host()));
  if (rng.chance(0.15)) faults.push(guestPause());
  if (rng.chance(0.2)) faults.push(slow());
  return faults.filter((fault) => fault.kind !== "partition" || fault.a !== fault.b);
}

/**
 * A schedule for a scripted scenario: only the given faults, a perfect network (one tick of
 * delay, nothing lost, duplicated or reordered), no cluster service, fixed rates.
 */
export function scriptedSchedule(seed: number, faults: Fault[], overrides: Partial<WorldOptions> = {}): WorldOptions {
  const common = { heartbeatTicks: 1, timeoutTicks: 5, tasRetryMinTicks: 1, tasRetryMaxTicks: 4, recordBytesMax: SIM_RECORD_BYTES_MAX };
  return {
    seed,
    faults,
    faultTicks: 100,
    healTicks: 60,
    livenessTicks: 20,
    net: { delayTicks: 1, reorderPermille: 0, lossPermille: 0, dupPermille: 0 },
    recordsPerTickPermille: 1000,
    recordsPerTickMax: 4,
    outputPermille: 500,
    replayPerTick: 2,
    primary: {
      ...common,
      bufferRecordsMax: 32,
      bufferBytesMax: 8192,
      stallSlackRecords: 4,
      stallSlackBytes: 4 * SIM_RECORD_BYTES_MAX,
      heldOutputsMax: 16,
      heldOutputsSlack: 4,
      retransmitTicks: 4,
      lagIcountMax: 1_000_000n,
      lagCheckTicks: 4,
    },
    backup: { ...common, bufferRecordsMax: 64, bufferBytesMax: 16_384, windowUpdateRecords: 16 },
    respawn: null,
    supersededNoticePermille: 0,
    arbiterLatencyMaxTicks: 1,
    arbiterTimeoutTicks: 2,
    bugs: [],
    trace: true,
    ...overrides,
  };
}

/**
 * Faults for a primary with several backups: the families of one backup, where "the backup"
 * is any one of them or a random subset, and the primary's faults may come with some of its
 * backups' (crashed together, cut off together).
 */
function familyFaultsMany(rng: Prng, family: Family, faultTicks: number, timeoutTicks: number, backups: number): Fault[] {
  const faults: Fault[] = [];
  const names = hostNames(backups);
  const backupHosts = names.slice(1, 1 + backups);
  const make = faultMaker(rng, faultTicks, timeoutTicks);
  const { at, partition, pause, arbiterDown, slow, guestPause } = make;
  const host = (): HostName => rng.pick(names);
  const backup = (): HostName => rng.pick(backupHosts);
  /** 1..all of the backups, each at most once. */
  const someBackups = (): HostName[] => {
    const count = 1 + rng.below(backups);
    const pool = [...backupHosts];
    const chosen: HostName[] = [];
    while (chosen.length < count) chosen.push(pool.splice(rng.below(pool.length), 1)[0]!);
    return chosen;
  };
  switch (family) {
    case "calm":
      break;
    case "backupCrash": {
      // One backup, or several at once or one after another: the primary drops each.
      const together = rng.chance(0.5);
      const start = at();
      for (const h of someBackups()) faults.push({ at: together ? start : at(), kind: "crash", host: h });
      break;
    }
    case "primaryCrash": {
      const start = at();
      faults.push({ at: start, kind: "crash", host: "A" });
      // Sometimes a backup dies with it, or just before it (the primary is then renewing), or
      // about a timeout before it: the primary may win its renewal and die before the backups
      // it kept hear of it, which then ask the arbiter on its behalf.
      if (rng.chance(0.4)) faults.push({ at: Math.max(1, start - rng.below(2 * timeoutTicks)), kind: "crash", host: backup() });
      else if (rng.chance(0.5)) faults.push({ at: Math.max(1, start - timeoutTicks - rng.below(4)), kind: "crash", host: backup() });
      // The backups race for the arbiter; some of them cannot reach it for a while.
      if (rng.chance(0.4)) for (const h of someBackups()) faults.push(arbiterDown(h, start + rng.below(2 * timeoutTicks)));
      break;
    }
    case "partition": {
      // The primary cut off from some backups, at once or one after another.
      const together = rng.chance(0.5);
      const start = at();
      for (const h of someBackups()) faults.push(partition("A", h, together ? start : at()));
      if (rng.chance(0.3)) faults.push(partition("A", backup()));
      break;
    }
    case "primaryPause":
      faults.push(pause("A"));
      if (rng.chance(0.3)) faults.push(pause(backup()));
      break;
    case "backupPause": {
      const start = at();
      for (const h of someBackups()) faults.push(pause(h, rng.chance(0.5) ? start : at()));
      break;
    }
    case "arbiterFlap": {
      // Partitions between the primary and some backups while some of them cannot reach the
      // arbiter either: the primary renews, or a cut-off backup wins, or nobody can for a while.
      const start = at();
      for (const h of someBackups()) {
        const cut = partition("A", h, start + rng.below(timeoutTicks));
        faults.push(cut);
        if (rng.chance(0.7)) faults.push(arbiterDown(h, cut.at + rng.below(timeoutTicks)));
      }
      if (rng.chance(0.6)) faults.push(arbiterDown("A", start + rng.below(timeoutTicks)));
      break;
    }
    case "powerOff":
      faults.push({ at: at(), kind: "powerOff" });
      if (rng.chance(0.5)) faults.push(rng.chance(0.5) ? partition("A", backup()) : { at: at(), kind: "crash", host: host() });
      break;
    case "slowBackup":
      faults.push(slow(), slow());
      break;
    case "chaos": {
      const count = 2 + rng.below(6 + backups);
      for (let index = 0; index < count; index++) {
        const choice = rng.below(CHAOS_CHOICES + 1);
        if (choice < CHAOS_CHOICES) {
          make.chaos(faults, choice, host);
        } else {
          // The primary and a backup fail close together.
          const start = at();
          faults.push({ at: start, kind: "crash", host: rng.chance(0.5) ? "A" : backup() });
          faults.push(pause(backup(), Math.min(faultTicks - 2, start + rng.below(timeoutTicks))));
        }
      }
      break;
    }
  }
  if (rng.chance(0.3)) faults.push(arbiterDown(host()));
  if (rng.chance(0.15)) faults.push(guestPause());
  if (rng.chance(0.2)) faults.push(slow());
  return faults.filter((fault) => (fault.kind !== "partition" || fault.a !== fault.b) && fault.at < faultTicks);
}
