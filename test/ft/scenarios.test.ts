// Failure scenarios, scripted, with golden transcripts: the whole world (both cores, their
// vCPUs, a perfect one-tick network, the arbiter) under one chosen fault, checked by the same
// invariants as the random simulation. Timings: heartbeat every tick, timeout 5 ticks, the
// vCPU makes about one record per tick and an output after every other record.
//
// A transcript line is "tick host what"; consecutive releases by one host are folded into one
// line. If a change alters a transcript, read the new one before accepting it: the order of
// events is the protocol.

import { describe, expect, it } from "vitest";
import { scriptedSchedule } from "./sim/schedules.js";
import { type Fault, runWorld, summarize, type WorldOptions } from "./sim/world.js";

function transcript(faults: Fault[], overrides: Partial<WorldOptions> = {}): string[] {
  const result = runWorld(scriptedSchedule(1, faults, overrides));
  expect(result.failure).toBeNull();
  return summarize(result.trace);
}

const START = ["0 A primary gen 1 paired at seq 0", "0 B backup gen 1 of A at seq 0", "3-29 A releases 9 outputs, seqs 2..37"];

describe("FT scenarios (§2.3, §3.3)", () => {
  it("the backup dies: the primary wins the register for generation 2 and goes alone, releasing what it held", () => {
    expect(transcript([{ at: 30, kind: "crash", host: "B" }])).toEqual([
      ...START,
      "30 B crashes",
      // An ack that was already on its way still counts.
      "30 A releases 1 output, seq 39",
      // Silence for the 5-tick timeout, counted from the last ack.
      "34 A asks the arbiter for generation 2",
      "35 A test-and-set answer: won",
      "35 A goes alone as generation 2",
      "35-159 A releases 68 outputs, seqs 43..238 (alone)",
    ]);
  });

  it("the primary dies: the backup replays every record it received, then wins and goes live", () => {
    // Replay stalls from tick 10 to 35, so the backup is 30 records behind when A dies.
    const faults: Fault[] = [
      { at: 10, kind: "slowReplay", ticks: 25, perTick: 0 },
      { at: 30, kind: "crash", host: "A" },
    ];
    expect(transcript(faults)).toEqual([
      "0 A primary gen 1 paired at seq 0",
      "0 B backup gen 1 of A at seq 0",
      "3-9 A releases 2 outputs, seqs 2..10",
      "10 replay slows to 0/tick for 25",
      // The Output Rule needs the backup to hold the records, not to have replayed them.
      "12-29 A releases 7 outputs, seqs 14..37",
      "30 A crashes",
      "34 B declares the primary failed: finishing replay",
      // 15 ticks of replay at 2 records per tick before it may contend.
      "49 B asks the arbiter for generation 2",
      "50 B test-and-set answer: won",
      // From all 40 records it holds: every output A released (up to seq 37) is in its past.
      "50 B goes live as generation 2 at seq 40",
      "50 B primary gen 2 alone at seq 40",
      "52-159 B releases 60 outputs, seqs 44..210 (alone)",
    ]);
  });

  it("a partition: both declare the other failed and race for the register; exactly one goes live", () => {
    expect(transcript([{ at: 30, kind: "partition", a: "A", b: "B", ticks: 40, notify: false }])).toEqual([
      ...START,
      "30 partition A|B for 40",
      "33 A asks the arbiter for generation 2",
      "33 B declares the primary failed: finishing replay",
      "33 B asks the arbiter for generation 2",
      "34 A test-and-set answer: won",
      "34 A goes alone as generation 2",
      "34 A releases 3 outputs, seqs 39..47 (alone)",
      "34 B test-and-set answer: lost",
      "34 B backup halts: lostTestAndSet",
      "35-157 A releases 65 outputs, seqs 49..235 (alone)",
    ]);
  });

  it("the same race when the primary cannot reach the arbiter: the backup wins, the primary halts", () => {
    const faults: Fault[] = [
      { at: 30, kind: "partition", a: "A", b: "B", ticks: 40, notify: true },
      { at: 30, kind: "arbiterDown", host: "A", ticks: 12 },
    ];
    expect(transcript(faults)).toEqual([
      ...START,
      "30 partition A|B for 40",
      "30 A cannot reach the arbiter for 12",
      "33 A asks the arbiter for generation 2",
      "33 B declares the primary failed: finishing replay",
      "33 B asks the arbiter for generation 2",
      "34 B test-and-set answer: won",
      "34 B goes live as generation 2 at seq 39",
      "34 B primary gen 2 alone at seq 39",
      "35 A test-and-set answer: unreachable",
      "35 A asks the arbiter for generation 2",
      // A holds its outputs all along: it has neither acks nor the register.
      "35-36 B releases 2 outputs, seqs 42..44 (alone)",
      "37 A test-and-set answer: unreachable",
      "38 A asks the arbiter for generation 2",
      "39-40 B releases 2 outputs, seqs 48..50 (alone)",
      "40 A test-and-set answer: unreachable",
      "41-43 B releases 3 outputs, seqs 52..56 (alone)",
      "43 A asks the arbiter for generation 2",
      "44 B releases 1 output, seq 58 (alone)",
      "44 A test-and-set answer: lost",
      "44 A primary halts: lostTestAndSet",
      "45-159 B releases 63 outputs, seqs 60..236 (alone)",
    ]);
  });

  it("the arbiter is unreachable: nobody goes live until it answers (§2.3: it just waits)", () => {
    const faults: Fault[] = [
      { at: 30, kind: "crash", host: "A" },
      { at: 30, kind: "arbiterDown", host: "B", ticks: 30 },
    ];
    expect(transcript(faults)).toEqual([
      ...START,
      "30 A crashes",
      "30 B cannot reach the arbiter for 30",
      "34 B declares the primary failed: finishing replay",
      "34 B asks the arbiter for generation 2",
      // Each attempt times out after 2 ticks; then a backoff of 1, 2, 4, 4... ticks.
      "36 B test-and-set answer: unreachable",
      "36 B asks the arbiter for generation 2",
      "38 B test-and-set answer: unreachable",
      "39 B asks the arbiter for generation 2",
      "41 B test-and-set answer: unreachable",
      "44 B asks the arbiter for generation 2",
      "46 B test-and-set answer: unreachable",
      "49 B asks the arbiter for generation 2",
      "51 B test-and-set answer: unreachable",
      "54 B asks the arbiter for generation 2",
      "56 B test-and-set answer: unreachable",
      "59 B asks the arbiter for generation 2",
      "61 B test-and-set answer: unreachable",
      "64 B asks the arbiter for generation 2",
      "65 B test-and-set answer: won",
      "65 B goes live as generation 2 at seq 40",
      "65 B primary gen 2 alone at seq 40",
      "68-158 B releases 50 outputs, seqs 45..184 (alone)",
    ]);
  });

  it("power-off (§3.3): the backup stops at the PowerOff entry and never goes live, though the primary dies", () => {
    expect(transcript([{ at: 30, kind: "powerOff" }, { at: 34, kind: "crash", host: "A" }])).toEqual([
      ...START,
      "30 operator: powerOff on A",
      "30 A releases 1 output, seq 39",
      "31 B backup halts: powerOff",
      // The primary stops once the backup holds the entry.
      "32 A primary halts: powerOff",
      "34 A crashes",
    ]);
  });

  it("power-off cut off by a partition does not take: the backup never got the entry, wins, and lives on", () => {
    const faults: Fault[] = [
      { at: 30, kind: "powerOff" },
      { at: 30, kind: "partition", a: "A", b: "B", ticks: 20, notify: false },
    ];
    expect(transcript(faults)).toEqual([
      ...START,
      "30 operator: powerOff on A",
      "30 partition A|B for 20",
      "33 B declares the primary failed: finishing replay",
      "33 B asks the arbiter for generation 2",
      "33 A asks the arbiter for generation 2",
      // A power-off is done only when the primary halts with reason powerOff.
      "34 A test-and-set answer: lost",
      "34 A primary halts: lostTestAndSet",
      "34 B test-and-set answer: won",
      "34 B goes live as generation 2 at seq 39",
      "34 B primary gen 2 alone at seq 39",
      "34-156 B releases 66 outputs, seqs 41..228 (alone)",
    ]);
  });

  it("a stale primary, paused past the timeout, releases nothing the new primary will not reproduce, then halts", () => {
    expect(transcript([{ at: 30, kind: "pause", host: "A", ticks: 20 }])).toEqual([
      ...START,
      "30 A pauses for 20",
      "34 B declares the primary failed: finishing replay",
      "34 B asks the arbiter for generation 2",
      "35 B test-and-set answer: won",
      "35 B goes live as generation 2 at seq 40",
      "35 B primary gen 2 alone at seq 40",
      "35-46 B releases 7 outputs, seqs 42..59 (alone)",
      // A resumes: an ack B sent before it went live (records < 40) releases seq 39, which
      // B's execution contains. Nothing later can ever be acknowledged.
      "50 A releases 1 output, seq 39",
      "51-53 B releases 3 outputs, seqs 65..69 (alone)",
      "54 A asks the arbiter for generation 2",
      "55 A test-and-set answer: lost",
      "55 A primary halts: lostTestAndSet",
      "57-159 B releases 53 outputs, seqs 74..228 (alone)",
    ]);
  });
});

describe("FT scenarios with two backups (--backups 2)", () => {
  const two = { backups: 2 };
  const START2 = ["0 A primary gen 1 paired at seq 0", "0 B backup gen 1 of A at seq 0", "0 C backup gen 1 of A at seq 0", "3-28 A releases 17 outputs, seqs 2..44"];

  it("a backup dies: the primary wins generation 2 keeping the other, which takes it; outputs wait only for the contest", () => {
    expect(transcript([{ at: 30, kind: "crash", host: "C" }], two)).toEqual([
      ...START2,
      "30 C crashes",
      "34 A drops its backup on C",
      // B keeps acking all along, but nothing leaves until A holds generation 2: C might be
      // alive and cut off, contending for it with fewer records than B acked.
      "34 A asks the arbiter for generation 2",
      "35 A test-and-set answer: won",
      "35 A renews as generation 2 with B",
      "35 A releases 4 outputs, seqs 48..54",
      "36 B backup takes generation 2",
      "36-156 A releases 59 outputs, seqs 57..235",
    ]);
  });

  it("the primary dies: both backups race for generation 2; one goes live, the other halts", () => {
    expect(transcript([{ at: 30, kind: "crash", host: "A" }], two)).toEqual([
      ...START2,
      "30 A crashes",
      "34 B declares the primary failed: finishing replay",
      "34 B asks the arbiter for generation 2",
      "34 C declares the primary failed: finishing replay",
      "34 C asks the arbiter for generation 2",
      "35 C test-and-set answer: lost",
      "35 C backup halts: lostTestAndSet",
      // Every output A released was acked by both: whichever wins has it.
      "35 B test-and-set answer: won",
      "35 B goes live as generation 2 at seq 48",
      "35 B primary gen 2 alone at seq 48",
      "35-158 B releases 67 outputs, seqs 50..239 (alone)",
    ]);
  });

  it("the primary wins its renewal and dies before saying so: the kept backup asks on its behalf, then goes live as generation 3", () => {
    const faults: Fault[] = [
      { at: 30, kind: "crash", host: "C" },
      { at: 35, kind: "crash", host: "A" },
    ];
    expect(transcript(faults, two)).toEqual([
      ...START2,
      "30 C crashes",
      "34 A drops its backup on C",
      "34 A asks the arbiter for generation 2",
      // The answer (won) arrives at a dead host.
      "35 A crashes",
      "39 B declares the primary failed: finishing replay",
      // B got A's renew for generation 2. It does not know whether A won it: it asks for it as
      // A. Won: A (or now B, in A's name) holds it, so C can never go live with it, and B is
      // one of A's backups in generation 2.
      "39 B asks the arbiter for generation 2 for A",
      "40 B test-and-set answer: won",
      "40 B backup takes generation 2",
      "40 B asks the arbiter for generation 3",
      "41 B test-and-set answer: won",
      "41 B goes live as generation 3 at seq 57",
      "41 B primary gen 3 alone at seq 57",
      "44-158 B releases 60 outputs, seqs 62..235 (alone)",
    ]);
  });

  it("the primary cut off from one backup, which wins: the primary halts, and so does the backup it kept", () => {
    expect(transcript([{ at: 30, kind: "partition", a: "A", b: "C", ticks: 30, notify: false }], two)).toEqual([
      ...START2,
      "30 partition A|C for 30",
      "33 C declares the primary failed: finishing replay",
      "33 C asks the arbiter for generation 2",
      "33 A drops its backup on C",
      "33 A asks the arbiter for generation 2",
      "34 A test-and-set answer: lost",
      "34 A primary halts: lostTestAndSet",
      // C holds everything A released: A held every output while it contended.
      "34 C test-and-set answer: won",
      "34 C goes live as generation 2 at seq 46",
      "34 C primary gen 2 alone at seq 46",
      "34-37 C releases 3 outputs, seqs 48..53 (alone)",
      // B was kept by A's contest, which A lost: asking on A's behalf, B learns somebody else
      // is live, and halts. (The cluster service clones new backups for C.)
      "38 B declares the primary failed: finishing replay",
      "38 B asks the arbiter for generation 2 for A",
      "39 B test-and-set answer: lost",
      "39 B backup halts: lostTestAndSet",
      "42-159 C releases 62 outputs, seqs 59..237 (alone)",
    ]);
  });
});
