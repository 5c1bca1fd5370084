// A snapshot requested while the guest computes (the cpu guest's main never idles): the vCPU
// takes it at the next loop-header checkpoint by unwinding the Wasm stack with asyncify, and
// goes on. The primary's own run must be unchanged by it, and a VM restored from it and fed
// the primary's log from snapshot.seq must reach exactly the same end (docs/snapshots.md).

import { describe, expect, it } from "vitest";
import type { LogRecord } from "../../protocol/records.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine, recordsSource } from "../../host/vm/machine.js";
import type { VmSnapshot } from "../../host/vm/snapshot.js";

/** Generous for a 2-core box shared with other work; the benchmark has the real figures. */
const PAUSE_MS_MAX = 250;

function lastLine(text: string): string {
  const lines = text.trimEnd().split("\n");
  return lines[lines.length - 1]!;
}

describe("snapshot in the middle of an export", () => {
  it("cpu: a snapshot taken inside main restores into a VM that replays to the same end", async () => {
    const loaded = loadGuest("cpu");
    const records: LogRecord[] = [];
    let primaryConsole = "";
    let snapshot: VmSnapshot | null = null;
    let recordsAtSnapshot = -1;
    let requested = false;
    const primary = new Machine({
      mode: "record",
      module: loaded.module,
      onRecords: (batch) => records.push(...batch),
      onConsole: (text) => {
        primaryConsole += Buffer.from(text).toString("utf8");
        // The first workload's line: main is running, and runs for a long while yet.
        if (!requested) {
          requested = true;
          primary.snapshot((taken) => {
            snapshot = taken;
            recordsAtSnapshot = records.length;
          });
        }
      },
    });
    const recorded = await primary.done;
    expect(recorded.stop, recorded.message ?? "").toBe("exit");
    expect(lastLine(primaryConsole)).toMatch(/^checksum [0-9a-f]{16}$/);

    expect(snapshot).not.toBeNull();
    const taken = snapshot as unknown as VmSnapshot;
    // Taken inside main, not at an idle point (main's end is the first idle point).
    expect(taken.stack?.export).toBe("main");
    expect(taken.stack!.data.length).toBeGreaterThan(0);
    expect(taken.icount).toBeLessThan(recorded.icount);
    // Every record before seq reached onRecords before the snapshot, and none after.
    expect(recordsAtSnapshot).toBe(taken.seq);
    expect(taken.pauseMs).toBeDefined();
    expect(taken.pauseMs!).toBeLessThan(PAUSE_MS_MAX);

    let restoredConsole = "";
    const restored = await new Machine({
      mode: "replay",
      module: loaded.module,
      restore: taken,
      replay: recordsSource(records.slice(taken.seq)),
      onConsole: (text) => (restoredConsole += Buffer.from(text).toString("utf8")),
    }).done;
    expect(restored.message ?? "").not.toMatch(/diverged|trap|error/);
    expect(restored.icount).toBe(recorded.icount);
    expect(restored.digest).toBe(recorded.digest);
    expect(restored.entries).toBe(recorded.entries);
    // The restored VM printed only what came after the snapshot, ending with the same checksum.
    expect(restoredConsole.length).toBeGreaterThan(0);
    expect(primaryConsole.endsWith(restoredConsole)).toBe(true);
    expect(lastLine(restoredConsole)).toBe(lastLine(primaryConsole));
  });

  it("cpu: a run with a mid-export snapshot counts exactly like a run without", async () => {
    const loaded = loadGuest("cpu");
    const plain = await new Machine({ mode: "live", module: loaded.module }).done;
    let taken: VmSnapshot | null = null;
    let requested = false;
    const machine = new Machine({
      mode: "live",
      module: loaded.module,
      onConsole: () => {
        if (requested) return;
        requested = true;
        machine.snapshot((s) => (taken = s));
      },
    });
    const snapshotted = await machine.done;
    expect((taken as VmSnapshot | null)?.stack?.export).toBe("main");
    expect(snapshotted.stop).toBe(plain.stop);
    expect(snapshotted.icount).toBe(plain.icount);
    expect(snapshotted.digest).toBe(plain.digest);
  });
});
