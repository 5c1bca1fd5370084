// A backup goes live at the end of its log (§2.3): it replays every record it has, then takes
// its inputs from its own devices and keeps logging with sequence numbers that continue the
// primary's. Replaying the primary's records followed by the new ones reaches exactly the state
// the live backup reached: nothing was lost or repeated at the switch.

import path from "node:path";
import { describe, expect, it } from "vitest";
import { readLogFile } from "../../protocol/log-file.js";
import { RecordKind, type LogRecord } from "../../protocol/records.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine, recordsSource } from "../../host/vm/machine.js";
import { lockstep, tempDir } from "../helpers/cli.js";


describe("go-live", () => {
  it("counter: a backup that goes live continues the primary's execution and log", async () => {
    const dir = tempDir("go-live");
    const log = path.join(dir, "counter.log");
    // Bounded by instructions, not by time: about 17 ticks however loaded the machine is.
    const record = await lockstep(["record", "counter", "--log", log, "--max-instructions", "150000"]);
    expect(record.code, record.stderr).toBe(0);
    // The primary "crashed": its log has no End record.
    const primary = readLogFile(log).records.filter((r) => r.kind !== RecordKind.End);
    const guest = loadGuest("counter");

    const afterLive: LogRecord[] = [];
    let liveAt: { icount: bigint; seq: number } | null = null;
    const timerEventsAfterLive = () => afterLive.filter((r) => r.kind === RecordKind.Event).length;
    const backup = new Machine({
      mode: "replay",
      goLiveAs: "record",
      module: guest.module,
      replay: recordsSource(primary),
      onLive: (icount, seq) => (liveAt = { icount, seq }),
      onRecords: (records) => {
        afterLive.push(...records);
        // Let it run live for a few ticks of its own, then stop it.
        if (timerEventsAfterLive() >= 5) backup.stop();
      },
    });
    const live = await backup.done;
    expect(live.stop, live.message ?? "").toBe("stopped");
    expect(liveAt).not.toBeNull();
    const at = liveAt as unknown as { icount: bigint; seq: number };
    expect(at.seq).toBe(primary.length);
    expect(at.icount).toBeGreaterThanOrEqual(primary[primary.length - 1]!.icount);
    // Sequence numbers continue densely from the primary's.
    expect(afterLive[0]!.seq).toBe(BigInt(primary.length));
    afterLive.forEach((r, i) => expect(r.seq).toBe(BigInt(primary.length + i)));
    expect(afterLive[afterLive.length - 1]!.kind).toBe(RecordKind.End);

    const replay = await new Machine({
      mode: "replay",
      module: guest.module,
      replay: recordsSource([...primary, ...afterLive]),
    }).done;
    expect(replay.stop, replay.message ?? "").toBe("stopped");
    expect(replay.icount).toBe(live.icount);
    expect(replay.digest).toBe(live.digest);
    expect(replay.entries).toBe(live.entries);
  });
});
