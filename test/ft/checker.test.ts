// The simulation's checker must be able to fail: each deliberate bug below breaks one rule of
// the protocol, and the simulation has to catch it, naming the rule, within a bounded number
// of seeds. A checker that never fails proves nothing.

import { describe, expect, it } from "vitest";
import { randomSchedule } from "./sim/schedules.js";
import { type Bug, runWorld } from "./sim/world.js";

const SEEDS_MAX = 1000;

/** Runs seeds until the bug is caught; returns the first failure and how many seeds it took. */
function hunt(bug: Bug, backups = 1): { seed: number; code: string; detail: string; codes: Set<string> } {
  const codes = new Set<string>();
  for (let seed = 1; seed <= SEEDS_MAX; seed++) {
    const result = runWorld(randomSchedule(seed, { bugs: [bug], backups }).options);
    if (result.failure !== null) {
      codes.add(result.failure.code);
      return { seed, ...result.failure, codes };
    }
  }
  throw new Error(`bug ${bug} survived ${SEEDS_MAX} schedules`);
}

describe("the simulation catches a broken protocol", () => {
  it("an output released before its records are acknowledged: the Output Rule (§2.2)", () => {
    const caught = hunt("releaseBeforeAck");
    expect(caught.code, `seed=${caught.seed}: ${caught.detail}`).toBe("OUTPUT_RULE");
  });

  it("a backup that acks what it has not received: the Output Rule", () => {
    const caught = hunt("ackAhead");
    expect(caught.code, `seed=${caught.seed}: ${caught.detail}`).toBe("OUTPUT_RULE");
  });

  it("going live without the arbiter: one live primary per generation (§2.3)", () => {
    const caught = hunt("skipTestAndSet");
    expect(caught.code, `seed=${caught.seed}: ${caught.detail}`).toBe("LIVE_WITHOUT_TAS");
  });

  it("a failover that drops received, unreplayed records: a released output is lost (§2.2, §2.3)", () => {
    const caught = hunt("discardUnreplayed");
    expect(caught.code, `seed=${caught.seed}: ${caught.detail}`).toBe("OUTPUT_LOST");
  });

  it("a primary that releases on suspicion, before it won the register: split brain", () => {
    const caught = hunt("releaseOnSuspicion");
    expect(["SPLIT_BRAIN", "OUTPUT_LOST"], `seed=${caught.seed}: ${caught.detail}`).toContain(caught.code);
  });

  it("several backups: one backup's acks counted for all of them: the Output Rule", () => {
    const caught = hunt("ackOneForAll", 2);
    expect(caught.code, `seed=${caught.seed}: ${caught.detail}`).toBe("OUTPUT_RULE");
  });

  it("several backups: a renewed backup that contends for the generation after without asking on its primary's behalf", () => {
    // Its primary may have lost that generation to the backup it dropped, which is live.
    const caught = hunt("skipOnBehalf", 2);
    expect(["SPLIT_BRAIN", "OUTPUT_LOST", "TWO_LIVE"], `seed=${caught.seed}: ${caught.detail}`).toContain(caught.code);
  });

  it("several backups: the classic bugs are caught too", () => {
    expect(hunt("releaseBeforeAck", 3).code).toBe("OUTPUT_RULE");
    expect(hunt("skipTestAndSet", 3).code).toBe("LIVE_WITHOUT_TAS");
    // A backup gone live without some released output: lost, or contradicted by a later release.
    expect(["OUTPUT_LOST", "SPLIT_BRAIN"]).toContain(hunt("discardUnreplayed", 3).code);
  });

  it("a schedule is a pure function of its seed", () => {
    const run = () => runWorld(randomSchedule(77, { trace: true }).options);
    const first = run();
    const second = run();
    expect(second.trace).toEqual(first.trace);
    expect(second.stats).toEqual(first.stats);
    expect(first.trace.length).toBeGreaterThan(10);
  });
});
