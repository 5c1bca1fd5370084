// More than one backup (`--backups N`, docs/ft-protocol.md "More than one backup"), scripted:
// the primary releases an output only once every backup holds its records, settles the next
// generation at the arbiter to drop a dead backup while keeping the others (`renew`), and a kept
// backup whose primary dies before telling it asks the arbiter on the primary's behalf first.

import { describe, expect, it } from "vitest";
import { BackupCore } from "../../host/ft/backup.js";
import type { BackupOptions, PrimaryOptions } from "../../host/ft/config.js";
import { PrimaryCore } from "../../host/ft/primary.js";
import { ControlKind } from "../../protocol/records.js";
import { ack, control, entries, heartbeat, rec, recs, renew, showBackup, showPrimary, ticks, VM, SCRIPT_BACKUP_OPTIONS, SCRIPT_PRIMARY_OPTIONS } from "./helpers.js";

function primary(overrides: Partial<PrimaryOptions> = {}): PrimaryCore {
  const core = new PrimaryCore({ ...SCRIPT_PRIMARY_OPTIONS, backups: ["b1", "b2"], ...overrides });
  for (const id of core.backupIds) core.channelUp(id);
  expect(showPrimary(core.ready())).toBe(core.backupIds.map((id) => `${id}: hello primary g1`).join(" | "));
  return core;
}

function backup(overrides: Partial<BackupOptions> = {}): BackupCore {
  const core = new BackupCore({ ...SCRIPT_BACKUP_OPTIONS, ...overrides });
  core.channelUp();
  core.ready();
  return core;
}

function after(core: PrimaryCore | BackupCore, events: () => void = () => undefined): string {
  events();
  return core instanceof PrimaryCore ? showPrimary(core.ready()) : showBackup(core.ready());
}

describe("PrimaryCore with several backups: the Output Rule (§2.2)", () => {
  it("an output leaves once EVERY backup holds the records before it; the buffer is trimmed at the slowest", () => {
    const core = primary();
    core.receive(ack(0), "b1");
    core.receive(ack(0), "b2");
    core.append(recs(0, 4));
    core.output(1, 2n);
    core.output(2, 4n);
    expect(after(core)).toBe("b1: entries 0..3 | b2: entries 0..3");
    expect(after(core, () => core.receive(ack(4), "b1"))).toBe("");
    expect(core.position()).toMatchObject({ ackedSeq: 0n, sentSeq: 4n });
    expect(after(core, () => core.receive(ack(2), "b2"))).toBe("release 1");
    expect(core.position().ackedSeq).toBe(2n);
    expect(after(core, () => core.receive(ack(4), "b2"))).toBe("release 2");
    expect(core.ready().unackedRecords).toBe(0);
  });

  it("each backup has its own window and resends; lag is the worst backup's", () => {
    const core = primary({ batchRecordsMax: 8 });
    core.append(recs(0, 6));
    core.receive(ack(0, { windowEndSeq: 2n }), "b1");
    core.receive(ack(0, { windowEndSeq: 5n }), "b2");
    expect(after(core)).toBe("b1: entries 0..1 | b2: entries 0..4");
    core.receive(ack(2, { windowEndSeq: 6n, replayedSeq: 2n, replayedIcount: 2000n }), "b1");
    core.receive(ack(5, { replayedSeq: 5n, replayedIcount: 5000n }), "b2");
    expect(after(core)).toBe("b1: entries 2..5 | b2: entries 5");
    // The primary stands at icount 6000: b1 has replayed to 2000, b2 to 5000.
    expect(core.ready().lagIcount).toBe(4000n);
    expect(core.backupProgress().map((b) => `${b.id} acked ${b.ackedSeq} lag ${b.lagIcount}`)).toEqual(["b1 acked 2 lag 4000", "b2 acked 5 lag 1000"]);
    // b2's connection drops: only b2 starts over from what it acked.
    core.channelDown("b2");
    core.channelUp("b2");
    expect(after(core)).toBe("b2: hello primary g1 | b2: entries 5");
  });

  it("a backup added while paired (pair) holds the snapshot; outputs after it wait for it too", () => {
    const core = primary({ backups: ["b1"] });
    core.receive(ack(0), "b1");
    core.append(recs(0, 2));
    core.output(1, 2n);
    expect(after(core)).toBe("b1: entries 0..1");
    expect(after(core, () => core.receive(ack(2), "b1"))).toBe("release 1");
    core.pair("b2");
    core.append([rec(2)]);
    core.output(2, 3n);
    expect(after(core)).toBe("b1: entries 2");
    expect(after(core, () => core.receive(ack(3), "b1"))).toBe("");
    core.channelUp("b2");
    expect(after(core, () => core.receive(ack(2, { windowEndSeq: 10n }), "b2"))).toBe("b2: hello primary g1 | b2: entries 2");
    expect(after(core, () => core.receive(ack(3), "b2"))).toBe("release 2");
    expect(() => core.pair("b2")).toThrow(/b2 is a backup already/);
    expect(() => new PrimaryCore({ vmId: VM, generation: 1, hostId: "A", backups: ["x", "x"] })).toThrow(/backup ids differ/);
  });

  it("power-off: stops once every backup holds the PowerOff entry", () => {
    const core = primary();
    core.receive(ack(0), "b1");
    core.receive(ack(0), "b2");
    core.append([rec(0), control(1, ControlKind.PowerOff)]);
    expect(after(core)).toBe("b1: entries 0..1 | b2: entries 0..1");
    expect(after(core, () => core.receive(ack(2), "b1"))).toBe("");
    expect(after(core, () => core.receive(ack(2), "b2"))).toBe("halt powerOff | stall");
  });
});

describe("PrimaryCore with several backups: one of them fails (renew)", () => {
  it("drops the dead backup by winning generation + 1, keeping the others; holds every output until it won", () => {
    const core = primary({ heartbeatTicks: 5, retransmitTicks: 50 });
    core.append(recs(0, 2));
    core.output(1, 2n);
    core.receive(ack(0), "b1");
    core.receive(ack(0), "b2");
    expect(after(core)).toBe("b1: entries 0..1 | b2: entries 0..1");
    // b2 falls silent; b1 keeps acking.
    const lines = ticks(10, () => after(core, () => {
      core.tick();
      core.receive(ack(Number(core.nextSeq)), "b1");
    }));
    // Output 1 waits for b2, which never acks it.
    expect(lines).toEqual(["5: b1: heartbeat g1 | b2: heartbeat g1", "10: b1: renew g2 by A | b1: heartbeat g1 | dropped b2 | testAndSet g2 by A"]);
    expect(core.state).toBe("renewing");
    expect(core.backupIds).toEqual(["b1"]);
    // The VM runs on; b1 gets and acks the records, but nothing leaves: b2 may be contending.
    core.append(recs(2, 4));
    core.output(2, 4n);
    expect(after(core)).toBe("b1: entries 2..3");
    expect(after(core, () => core.receive(ack(4), "b1"))).toBe("");
    expect(after(core, () => core.testAndSetResult("won"))).toBe("renewed g2 | release 1,2");
    expect(core.state).toBe("paired");
    expect(core.generation).toBe(2);
    // b1 still speaks generation 1: it gets a renew before anything of generation 2...
    core.append([rec(4)]);
    expect(after(core)).toBe("b1: renew g2 by A | b1: entries 4");
    core.append([rec(5)]);
    expect(after(core)).toBe("b1: renew g2 by A | b1: entries 5");
    // ...until it acks in generation 2. Its acks of generation 1 counted all along.
    expect(after(core, () => core.receive(ack(6, { generation: 2 }), "b1"))).toBe("");
    core.append([rec(6)]);
    core.output(3, 7n);
    expect(after(core)).toBe("b1: entries 6");
    expect(after(core, () => core.receive(ack(7, { generation: 2 }), "b1"))).toBe("release 3");
    // The dropped backup's late messages are ignored; one of a later generation supersedes.
    expect(after(core, () => core.receive(ack(7), "b2"))).toBe("");
    expect(core.stats.renewals).toBe(1);
  });

  it("a backup that falls silent during the contest stays in its set, and is dropped by the next one", () => {
    const core = primary();
    core.append(recs(0, 2));
    core.output(1, 2n);
    core.receive(ack(2), "b1");
    core.receive(ack(2), "b2");
    core.ready();
    core.pair("b3");
    core.channelUp("b3");
    core.ready();
    core.backupLost("b3");
    expect(after(core)).toBe("b1: renew g2 by A | b2: renew g2 by A | dropped b3 | testAndSet g2 by A");
    core.backupLost("b2");
    expect(core.backupProgress().map((b) => `${b.id}${b.lost ? " lost" : ""}`)).toEqual(["b1", "b2 lost"]);
    // Won: what every backup of generation 2 acked leaves, then b2 goes in a second contest.
    // Won: b2 goes in a second contest at once.
    expect(after(core, () => core.testAndSetResult("won"))).toBe("b1: renew g3 by A | renewed g2 | dropped b2 | testAndSet g3 by A");
    expect(after(core, () => core.testAndSetResult("won"))).toBe("renewed g3");
    expect(core.backupIds).toEqual(["b1"]);
    expect(core.generation).toBe(3);
  });

  it("every backup dead: goes alone as with one backup; losing the contest halts", () => {
    const alone = primary();
    alone.backupLost();
    expect(after(alone)).toBe("dropped b1,b2 | testAndSet g2 by A");
    expect(after(alone, () => alone.testAndSetResult("won"))).toBe("goAlone g2");
    const loser = primary();
    loser.append(recs(0, 1));
    loser.output(1, 1n);
    loser.backupLost("b1");
    expect(after(loser)).toBe("b2: renew g2 by A | dropped b1 | testAndSet g2 by A");
    // b1 won generation 2: it is live, and what b2 alone acked never leaves here.
    loser.receive(ack(1), "b2");
    expect(after(loser, () => loser.testAndSetResult("lost"))).toBe("halt lostTestAndSet | stall");
  });

  it("a renew lost with its connection is sent again after the hello, and once per heartbeat", () => {
    const core = primary({ heartbeatTicks: 3 });
    core.backupLost("b2");
    core.ready();
    core.channelDown("b1");
    core.channelUp("b1");
    expect(after(core)).toBe("b1: hello primary g1 | b1: renew g2 by A");
    const lines = ticks(3, () => after(core, () => {
      core.tick();
      core.receive(ack(0), "b1");
    }));
    expect(lines).toEqual(["3: b1: renew g2 by A | b1: heartbeat g1"]);
  });
});

describe("BackupCore with a primary that renews", () => {
  it("a renew prepares it; the first other message of that generation makes it its own", () => {
    const core = backup();
    core.receive(entries(recs(0, 2)));
    expect(after(core)).toBe("deliver 0..1 | ack 2 window 8 replayed 0");
    expect(after(core, () => core.receive(renew(2)))).toBe("");
    expect(core.generation).toBe(1);
    expect(core.preparedGeneration).toBe(2);
    // The primary is still contending: generation 1 goes on.
    expect(after(core, () => core.receive(entries([rec(2)])))).toBe("deliver 2 | ack 3 window 8 replayed 0");
    // It won: generation 2 from now on, acks too.
    expect(after(core, () => core.receive(entries([rec(3)], 2)))).toBe("deliver 3 | ack 4 window 8 replayed 0");
    expect(core.generation).toBe(2);
    expect(core.preparedGeneration).toBeNull();
    expect(core.ready().messages).toEqual([]);
    core.tick();
    core.tick();
    expect(core.ready().messages).toMatchObject([{ t: "ack", generation: 2 }]);
    // A renew it has already taken changes nothing; a notice of its own generation neither.
    core.receive(renew(2));
    core.generationSuperseded(2);
    expect(core.state).toBe("replaying");
  });

  it("without a renew, a message of a later generation means it was dropped: it halts (a hello is let by)", () => {
    const core = backup();
    expect(after(core, () => core.receive({ t: "hello", vmId: VM, generation: 2, role: "primary" }))).toBe("");
    expect(core.state).toBe("replaying");
    expect(after(core, () => core.receive(heartbeat(2)))).toBe("halt superseded");
    const prepared = backup();
    prepared.receive(renew(2));
    expect(after(prepared, () => prepared.receive(heartbeat(3)))).toBe("halt superseded");
  });

  it("prepared, its primary silent: asks for the prepared generation on the primary's behalf, then for the next as itself", () => {
    const core = backup();
    core.receive(entries(recs(0, 3)));
    core.receive(renew(2, "A"));
    core.ready();
    core.replayed(3n, 3000n);
    core.ready();
    const lines = ticks(11, () => after(core, () => core.tick()));
    expect(lines.at(-1)).toBe("10: finishReplay | testAndSet g2 by A");
    // Won: A owns generation 2 (or does now, so the backup it dropped never can), and this
    // backup is one of A's there. It contends for generation 3 as itself.
    expect(after(core, () => core.testAndSetResult("won"))).toBe("testAndSet g3 by B");
    expect(core.generation).toBe(2);
    core.testAndSetResult("unreachable");
    expect(ticks(2, () => after(core, () => core.tick()))).toEqual(["2: testAndSet g3 by B"]);
    expect(after(core, () => core.testAndSetResult("won"))).toBe("goLive g3 at 3 icount 3000");
  });

  it("prepared, the contest on the primary's behalf lost: the dropped backup is live; it halts", () => {
    const core = backup();
    core.receive(renew(2, "A"));
    core.ready();
    core.primaryLost();
    expect(after(core)).toBe("finishReplay | testAndSet g2 by A");
    // A notice that generation 2 is live is no news (it may be A's); one of 3 is.
    core.generationSuperseded(2);
    expect(core.state).toBe("testAndSet");
    expect(after(core, () => core.testAndSetResult("lost"))).toBe("halt lostTestAndSet");
    const noticed = backup();
    noticed.receive(renew(2, "A"));
    noticed.generationSuperseded(3);
    expect(noticed.state).toBe("halted");
  });

  it("not prepared: contends for the next generation as itself, exactly as with one backup", () => {
    const core = backup();
    core.primaryLost();
    expect(after(core)).toBe("finishReplay | testAndSet g2 by B");
    expect(after(core, () => core.testAndSetResult("won"))).toBe("goLive g2 at 0 icount 0");
  });
});
