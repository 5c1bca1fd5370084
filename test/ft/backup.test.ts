// BackupCore, scripted: events in, one line per Ready out (section numbers of vm-ft-paper.md).

import { describe, expect, it } from "vitest";
import { BackupCore } from "../../host/ft/backup.js";
import type { BackupOptions } from "../../host/ft/config.js";
import { encodedRecordBytes } from "../../protocol/codec.js";
import { ControlKind, RecordKind } from "../../protocol/records.js";
import { control, entries, heartbeat, rec, recs, showBackup, ticks, VM, SCRIPT_BACKUP_OPTIONS } from "./helpers.js";

function backup(overrides: Partial<BackupOptions> = {}): BackupCore {
  const core = new BackupCore({ ...SCRIPT_BACKUP_OPTIONS, ...overrides });
  core.channelUp();
  expect(showBackup(core.ready())).toMatch(/^hello backup g1 \| ack 0 window \d+ replayed 0$/);
  return core;
}

function after(core: BackupCore, events: () => void = () => undefined): string {
  events();
  return showBackup(core.ready());
}

describe("BackupCore: receiving (§3.2)", () => {
  it("acknowledges each batch as soon as it is in the buffer, before replaying it", () => {
    const core = backup();
    expect(after(core, () => core.receive(entries(recs(0, 3))))).toBe("deliver 0..2 | ack 3 window 8 replayed 0");
    expect(after(core, () => core.receive(entries(recs(3, 5))))).toBe("deliver 3..4 | ack 5 window 8 replayed 0");
    // Replay progress is reported on the next tick (lag figures), or at once when it opens
    // windowUpdateRecords of window.
    expect(after(core, () => core.replayed(1n, 1000n))).toBe("");
    expect(after(core, () => core.tick())).toBe("ack 5 window 9 replayed 1");
    expect(after(core, () => core.replayed(5n, 5000n))).toBe("ack 5 window 13 replayed 5");
    expect(core.position()).toEqual({ receivedSeq: 5n, replayedSeq: 5n, replayedIcount: 5000n, bufferBytes: 0 });
  });

  it("drops duplicates and acks again; asks for a resend at a gap, once per position per heartbeat interval", () => {
    const core = backup();
    core.receive(entries(recs(0, 2)));
    core.ready();
    // A duplicate (the ack of the first copy may have been lost): re-acked, not re-delivered.
    expect(after(core, () => core.receive(entries(recs(0, 2))))).toBe("ack 2 window 8 replayed 0");
    // Overlapping: only the new part is taken.
    expect(after(core, () => core.receive(entries(recs(1, 4))))).toBe("deliver 2..3 | ack 4 window 8 replayed 0");
    // A gap: 4 is missing.
    expect(after(core, () => core.receive(entries(recs(5, 7))))).toBe("ack 4 window 8 replayed 0 resend");
    expect(after(core, () => core.receive(entries(recs(6, 7))))).toBe("ack 4 window 8 replayed 0");
    expect(after(core, () => core.tick())).toBe("");
    expect(after(core, () => core.tick())).toBe("ack 4 window 8 replayed 0");
    // The resend may have been lost too: after a heartbeat interval the gap is reported again.
    expect(after(core, () => core.receive(entries(recs(5, 7))))).toBe("ack 4 window 8 replayed 0 resend");
    expect(after(core, () => core.receive(entries(recs(4, 7))))).toBe("deliver 4..6 | ack 7 window 8 replayed 0");
    expect(core.stats).toMatchObject({ duplicates: 3, gaps: 3 });
  });

  it("bounds its buffer: advertises a window, drops what would overflow it by count or bytes", () => {
    const bytes = encodedRecordBytes(rec(0));
    const core = backup({ bufferRecordsMax: 4, bufferBytesMax: 3 * bytes, recordBytesMax: bytes, windowUpdateRecords: 2 });
    // Three fit by bytes; the fourth and fifth are dropped, not acked: the primary resends them.
    expect(after(core, () => core.receive(entries(recs(0, 5))))).toBe("deliver 0..2 | ack 3 window 4 replayed 0");
    expect(core.stats.dropped).toBe(2);
    expect(after(core, () => core.replayed(1n, 1000n))).toBe("");
    expect(after(core, () => core.receive(entries(recs(3, 6))))).toBe("deliver 3 | ack 4 window 5 replayed 1");
    expect(after(core, () => core.replayed(4n, 4000n))).toBe("ack 4 window 8 replayed 4");
    expect(after(core, () => core.receive(entries(recs(4, 9))))).toBe("deliver 4..6 | ack 7 window 8 replayed 4");
  });

  it("sends an ack as its heartbeat when idle", () => {
    const core = backup({ heartbeatTicks: 3 });
    expect(ticks(7, () => after(core, () => {
      core.tick();
      core.receive(heartbeat());
    }))).toEqual(["3: ack 0 window 8 replayed 0", "6: ack 0 window 8 replayed 0"]);
  });

  it("asserts that the vCPU replays only what was delivered", () => {
    const core = backup();
    core.receive(entries(recs(0, 3)));
    expect(() => core.replayed(1n, 1000n)).toThrow(/≤ the records delivered/);
    core.ready();
    core.replayed(2n, 2000n);
    expect(() => core.replayed(1n, 2000n)).toThrow(/never goes back/);
    expect(() => core.replayed(3n, 1000n)).toThrow(/icount never decreases/);
  });
});

describe("BackupCore: the primary fails (§2.3)", () => {
  it("replays every record it received, then wins the test-and-set for generation + 1 and goes live there", () => {
    const core = backup();
    core.receive(entries(recs(0, 6)));
    core.ready();
    core.replayed(2n, 2000n);
    // Heartbeat acks every 2 ticks, progress ack on the first; then the timeout at 10.
    expect(ticks(10, () => after(core, () => core.tick()))).toEqual([
      "1: ack 6 window 10 replayed 2",
      "3: ack 6 window 10 replayed 2",
      "5: ack 6 window 10 replayed 2",
      "7: ack 6 window 10 replayed 2",
      "9: ack 6 window 10 replayed 2",
      "10: finishReplay",
    ]);
    // Declared: it takes nothing more from the old primary and acks nothing more (FAQ).
    expect(after(core, () => core.receive(entries(recs(6, 8))))).toBe("");
    expect(after(core, () => core.receive(heartbeat()))).toBe("");
    expect(after(core, () => core.replayed(5n, 5000n))).toBe("");
    expect(core.state).toBe("finishingReplay");
    expect(after(core, () => core.replayed(6n, 6000n))).toBe("testAndSet g2 by B");
    expect(after(core, () => core.testAndSetResult("won"))).toBe("goLive g2 at 6 icount 6000");
    expect(core.state).toBe("live");
    // Done: the driver now runs a PrimaryCore; this core ignores everything.
    core.tick();
    core.receive(entries(recs(6, 8)));
    expect(after(core)).toBe("");
  });

  it("waits firstContactTicks for its primary's first message, then timeoutTicks", () => {
    const core = backup({ firstContactTicks: 30 });
    // No primary yet: the ordinary timeout (10) passes without a failure.
    for (let i = 0; i < 29; i++) core.tick();
    expect(core.state).toBe("replaying");
    core.receive(heartbeat());
    for (let i = 0; i < 9; i++) core.tick();
    expect(core.state).toBe("replaying");
    core.tick();
    // Nothing to replay: it contends at once.
    expect(core.state).toBe("testAndSet");

    // Never contacted at all: it declares the primary failed at firstContactTicks.
    const lonely = backup({ firstContactTicks: 30 });
    for (let i = 0; i < 29; i++) lonely.tick();
    expect(lonely.state).toBe("replaying");
    lonely.tick();
    expect(lonely.state).toBe("testAndSet");
  });

  it("a channel closed past reconnectGraceTicks after the primary spoke is a failure; a reconnect in time is not", () => {
    const core = backup({ reconnectGraceTicks: 3 });
    // Closed before any primary spoke: only the (first-contact) timeout decides.
    core.channelDown();
    for (let i = 0; i < 5; i++) core.tick();
    expect(core.state).toBe("replaying");
    core.channelUp();
    core.receive(heartbeat());
    core.channelDown();
    core.tick();
    core.tick();
    core.channelUp();
    core.tick();
    expect(core.state).toBe("replaying");
    core.channelDown();
    core.tick();
    core.tick();
    expect(core.state).toBe("replaying");
    core.tick();
    expect(core.state).toBe("testAndSet");
  });

  it("contends at once when it has already replayed everything", () => {
    const core = backup();
    core.receive(entries(recs(0, 2)));
    core.ready();
    core.replayed(2n, 2000n);
    core.primaryLost();
    expect(after(core)).toBe("finishReplay | testAndSet g2 by B");
  });

  it("never goes live without the register: retries an unreachable arbiter, capped backoff; halts if it lost", () => {
    const core = backup();
    core.primaryLost();
    expect(after(core)).toBe("finishReplay | testAndSet g2 by B");
    core.testAndSetResult("unreachable");
    const lines: string[] = [];
    for (let tick = 1; tick <= 40; tick++) {
      core.tick();
      const line = after(core);
      if (line === "") continue;
      lines.push(`${tick}: ${line}`);
      if (line.includes("testAndSet")) core.testAndSetResult(tick < 30 ? "unreachable" : "lost");
    }
    expect(lines).toEqual([
      "2: testAndSet g2 by B",
      "6: testAndSet g2 by B",
      "14: testAndSet g2 by B",
      "22: testAndSet g2 by B",
      "30: testAndSet g2 by B",
      "31: halt lostTestAndSet",
    ]);
    expect(core.haltReason).toBe("lostTestAndSet");
  });

  it("halts when told a higher generation is live, by a message or a notice; and when replay diverged", () => {
    const byMessage = backup();
    expect(after(byMessage, () => byMessage.receive(heartbeat(2)))).toBe("halt superseded");
    const byNotice = backup();
    byNotice.primaryLost();
    byNotice.ready();
    byNotice.generationSuperseded(2);
    expect(after(byNotice)).toBe("halt superseded");
    expect(() => byNotice.testAndSetResult("won")).not.toThrow(); // a late answer is ignored
    const diverged = backup();
    expect(after(diverged, () => diverged.diverged())).toBe("halt diverged");
    expect(after(diverged, () => diverged.tick())).toBe("");
  });
});

describe("BackupCore: control entries (§3.3)", () => {
  it("power-off: acks the entry so the primary can stop, then stops; never goes live", () => {
    const core = backup();
    expect(after(core, () => core.receive(entries([rec(0), control(1, ControlKind.PowerOff), rec(2)])))).toBe(
      "deliver 0..1 | ack 2 window 8 replayed 0 | halt powerOff",
    );
    expect(ticks(30, () => after(core, () => core.tick()))).toEqual([]);
    expect(core.state).toBe("halted");
  });

  it("an End record stops it the same way; pause and resume pass through to the vCPU", () => {
    const core = backup();
    core.receive(entries([control(0, ControlKind.Pause)]));
    expect(core.primaryPaused).toBe(true);
    core.receive(entries([control(1, ControlKind.Resume)]));
    expect(core.primaryPaused).toBe(false);
    expect(after(core)).toBe("deliver 0..1 | ack 2 window 8 replayed 0");
    expect(after(core, () => core.receive(entries([rec(2, { kind: RecordKind.End })])))).toBe(
      "deliver 2 | ack 3 window 8 replayed 0 | halt end",
    );
  });
});

describe("BackupCore: what it refuses", () => {
  it("drops batches that are not dense, messages for another VM, a hello from a backup: handled, counted", () => {
    const core = backup();
    core.receive(entries([rec(0), rec(2)]));
    core.receive(entries([]));
    core.receive({ ...entries(recs(0, 1)), vmId: "other" });
    core.receive({ t: "hello", vmId: VM, generation: 1, role: "backup" });
    // Stale generation: ignored without complaint.
    core.receive({ t: "heartbeat", vmId: VM, generation: 0 });
    expect(after(core)).toBe("error BAD_BATCH | error BAD_BATCH | error WRONG_VM | error WRONG_ROLE");
    expect(core.stats.protocolErrors).toBe(4);
  });

  it("asserts illegal transitions", () => {
    const core = backup();
    expect(() => core.testAndSetResult("won")).toThrow(/only while contending/);
  });
});
