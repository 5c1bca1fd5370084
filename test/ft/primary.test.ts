// PrimaryCore, scripted: each test feeds events and compares the Readys, one line each, with
// the transcript the paper's protocol calls for (section numbers of vm-ft-paper.md).

import { describe, expect, it } from "vitest";
import type { PrimaryOptions } from "../../host/ft/config.js";
import { PrimaryCore } from "../../host/ft/primary.js";
import { encodedRecordBytes } from "../../protocol/codec.js";
import { ControlKind, RecordKind } from "../../protocol/records.js";
import { ack, control, rec, recs, showPrimary, ticks, VM, SCRIPT_PRIMARY_OPTIONS } from "./helpers.js";

function primary(overrides: Partial<PrimaryOptions> = {}): PrimaryCore {
  const core = new PrimaryCore({ ...SCRIPT_PRIMARY_OPTIONS, ...overrides });
  core.channelUp();
  expect(showPrimary(core.ready())).toBe("hello primary g1");
  return core;
}

/** Step: the core's Ready after `events`, as a line. */
function after(core: PrimaryCore, events: () => void = () => undefined): string {
  events();
  return showPrimary(core.ready());
}

describe("PrimaryCore: the Output Rule (§2.2)", () => {
  it("an output waits for the ack of every record before it; the VM runs on meanwhile", () => {
    const core = primary();
    // Nothing is sent before the backup has opened its window.
    expect(after(core, () => core.append(recs(0, 3)))).toBe("");
    expect(after(core, () => core.receive(ack(0)))).toBe("entries 0..2");
    expect(after(core, () => core.output(1, 3n))).toBe("");
    expect(after(core, () => {
      core.append([rec(3)]);
      core.output(2, 4n);
      core.append(recs(4, 6));
    })).toBe("entries 3..5");
    expect(after(core, () => core.receive(ack(2)))).toBe("");
    expect(after(core, () => core.receive(ack(3)))).toBe("release 1");
    expect(after(core, () => core.receive(ack(6)))).toBe("release 2");
    expect(core.stats.outputsReleased).toBe(2);
  });

  it("an output whose records are all acknowledged leaves at once, in order behind held ones", () => {
    const core = primary();
    core.receive(ack(0));
    core.append(recs(0, 4));
    core.output(1, 0n); // before any record: nothing to wait for
    core.output(2, 2n);
    core.output(3, 2n);
    expect(after(core)).toBe("entries 0..3 | release 1");
    expect(after(core, () => core.receive(ack(4)))).toBe("release 2,3");
    expect(after(core, () => core.output(4, 4n))).toBe("release 4");
  });

  it("asserts on a broken stream from its own vCPU", () => {
    const core = primary();
    core.append(recs(0, 2));
    expect(() => core.append([rec(3)])).toThrow(/seq 3 continues at 2/);
    expect(() => core.output(1, 3n)).toThrow(/output seq 3 ≤ appended 2/);
    core.output(1, 2n);
    expect(() => core.output(2, 1n)).toThrow(/never decrease/);
    expect(() => core.append([rec(2, { icount: 5n })])).toThrow(/icount never decreases/);
  });

  it("stale, reordered and duplicated acks change nothing", () => {
    const core = primary();
    core.append(recs(0, 4));
    core.output(1, 4n);
    core.receive(ack(0));
    core.ready();
    core.receive(ack(4));
    core.receive(ack(2));
    core.receive(ack(4));
    expect(after(core)).toBe("release 1");
    expect(core.position()).toMatchObject({ ackedSeq: 4n, sentSeq: 4n });
  });
});

describe("PrimaryCore: the logging channel (§3.2)", () => {
  it("sends only inside the backup's window, in batches bounded by records and bytes", () => {
    const core = primary({ batchRecordsMax: 3, batchBytesMax: 2 * encodedRecordBytes(rec(0)) });
    core.append(recs(0, 10));
    expect(after(core, () => core.receive(ack(0, { windowEndSeq: 5n })))).toBe("entries 0..1 | entries 2..3 | entries 4");
    // A smaller window from a reordered ack does not shrink it.
    expect(after(core, () => core.receive(ack(0, { windowEndSeq: 3n })))).toBe("");
    expect(after(core, () => core.receive(ack(5, { windowEndSeq: 8n })))).toBe("entries 5..6 | entries 7");
  });

  it("stalls the vCPU when the buffer of unacknowledged records is full, by count or by bytes", () => {
    const bytes = encodedRecordBytes(rec(0));
    const small = { recordBytesMax: bytes, stallSlackBytes: 1 << 20 };
    const core = primary({ ...small, bufferRecordsMax: 4, stallSlackRecords: 2, bufferBytesMax: 1 << 20 });
    core.receive(ack(0));
    expect(after(core, () => core.append(recs(0, 3)))).toBe("entries 0..2");
    expect(after(core, () => core.append([rec(3)]))).toBe("entries 3 | stall");
    // The vCPU notices late: up to the slack is accepted, more is the driver's bug.
    expect(after(core, () => core.append(recs(4, 6)))).toBe("entries 4..5 | stall");
    expect(() => core.append([rec(6)])).toThrow(/at most 6 entries/);
    expect(after(core, () => core.receive(ack(3)))).toBe("");

    const byBytes = primary({ ...small, bufferBytesMax: 3 * bytes + 1 });
    byBytes.append(recs(0, 3));
    expect(after(byBytes)).toBe("");
    byBytes.append([rec(3)]);
    expect(byBytes.ready()).toMatchObject({ stall: true, unackedRecords: 4, unackedBytes: 4 * bytes });
  });

  it("stalls when too many outputs are held", () => {
    const core = primary({ heldOutputsMax: 2, heldOutputsSlack: 1 });
    core.append(recs(0, 3));
    core.output(1, 1n);
    expect(after(core)).toBe("");
    core.output(2, 2n);
    expect(after(core)).toBe("stall");
    core.output(3, 3n);
    expect(() => core.output(4, 3n)).toThrow(/at most 3 entries/);
    expect(after(core, () => core.receive(ack(2)))).toBe("entries 2 | release 1,2");
  });

  it("resends from the last acknowledged seq: on reconnect, on a resend request, after the retransmit timeout", () => {
    const core = primary({ retransmitTicks: 3, timeoutTicks: 50, heartbeatTicks: 10 });
    core.receive(ack(0));
    core.append(recs(0, 6));
    expect(after(core)).toBe("entries 0..5");
    core.receive(ack(2));
    // The connection drops; nothing is sent while it is down; everything from 2 on reconnect.
    core.channelDown();
    core.append([rec(6)]);
    expect(after(core)).toBe("");
    core.channelUp();
    expect(after(core)).toBe("hello primary g1 | entries 2..6");
    // The backup saw a gap after 4.
    core.receive(ack(4, { resend: true }));
    expect(after(core)).toBe("entries 4..6");
    // A stale resend request is ignored.
    core.receive(ack(3, { resend: true }));
    expect(after(core)).toBe("");
    // No ack progress for retransmitTicks: go back.
    expect(ticks(4, () => after(core, () => core.tick()))).toEqual(["3: entries 4..6"]);
    expect(core.stats.retransmits).toBe(2);
  });

  it("sends a heartbeat when it has sent nothing else for a heartbeat interval", () => {
    const core = primary({ heartbeatTicks: 3 });
    core.receive(ack(0));
    expect(ticks(7, () => after(core, () => {
      core.tick();
      core.receive(ack(Number(core.nextSeq)));
    }))).toEqual(["3: heartbeat g1", "6: heartbeat g1"]);
    core.tick();
    core.append([rec(0)]);
    expect(after(core, () => core.tick())).toBe("entries 0");
    expect(after(core, () => core.tick())).toBe("");
  });

  it("lag control: lowers the CPU share step by step while the backup lags, raises it as it catches up", () => {
    const core = primary({
      lagIcountMax: 10_000n,
      lagCheckTicks: 2,
      cpuShareMinPermille: 900,
      cpuShareStepDownPermille: 40,
      cpuShareStepUpPermille: 30,
      timeoutTicks: 100,
      heartbeatTicks: 50,
    });
    core.receive(ack(0));
    core.append(recs(0, 30)); // icount 30 000
    core.ready();
    const at = (replayed: number) => ack(30, { replayedSeq: BigInt(replayed), replayedIcount: BigInt(replayed * 1000) });
    core.receive(at(5)); // lag 25 000 > 10 000
    expect(ticks(8, () => after(core, () => core.tick()))).toEqual([
      "2: share 0.96",
      "3: share 0.96",
      "4: share 0.92",
      "5: share 0.92",
      "6: share 0.90",
      "7: share 0.90",
      "8: share 0.90",
    ]);
    expect(core.ready().lagIcount).toBe(25_000n);
    core.receive(at(22)); // lag 8 000: under the limit, not under half of it: hold
    expect(ticks(2, () => after(core, () => core.tick()))).toEqual(["1: share 0.90", "2: share 0.90"]);
    core.receive(at(30)); // caught up
    expect(ticks(6, () => after(core, () => core.tick()))).toEqual(["1: share 0.90", "2: share 0.93", "3: share 0.93", "4: share 0.96", "5: share 0.96", "6: share 0.99"]);
    expect(ticks(2, () => after(core, () => core.tick()))).toEqual(["1: share 0.99"]);
  });
});

describe("PrimaryCore: the backup fails (§2.3)", () => {
  it("goes alone only after winning the test-and-set for generation + 1; then releases everything held", () => {
    const core = primary();
    core.receive(ack(0));
    core.append(recs(0, 3));
    core.output(1, 1n);
    core.output(2, 3n);
    expect(after(core)).toBe("entries 0..2");
    core.receive(ack(1));
    expect(after(core)).toBe("release 1");
    // The backup goes silent: heartbeats, then the timeout (10 ticks after the last ack).
    expect(ticks(10, () => after(core, () => core.tick()))).toEqual([
      "2: heartbeat g1",
      "4: heartbeat g1",
      "5: entries 1..2", // retransmitTicks without an ack
      "7: heartbeat g1",
      "9: heartbeat g1",
      "10: dropped backup | testAndSet g2 by A",
    ]);
    expect(core.state).toBe("goingAlone");
    // The VM keeps running; its outputs wait; an ack now counts for nothing: the register decides.
    core.append([rec(3)]);
    core.output(3, 4n);
    core.receive(ack(4));
    expect(after(core)).toBe("");
    expect(after(core, () => core.testAndSetResult("won"))).toBe("goAlone g2 | release 2,3");
    expect(core.state).toBe("alone");
    expect(core.generation).toBe(2);
    // Alone: outputs leave at once, nothing is sent, acks of generation 1 are stale.
    core.append([rec(4)]);
    expect(after(core, () => core.output(4, 5n))).toBe("release 4");
    expect(after(core, () => core.receive(ack(5)))).toBe("");
    expect(ticks(20, () => after(core, () => core.tick()))).toEqual([]);
  });

  it("a channel closed past reconnectGraceTicks is a failure, well before the timeout; a reconnect in time is not", () => {
    const core = primary({ reconnectGraceTicks: 3 });
    core.receive(ack(0));
    core.channelDown();
    core.tick();
    core.tick();
    // Back within the grace: nothing happens, and the grace starts again at the next close.
    core.channelUp();
    core.ready();
    core.tick();
    core.channelDown();
    expect(ticks(3, () => after(core, () => core.tick()))).toEqual(["3: dropped backup | testAndSet g2 by A"]);
    expect(core.state).toBe("goingAlone");

    // Before the channel was ever up, a close is not a failure: only the timeout decides.
    const fresh = new PrimaryCore({ vmId: VM, generation: 1, hostId: "A", heartbeatTicks: 2, timeoutTicks: 10, reconnectGraceTicks: 3 });
    for (let i = 0; i < 9; i++) fresh.tick();
    expect(fresh.state).toBe("paired");
    fresh.tick();
    expect(fresh.state).toBe("goingAlone");
  });

  it("retries an unreachable arbiter with a doubling backoff, capped, holding output all along", () => {
    const core = primary();
    core.append(recs(0, 1));
    core.output(1, 1n);
    core.backupLost();
    expect(after(core)).toBe("dropped backup | testAndSet g2 by A");
    core.testAndSetResult("unreachable");
    const lines: string[] = [];
    for (let tick = 1; tick <= 40; tick++) {
      core.tick();
      const line = after(core);
      if (line === "") continue;
      lines.push(`${tick}: ${line}`);
      if (line.includes("testAndSet")) core.testAndSetResult(tick < 30 ? "unreachable" : "won");
    }
    expect(lines).toEqual([
      "2: testAndSet g2 by A",
      "6: testAndSet g2 by A",
      "14: testAndSet g2 by A",
      "22: testAndSet g2 by A",
      "30: testAndSet g2 by A",
      "31: goAlone g2 | release 1",
    ]);
  });

  it("halts when it loses the test-and-set; what it held never leaves", () => {
    const core = primary();
    core.append(recs(0, 2));
    core.output(1, 2n);
    core.backupLost();
    expect(after(core)).toBe("dropped backup | testAndSet g2 by A");
    expect(after(core, () => core.testAndSetResult("lost"))).toBe("halt lostTestAndSet | stall");
    expect(core.haltReason).toBe("lostTestAndSet");
    // Everything after a halt is ignored (the vCPU may still have been running).
    core.append([rec(2)]);
    core.output(2, 3n);
    core.receive(ack(3));
    core.tick();
    expect(after(core)).toBe("stall");
  });

  it("a stale primary halts on learning of a higher generation, from a peer or from a notice", () => {
    const fromPeer = primary();
    fromPeer.append(recs(0, 2));
    fromPeer.output(1, 2n);
    expect(after(fromPeer, () => fromPeer.receive(ack(2, { generation: 2 })))).toBe("halt superseded | stall");
    const fromNotice = primary();
    fromNotice.generationSuperseded(1);
    expect(after(fromNotice)).toBe("");
    fromNotice.generationSuperseded(2);
    expect(after(fromNotice)).toBe("halt superseded | stall");
  });

  it("pairs with a new backup cloned at its current position (§3.1), same generation", () => {
    const core = new PrimaryCore({ vmId: VM, generation: 2, hostId: "B", mode: "alone", startSeq: 10n, startIcount: 11_000n });
    core.append([rec(10)]);
    expect(after(core, () => core.output(1, 11n))).toBe("release 1");
    core.pair();
    core.channelUp();
    core.append([rec(11)]);
    core.output(2, 12n);
    expect(after(core)).toBe("hello primary g2");
    // An ack below where this backup began cannot be its own.
    expect(after(core, () => core.receive(ack(3, { generation: 2 })))).toBe("error BAD_ACK");
    expect(after(core, () => core.receive(ack(11, { generation: 2 })))).toBe("entries 11");
    expect(after(core, () => core.receive(ack(12, { generation: 2 })))).toBe("release 2");
    expect(() => core.pair()).toThrow(/backup is a backup already/);
  });
});

describe("PrimaryCore: control entries (§3.3)", () => {
  it("power-off: stops once the backup holds the PowerOff entry, so that it will not go live", () => {
    const core = primary();
    core.receive(ack(0));
    core.append([rec(0), control(1, ControlKind.PowerOff)]);
    expect(after(core)).toBe("entries 0..1");
    expect(() => core.append([rec(2)])).toThrow(/no record after a PowerOff/);
    expect(after(core, () => core.receive(ack(1)))).toBe("");
    expect(after(core, () => core.receive(ack(2)))).toBe("halt powerOff | stall");
  });

  it("power-off while the backup is silent: wins the register first, so nobody can go live after it", () => {
    const core = primary();
    core.append([control(0, ControlKind.PowerOff)]);
    core.backupLost();
    expect(after(core)).toBe("dropped backup | testAndSet g2 by A");
    expect(after(core, () => core.testAndSetResult("won"))).toBe("goAlone g2 | halt powerOff | stall");
  });

  it("a VM running alone stops at its End record at once; pause and resume just flow", () => {
    const core = new PrimaryCore({ vmId: VM, generation: 3, hostId: "C", mode: "alone" });
    core.append([control(0, ControlKind.Pause)]);
    expect(core.guestPaused).toBe(true);
    core.append([control(1, ControlKind.Resume)]);
    expect(core.guestPaused).toBe(false);
    expect(after(core, () => core.append([rec(2, { kind: RecordKind.End })]))).toBe("halt end | stall");
  });
});

describe("PrimaryCore: what it refuses", () => {
  it("drops messages for another VM, acks beyond its log, hellos from a primary: handled, counted", () => {
    const core = primary();
    core.append(recs(0, 2));
    core.receive(ack(1, { vmId: "other" }));
    core.receive(ack(5));
    core.receive(ack(2, { replayedSeq: 3n }));
    core.receive({ t: "hello", vmId: VM, generation: 1, role: "primary" });
    expect(after(core)).toBe("error WRONG_VM | error BAD_ACK | error BAD_ACK | error WRONG_ROLE");
    expect(core.stats.protocolErrors).toBe(4);
    expect(core.position().ackedSeq).toBe(0n);
  });

  it("asserts illegal transitions and configurations", () => {
    const core = primary();
    expect(() => core.testAndSetResult("won")).toThrow(/only while going alone or renewing/);
    core.backupLost();
    core.testAndSetResult("unreachable");
    expect(() => core.testAndSetResult("won")).toThrow(/answers an outstanding request/);
    expect(() => new PrimaryCore({ vmId: VM, generation: 0, hostId: "A" })).toThrow(/generation ≥ 1/);
    expect(() => new PrimaryCore({ vmId: VM, generation: 1, hostId: "A", heartbeatTicks: 10, timeoutTicks: 15 })).toThrow(
      /timeoutTicks ≥ 2 × heartbeatTicks/,
    );
  });
});
