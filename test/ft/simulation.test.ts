// Seeded simulation of the FT protocol cores (docs/ft-protocol.md, "Simulation"): thousands of
// random schedules of loss, duplication, reordering, partitions, crashes, pauses past the
// timeout, an unreachable arbiter, slow replay, operator pause and power-off. Every schedule
// checks the Output Rule, one execution, no lost output, one live primary per generation,
// power-off, and progress after healing (test/ft/sim/checker.ts).
//
// The same with two and three backups (`--backups N`): the faults then fall on any subset of
// the backups, or on the primary together with some of them.
//
// A failure prints `seed=N` (and `backups=B` with several); rerun just that schedule, with its
// trace, with
//   LOCKSTEP_SEED=N [LOCKSTEP_BACKUPS=B] npx vitest run test/ft/simulation.test.ts
// LOCKSTEP_SCHEDULES=N runs more (or fewer) schedules of one backup, and half as many of two
// and a quarter as many of three.

import { describe, expect, it } from "vitest";
import { FAMILIES, randomSchedule } from "./sim/schedules.js";
import { runWorld, type SimStats, summarize } from "./sim/world.js";

const SCHEDULES = Number(process.env["LOCKSTEP_SCHEDULES"] ?? 2000);
const ONE_SEED = process.env["LOCKSTEP_SEED"];
const ONE_BACKUPS = Number(process.env["LOCKSTEP_BACKUPS"] ?? 1);
/** Seeds start here; bump it to explore new schedules (CI always runs the same ones). */
const FIRST_SEED = 1;

describe("FT protocol simulation", () => {
  if (ONE_SEED !== undefined) {
    it(`seed=${ONE_SEED}`, () => {
      const seed = Number(ONE_SEED) >>> 0;
      const schedule = randomSchedule(seed, { trace: true, backups: ONE_BACKUPS });
      const result = runWorld(schedule.options);
      const { faults, net, primary, backup } = schedule.options;
      console.log(
        `seed=${seed} backups=${ONE_BACKUPS} family=${schedule.family}\nfaults ${JSON.stringify(faults)}\nnet ${JSON.stringify(net)}\n` +
          `primary ${JSON.stringify(primary, (_, value) => (typeof value === "bigint" ? String(value) : value))}\n` +
          `backup ${JSON.stringify(backup)}\n${summarize(result.trace).join("\n")}\n` +
          `${result.failure === null ? "ok" : `${result.failure.code}: ${result.failure.detail}`}`,
      );
      expect(result.failure, `seed=${seed}`).toBeNull();
    });
    return;
  }

  it(`${SCHEDULES} random schedules keep every invariant`, () => {
    const { failures, families, total } = runMany(SCHEDULES, 1);
    expect(failures, failures.slice(0, 20).join("\n")).toEqual([]);
    // The mix must actually exercise what it claims to.
    expect(Object.keys(families).length).toBe(FAMILIES.length);
    expect(total["goLive"]).toBeGreaterThan(SCHEDULES / 20);
    expect(total["goAlone"]).toBeGreaterThan(SCHEDULES / 20);
    expect(total["halts.lostTestAndSet"]).toBeGreaterThan(SCHEDULES / 20);
    expect(total["tasUnreachable"]).toBeGreaterThan(SCHEDULES / 20);
    expect(total["messagesDuplicated"]).toBeGreaterThan(0);
  });

  for (const [backups, schedules] of [
    [2, Math.ceil(SCHEDULES / 2)],
    [3, Math.ceil(SCHEDULES / 4)],
  ] as const) {
    it(`${schedules} random schedules with ${backups} backups keep every invariant`, () => {
      const { failures, families, total } = runMany(schedules, backups);
      expect(failures, failures.slice(0, 20).join("\n")).toEqual([]);
      expect(Object.keys(families).length).toBe(FAMILIES.length);
      // Every road of the protocol with several backups is taken: a primary drops a backup and
      // keeps the others; a kept backup takes the new generation; a backup asks the arbiter on
      // its dead primary's behalf, and sometimes wins it (its primary had won, then died);
      // backups race each other for a dead primary's generation.
      expect(total["renewed"]).toBeGreaterThan(schedules / 10);
      expect(total["renewsAdopted"]).toBeGreaterThan(schedules / 10);
      expect(total["tasOnBehalf"]).toBeGreaterThan(schedules / 50);
      expect(total["tasOnBehalfWon"]).toBeGreaterThan(0);
      expect(total["goLive"]).toBeGreaterThan(schedules / 20);
      expect(total["halts.lostTestAndSet"]).toBeGreaterThan(schedules / 10);
    });
  }
});

/** Runs `count` seeds from FIRST_SEED with `backups` backups; returns failures and totals. */
function runMany(count: number, backups: number): { failures: string[]; families: Record<string, number>; total: Record<string, number> } {
  const started = performance.now();
  const failures: string[] = [];
  const total: Record<string, number> = {};
  const families: Record<string, number> = {};
  const add = (key: string, value: number) => (total[key] = (total[key] ?? 0) + value);
  for (let seed = FIRST_SEED; seed < FIRST_SEED + count; seed++) {
    const schedule = randomSchedule(seed, { backups });
    const result = runWorld(schedule.options);
    families[schedule.family] = (families[schedule.family] ?? 0) + 1;
    for (const [key, value] of Object.entries(result.stats) as [keyof SimStats, SimStats[keyof SimStats]][]) {
      if (typeof value === "number") add(key, value);
      else for (const [inner, count] of Object.entries(value)) add(`${key}.${inner}`, count);
    }
    if (result.failure !== null) {
      const many = backups > 1 ? ` backups=${backups}` : "";
      failures.push(`seed=${seed}${many} (${schedule.family}) ${result.failure.code}: ${result.failure.detail}`);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `${count} schedules with ${backups} backup${backups === 1 ? "" : "s"} in ${seconds.toFixed(1)} s (${Math.round(count / seconds)}/s)\n` +
      `families: ${JSON.stringify(families)}\ntotals: ${JSON.stringify(total)}`,
  );
  return { failures, families, total };
}
