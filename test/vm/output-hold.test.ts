// The VM's hooks for the Output Rule and for a full log buffer: every output waits for its
// release, after the log records that precede it; a stalled vCPU produces nothing more.

import { setTimeout as delay } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import type { LogRecord } from "../../protocol/records.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine } from "../../host/vm/machine.js";

describe("output hold and stall", () => {
  it("no output leaves before it is released, and each comes after the records before it", async () => {
    const records: LogRecord[] = [];
    const held: { seq: number; release: () => void; recordsSeen: number }[] = [];
    let console = "";
    let enough: () => void;
    const threeHeld = new Promise<void>((resolve) => (enough = resolve));
    const machine = new Machine({
      mode: "record",
      module: loadGuest("counter").module,
      onRecords: (batch) => records.push(...batch),
      onConsole: (text) => (console += Buffer.from(text).toString()),
      holdOutput: (seq, release) => {
        held.push({ seq, release, recordsSeen: records.length });
        if (held.length === 3) enough();
      },
    });
    await threeHeld;
    expect(console).toBe("");
    for (const output of held) {
      expect(output.seq).toBeGreaterThan(0);
      expect(output.recordsSeen).toBeGreaterThanOrEqual(output.seq);
    }
    for (const output of held.splice(0, 3)) output.release();
    expect(console).toMatch(/^counter start .*\ntick 1 .*\ntick 2 .*\n$/);
    machine.stop();
    expect((await machine.done).stop).toBe("stopped");
  });

  it("a stalled vCPU posts no records until the stall is lifted", async () => {
    const records: LogRecord[] = [];
    let stalledAt: (seq: number) => void;
    const stalled = new Promise<number>((resolve) => (stalledAt = resolve));
    let more: () => void = () => undefined;
    const machine = new Machine({
      mode: "record",
      module: loadGuest("counter").module,
      onRecords: (batch) => {
        records.push(...batch);
        more();
      },
      onStalled: (seq) => stalledAt(seq),
    });
    machine.setStall(true);
    const seq = await stalled;
    const countAtStall = records.length;
    expect(countAtStall).toBe(seq);
    // An observation window for a negative claim: at 100 Hz, a running counter would log
    // about 60 records in it.
    await delay(200);
    expect(records.length).toBe(countAtStall);
    const resumed = new Promise<void>((resolve) => (more = resolve));
    machine.setStall(false);
    await resumed;
    expect(records.length).toBeGreaterThan(countAtStall);
    machine.stop();
    expect((await machine.done).stop).toBe("stopped");
  });
});
