// Snapshot a VM in the middle of a replay, restore it into a fresh instance on a fresh worker,
// continue from the same place in the log: the end state equals the uninterrupted run's.

import path from "node:path";
import { describe, expect, it } from "vitest";
import { readLogFile } from "../../protocol/log-file.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine, recordsSource } from "../../host/vm/machine.js";
import type { VmSnapshot } from "../../host/vm/snapshot.js";
import { lockstep, resultLine, tempDir } from "../helpers/cli.js";


describe("snapshot and restore", () => {
  for (const guest of ["counter", "kv"]) {
    it(`${guest}: a restored replica continues identically`, async () => {
      const dir = tempDir(`snapshot-${guest}`);
      const log = path.join(dir, `${guest}.log`);
      const record = await lockstep([
        // counter is bounded by instructions (its ticks, however loaded the machine); kv, with no
        // client and no timer, is idle from start-up on and ends by time.
        ...["record", guest, "--log", log, ...(guest === "counter" ? ["--max-instructions", "150000"] : ["--seconds", "0.6"])],
        "--disk", path.join(dir, "disk.img"), "--listen", "127.0.0.1:0",
      ]);
      expect(record.code, record.stderr).toBe(0);
      const recorded = resultLine(record);

      const { header, records } = readLogFile(log);
      const config = JSON.parse(header.config) as { diskBlocks: number; memoryPagesMax: number };
      const loaded = loadGuest(guest);
      const midpoint = records[Math.floor(records.length / 2)]!.icount;
      let snapshot: VmSnapshot | null = null;
      const whole = await new Machine({
        mode: "replay",
        module: loaded.module,
        diskBlocks: config.diskBlocks,
        memoryPagesMax: config.memoryPagesMax,
        snapshotAtIdle: midpoint,
        replay: recordsSource(records),
        onSnapshot: (s) => (snapshot = s),
      }).done;
      expect(whole.stop, whole.message ?? "").toBe("stopped");
      expect(whole.digest).toBe(recorded.digest);
      expect(whole.icount).toBe(BigInt(recorded.icount));
      expect(snapshot).not.toBeNull();
      const taken = snapshot as unknown as VmSnapshot;
      expect(taken.icount).toBeGreaterThanOrEqual(midpoint);
      expect(taken.seq).toBeGreaterThan(0);
      expect(taken.seq).toBeLessThan(records.length);

      const restored = await new Machine({
        mode: "replay",
        module: loaded.module,
        diskBlocks: config.diskBlocks,
        memoryPagesMax: config.memoryPagesMax,
        restore: taken,
        replay: recordsSource(records.slice(taken.seq)),
      }).done;
      expect(restored.message).toBe(whole.message);
      expect(restored.icount).toBe(whole.icount);
      expect(restored.digest).toBe(whole.digest);
      expect(restored.entries).toBe(whole.entries);
    });
  }
});
