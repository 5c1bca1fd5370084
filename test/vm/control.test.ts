// Control entries (§3.3): power-off, pause/resume and a memory limit change, sent to a
// recording VM, are applied at one delivery point each, logged there, and replayed there.

import fs from "node:fs";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { ControlKind, InputKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { loadGuest, type Guest } from "../../host/vm/guest.js";
import { Machine, recordsSource } from "../../host/vm/machine.js";
import type { VmSnapshot } from "../../host/vm/snapshot.js";
import { ROOT, tempDir } from "../helpers/cli.js";
import { watFile } from "../helpers/wat.js";

const controls = (records: LogRecord[]) => records.filter((r) => r.kind === RecordKind.Control);
const isTick = (text: Uint8Array) => Buffer.from(text).toString().startsWith("tick ");

/** Resolves when `count` calls have been made to the returned function. */
function countdown(count: number): { hit: () => void; reached: Promise<void> } {
  let left = count;
  let resolve!: () => void;
  const reached = new Promise<void>((r) => (resolve = r));
  return { hit: () => --left === 0 && resolve(), reached };
}

/** test/fixtures/guests/spin.wat: prints a line, then never idles. */
async function spinGuest(): Promise<Guest> {
  return loadGuest(await watFile(path.join(ROOT, "test/fixtures/guests/spin.wat"), tempDir("spin")));
}

async function watGuest(name: string, text: string): Promise<Guest> {
  const dir = tempDir(name);
  const wat = path.join(dir, `${name}.wat`);
  fs.writeFileSync(wat, text);
  return loadGuest(await watFile(wat, dir));
}

// Grows its memory by a page on every timer tick until the host refuses, then disarms the
// timer, so that it exits once idle.
const GROW_ON_TICK = `
(module
  (import "lockstep" "timer_set" (func $timer_set (param i32)))
  (memory (export "memory") 1)
  (func (export "_start"))
  (func (export "main") (call $timer_set (i32.const 1)))
  (func (export "__ls_irq") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "__ls_run")
    (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
      (then (call $timer_set (i32.const 0))))))
`;


describe("control entries", () => {
  it("counter: pause, resume, memory-max and power-off are logged in order and replayed", async () => {
    const guest = loadGuest("counter");
    const records: LogRecord[] = [];
    const ticks = { beforePause: countdown(3), afterResume: countdown(2), afterMemoryMax: countdown(2) };
    let phase: keyof typeof ticks = "beforePause";
    let ticksWhilePaused = 0;
    let paused = false;
    const pauses: boolean[] = [];
    let pausedNow!: () => void;
    const enteredPause = new Promise<void>((resolve) => (pausedNow = resolve));
    const machine = new Machine({
      mode: "record",
      module: guest.module,
      onRecords: (batch) => records.push(...batch),
      onConsole: (text) => {
        if (!isTick(text)) return;
        if (paused) ticksWhilePaused++;
        else ticks[phase].hit();
      },
      onPaused: (now) => {
        paused = now;
        pauses.push(now);
        if (now) pausedNow();
      },
    });

    await ticks.beforePause.reached;
    machine.control(ControlKind.Pause);
    await enteredPause;
    // An observation window for a negative claim: at 100 Hz a running counter prints ~15 ticks.
    await delay(150);
    phase = "afterResume";
    machine.control(ControlKind.Resume);
    await ticks.afterResume.reached;
    phase = "afterMemoryMax";
    machine.control(ControlKind.MemoryMax, 20_000);
    await ticks.afterMemoryMax.reached;
    machine.control(ControlKind.PowerOff);
    const result = await machine.done;

    expect(result.stop, result.message ?? "").toBe("poweroff");
    expect(result.exitCode).toBe(0);
    expect(ticksWhilePaused).toBe(0);
    expect(pauses).toEqual([true, false]);
    const logged = controls(records);
    expect(logged.map((r) => [r.a, Number(r.value)])).toEqual([
      [ControlKind.Pause, 0],
      [ControlKind.Resume, 0],
      [ControlKind.MemoryMax, 20_000],
      [ControlKind.PowerOff, 0],
    ]);
    // Resume applies at the point where the guest stopped; nothing ran in between.
    expect(logged[1]!.icount).toBe(logged[0]!.icount);
    expect(records.indexOf(logged[1]!)).toBe(records.indexOf(logged[0]!) + 1);
    // Power-off is the last record, with no End after it, at the count the VM stopped at.
    expect(records.at(-1)).toBe(logged[3]);
    expect(records.some((r) => r.kind === RecordKind.End)).toBe(false);
    expect(logged[3]!.icount).toBe(result.icount);
    expect(result.entries).toBe(records.length);

    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.stop, replay.message ?? "").toBe("poweroff");
    expect(replay.icount).toBe(result.icount);
    expect(replay.digest).toBe(result.digest);
    expect(replay.entries).toBe(result.entries);

    // A backup told to go live still does not: power-off ends the VM for good.
    let wentLive = false;
    const backup = await new Machine({
      mode: "replay",
      goLiveAs: "live",
      module: guest.module,
      replay: recordsSource(records),
      onLive: () => (wentLive = true),
    }).done;
    expect(backup.stop, backup.message ?? "").toBe("poweroff");
    expect(backup.digest).toBe(result.digest);
    expect(wentLive).toBe(false);
  });

  it("counter: a backup whose log ends right after a Pause goes live there, paused, and resumes on request", async () => {
    const guest = loadGuest("counter");
    const primaryRecords: LogRecord[] = [];
    const started = countdown(2);
    let pausedNow!: () => void;
    const enteredPause = new Promise<void>((resolve) => (pausedNow = resolve));
    const primary = new Machine({
      mode: "record",
      module: guest.module,
      onRecords: (batch) => primaryRecords.push(...batch),
      onConsole: (text) => isTick(text) && started.hit(),
      onPaused: (now) => now && pausedNow(),
    });
    await started.reached;
    primary.control(ControlKind.Pause);
    await enteredPause;
    // The primary "crashed" while paused: its log ends with the Pause.
    primary.kill();
    await primary.done;
    const pauseIndex = primaryRecords.findIndex((r) => r.kind === RecordKind.Control);
    expect(primaryRecords[pauseIndex]!.a).toBe(ControlKind.Pause);
    const log = primaryRecords.slice(0, pauseIndex + 1);
    const pausedAt = log.at(-1)!.icount;

    const liveRecords: LogRecord[] = [];
    let liveAt: { icount: bigint; seq: number } | null = null;
    const pauses: boolean[] = [];
    let pausedLive!: () => void;
    const livePaused = new Promise<void>((resolve) => (pausedLive = resolve));
    const liveTicks = countdown(3);
    const backup = new Machine({
      mode: "replay",
      goLiveAs: "record",
      module: guest.module,
      replay: recordsSource(log),
      onLive: (icount, seq) => (liveAt = { icount, seq }),
      onRecords: (batch) => liveRecords.push(...batch),
      onPaused: (now) => {
        pauses.push(now);
        if (now) pausedLive();
      },
      onConsole: (text) => liveAt !== null && isTick(text) && liveTicks.hit(),
    });
    await livePaused;
    expect(liveAt).toEqual({ icount: pausedAt, seq: log.length });
    backup.control(ControlKind.Resume);
    await liveTicks.reached;
    backup.stop();
    const live = await backup.done;
    expect(live.stop, live.message ?? "").toBe("stopped");
    expect(pauses).toEqual([true, false]);
    // The Resume continues the primary's log, at the count where the primary paused.
    expect(liveRecords[0]).toMatchObject({ kind: RecordKind.Control, a: ControlKind.Resume, icount: pausedAt });
    expect(liveRecords[0]!.seq).toBe(BigInt(log.length));

    const replay = await new Machine({
      mode: "replay",
      module: guest.module,
      replay: recordsSource([...log, ...liveRecords]),
    }).done;
    expect(replay.stop, replay.message ?? "").toBe("stopped");
    expect(replay.icount).toBe(live.icount);
    expect(replay.digest).toBe(live.digest);
  });

  it("controls at checkpoints of a busy guest replay at the same counts", async () => {
    const guest = await spinGuest();
    const records: LogRecord[] = [];
    const machine = new Machine({
      mode: "record",
      module: guest.module,
      onRecords: (batch) => records.push(...batch),
      onConsole: () => machine.control(ControlKind.Pause),
      onPaused: (now) => {
        if (now) {
          machine.control(ControlKind.Resume);
        } else {
          machine.control(ControlKind.MemoryMax, 10);
          machine.control(ControlKind.PowerOff);
        }
      },
    });
    const result = await machine.done;
    expect(result.stop, result.message ?? "").toBe("poweroff");
    expect(controls(records).map((r) => r.a)).toEqual([
      ControlKind.Pause,
      ControlKind.Resume,
      ControlKind.MemoryMax,
      ControlKind.PowerOff,
    ]);
    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.stop, replay.message ?? "").toBe("poweroff");
    expect(replay.icount).toBe(result.icount);
    expect(replay.digest).toBe(result.digest);
  });

  it("an FT primary's Progress controls pace a busy guest's log and replay as no-ops at their counts", async () => {
    const guest = await spinGuest();
    const records: LogRecord[] = [];
    const progress = countdown(5);
    const machine = new Machine({
      mode: "record",
      module: guest.module,
      progressMs: 5,
      onRecords: (batch) => {
        records.push(...batch);
        for (const r of batch) if (r.kind === RecordKind.Control && r.a === ControlKind.Progress) progress.hit();
      },
    });
    // A spinning guest logs nothing by itself: every record after its one output is Progress.
    await progress.reached;
    machine.control(ControlKind.PowerOff);
    const result = await machine.done;
    expect(result.stop, result.message ?? "").toBe("poweroff");
    const paced = controls(records).filter((r) => r.a === ControlKind.Progress);
    expect(paced.length).toBeGreaterThanOrEqual(5);
    expect(paced.every((r, i) => i === 0 || r.icount > paced[i - 1]!.icount)).toBe(true);

    // Replayed, they are points the backup may run to and nothing more: same counts, same state.
    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.stop, replay.message ?? "").toBe("poweroff");
    expect(replay.icount).toBe(result.icount);
    expect(replay.digest).toBe(result.digest);
  });

  it("a stop request ends a paused VM, and the log replays", async () => {
    const guest = loadGuest("counter");
    const records: LogRecord[] = [];
    const machine = new Machine({
      mode: "record",
      module: guest.module,
      onRecords: (batch) => records.push(...batch),
      onPaused: (now) => now && machine.stop(),
    });
    machine.control(ControlKind.Pause);
    const result = await machine.done;
    expect(result.stop, result.message ?? "").toBe("stopped");
    expect(records.slice(-2).map((r) => [r.kind, r.icount])).toEqual([
      [RecordKind.Control, result.icount],
      [RecordKind.End, result.icount],
    ]);
    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.stop, replay.message ?? "").toBe("stopped");
    expect(replay.digest).toBe(result.digest);
  });

  it("memory-max raises the memory.grow limit, and a backup going live keeps the logged limit", async () => {
    const guest = await watGuest("grow-on-tick", GROW_ON_TICK);
    const records: LogRecord[] = [];
    const machine = new Machine({
      mode: "record",
      module: guest.module,
      memoryPagesMax: 4,
      onRecords: (batch) => records.push(...batch),
    });
    // Both arrive before the guest's first delivery point, so they apply before any growth.
    machine.control(ControlKind.MemoryMax, 0); // refused: no record
    machine.control(ControlKind.MemoryMax, 8);
    const result = await machine.done;
    expect(result.stop, result.message ?? "").toBe("exit");
    const logged = controls(records);
    expect(logged.map((r) => [r.a, Number(r.value)])).toEqual([[ControlKind.MemoryMax, 8]]);
    const grows = (rs: LogRecord[]) =>
      rs.filter((r) => r.kind === RecordKind.Input && r.a === InputKind.MemoryGrow).map((r) => Number(r.value));
    // From 1 page to 8, then refused: past the boot limit of 4.
    expect(grows(records)).toEqual([1, 2, 3, 4, 5, 6, 7, -1]);

    const replay = await new Machine({
      mode: "replay",
      module: guest.module,
      memoryPagesMax: 4,
      replay: recordsSource(records),
    }).done;
    expect(replay.stop, replay.message ?? "").toBe("exit");
    expect(replay.digest).toBe(result.digest);

    // A backup that goes live right after the control enforces the logged limit, not its boot one.
    const cut = records.indexOf(logged[0]!) + 1;
    const liveRecords: LogRecord[] = [];
    let snapshot: VmSnapshot | null = null;
    const live = await new Machine({
      mode: "replay",
      goLiveAs: "record",
      module: guest.module,
      memoryPagesMax: 4,
      snapshotAtIdle: logged[0]!.icount + 1n,
      replay: recordsSource(records.slice(0, cut)),
      onRecords: (batch) => liveRecords.push(...batch),
      onSnapshot: (s) => (snapshot = s),
    }).done;
    expect(live.stop, live.message ?? "").toBe("exit");
    expect(grows(liveRecords)).toEqual([1, 2, 3, 4, 5, 6, 7, -1]);
    expect(live.digest).toBe(result.digest);
    // A snapshot carries the limit too.
    expect((snapshot as VmSnapshot | null)?.devices.memoryPagesMax).toBe(8);
  });

  it("memory-max below the current size is logged as the current size", async () => {
    const guest = await watGuest("grow-on-tick", GROW_ON_TICK);
    const records: LogRecord[] = [];
    const machine = new Machine({
      mode: "record",
      module: guest.module,
      memoryPagesMax: 1000,
      onRecords: (batch) => {
        records.push(...batch);
        // Once it has grown past 3 pages, cap it: growth stops where it stands.
        const grown = batch.some((r) => r.kind === RecordKind.Input && r.a === InputKind.MemoryGrow && r.value === 3n);
        if (grown) machine.control(ControlKind.MemoryMax, 2);
      },
    });
    const result = await machine.done;
    expect(result.stop, result.message ?? "").toBe("exit");
    const [cap] = controls(records);
    expect(cap).toBeDefined();
    const grows = records.filter((r) => r.kind === RecordKind.Input && r.a === InputKind.MemoryGrow);
    const grownBefore = grows.filter((r) => r.seq < cap!.seq && r.value >= 0n).length;
    // The size when the cap applied, and no growth after it.
    expect(Number(cap!.value)).toBe(1 + grownBefore);
    expect(grows.filter((r) => r.seq > cap!.seq).map((r) => r.value)).toEqual([-1n]);
    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.digest).toBe(result.digest);
  });
});
