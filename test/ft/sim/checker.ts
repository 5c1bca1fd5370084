// The invariants the simulation checks on every schedule (docs/ft-protocol.md, "Simulation").
//
// A history is the sequence of records one execution went through. The first primary's
// history is its log; a backup that goes live continues a copy of the records it received
// (the very same record objects, so histories that share a prefix are recognisably the
// same execution up to where they fork), then its own new records. An output released at
// seq s exposes the history's first s records to the world (its marker record included).
//
// 1. Output Rule (§2.2): a paired primary releases an output at seq s only if EVERY one of
//    its backups holds s records (the sim checks separately that what a backup holds is
//    exactly the primary's records, in order). A primary running alone is exempt: it won the
//    register.
// 2. One execution: every released output agrees with the authoritative history (the one
//    live in the highest generation) on its first s records. A stale primary releasing output
//    that the new primary will not reproduce is split brain. At most one core goes live per
//    generation (a primary that renews counts as going live in it), and only its register's
//    owner.
// 3. Nothing released is lost (Output Requirement, §2.2): when a backup goes live from L
//    records, every output released so far has s ≤ L and lies on that history.
// 4. Power-off (§3.3): once a primary stopped for a PowerOff/End, no higher generation goes
//    live, and a backup that received one never does.
// 5. Liveness: after the faults heal, if some host that is up still runs a core that has
//    not halted, outputs keep being released.

import type { LogRecord } from "../../../protocol/records.js";

export class SimFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SimFailure";
  }
}

export class History {
  private readonly agree = new Map<History, number>();

  constructor(
    readonly generation: number,
    readonly records: LogRecord[] = [],
  ) {}

  /**
   * Length of the common prefix with `other`. Histories only grow and a record is one object,
   * so a cached length stays a lower bound and a mismatch is final.
   */
  commonPrefix(other: History): number {
    if (other === this) return this.records.length;
    let length = this.agree.get(other) ?? 0;
    const end = Math.min(this.records.length, other.records.length);
    while (length < end && this.records[length] === other.records[length]) length++;
    this.agree.set(other, length);
    return length;
  }
}

export class Checker {
  private authoritative: History;
  /** The generation `authoritative` is live in (a history keeps its first generation's number). */
  private authoritativeGeneration: number;
  private longest: { history: History; seq: number; host: string } | null = null;
  private readonly liveByGeneration = new Map<number, string>();
  private endedGeneration: number | null = null;
  lastReleaseTick = -1;
  releases = 0;

  constructor(
    initial: History,
    private readonly log: ((line: string) => void) | null,
  ) {
    this.authoritative = initial;
    this.authoritativeGeneration = initial.generation;
    this.liveByGeneration.set(initial.generation, "A");
  }

  /** Returns whether the release came from a superseded history (legitimately, within the shared prefix). */
  released(host: string, history: History, seq: number, alone: boolean, backupHolds: number | null, tick: number): boolean {
    this.log?.(`${host} releases output at seq ${seq}${alone ? " (alone)" : ""}`);
    if (!alone && (backupHolds === null || backupHolds < seq)) {
      throw new SimFailure(
        "OUTPUT_RULE",
        `${host} released an output at seq ${seq} while its backup held ${backupHolds ?? "nothing"}`,
      );
    }
    if (history.commonPrefix(this.authoritative) < seq) {
      throw new SimFailure(
        "SPLIT_BRAIN",
        `${host} released an output at seq ${seq} of generation-${history.generation} history, which agrees with ` +
          `the live generation-${this.authoritativeGeneration} history only up to ${history.commonPrefix(this.authoritative)}`,
      );
    }
    if (this.longest === null || seq > this.longest.seq) this.longest = { history, seq, host };
    this.lastReleaseTick = tick;
    this.releases++;
    return history !== this.authoritative;
  }

  /** A core went live for `generation` (a backup from `forkLength` records, or a primary alone). */
  wentLive(host: string, generation: number, owner: string | undefined, history: History, forkLength: number | null): void {
    if (owner !== host) {
      throw new SimFailure("LIVE_WITHOUT_TAS", `${host} went live as generation ${generation}; the register's owner is ${owner ?? "nobody"}`);
    }
    const other = this.liveByGeneration.get(generation);
    if (other !== undefined) {
      throw new SimFailure("TWO_LIVE", `${host} and ${other} both went live as generation ${generation}`);
    }
    if (this.endedGeneration !== null && generation > this.endedGeneration) {
      throw new SimFailure("LIVE_AFTER_POWER_OFF", `${host} went live as generation ${generation} after the VM was powered off`);
    }
    this.liveByGeneration.set(generation, host);
    const longest = this.longest;
    // A primary may win a generation after a backup of its has gone live in a later one (the
    // backup asked for it on the primary's behalf first): the later one stays authoritative,
    // and what the primary releases must lie on it (SPLIT_BRAIN above).
    const superseded = generation < this.authoritativeGeneration;
    if (forkLength !== null && longest !== null) {
      if (longest.seq > forkLength || history.commonPrefix(longest.history) < longest.seq) {
        throw new SimFailure(
          "OUTPUT_LOST",
          `${host} went live from ${forkLength} records, but ${longest.host} had released an output at seq ${longest.seq}`,
        );
      }
    }
    if (!superseded) {
      this.authoritative = history;
      this.authoritativeGeneration = generation;
    }
  }

  vmEnded(generation: number): void {
    for (const [live, host] of this.liveByGeneration) {
      if (live > generation) {
        throw new SimFailure("LIVE_AFTER_POWER_OFF", `the VM stopped in generation ${generation}, but ${host} is live as ${live}`);
      }
    }
    if (this.endedGeneration === null || generation < this.endedGeneration) this.endedGeneration = generation;
  }

  checkLiveness(expected: boolean, endTick: number, windowTicks: number): void {
    if (expected && this.lastReleaseTick < endTick - windowTicks) {
      throw new SimFailure(
        "NO_PROGRESS",
        `no output released in the last ${windowTicks} ticks after healing (last at ${this.lastReleaseTick}, end ${endTick})`,
      );
    }
  }
}
