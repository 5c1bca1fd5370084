// CPU share (§3.2): a primary whose backup lags is slowed by sleeping after each slice. Two
// busy guests run side by side over the same wall-clock window, one at full share and one at
// a quarter: the throttled one gets far fewer instructions done. The bound is loose on purpose
// (a noisy 2-core machine); measured, a quarter share reaches 0.10-0.21 of the full one's count.

import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { loadGuest, type Guest } from "../../host/vm/guest.js";
import { Machine } from "../../host/vm/machine.js";
import { ROOT, tempDir } from "../helpers/cli.js";
import { watFile } from "../helpers/wat.js";


async function spinGuest(): Promise<Guest> {
  return loadGuest(await watFile(path.join(ROOT, "test/fixtures/guests/spin.wat"), tempDir("cpu-share")));
}

/** A live spinning VM at `share`, and a promise of its first console line (it is running). */
function spinning(guest: Guest, share: number): { machine: Machine; running: Promise<void> } {
  let running!: () => void;
  const started = new Promise<void>((resolve) => (running = resolve));
  const machine = new Machine({ mode: "live", module: guest.module, onConsole: () => running() });
  machine.setCpuShare(share);
  return { machine, running: started };
}

describe("cpu share", () => {
  it("a quarter share runs far fewer instructions than a full one in the same window", async () => {
    const guest = await spinGuest();
    const full = spinning(guest, 1);
    const quarter = spinning(guest, 0.25);
    await Promise.all([full.running, quarter.running]);
    await delay(500);
    full.machine.stop();
    quarter.machine.stop();
    const [fullResult, quarterResult] = await Promise.all([full.machine.done, quarter.machine.done]);
    expect(fullResult.stop, fullResult.message ?? "").toBe("stopped");
    expect(quarterResult.stop, quarterResult.message ?? "").toBe("stopped");
    expect(Number(quarterResult.icount)).toBeGreaterThan(0);
    expect(Number(quarterResult.icount)).toBeLessThan(0.7 * Number(fullResult.icount));
  });

  it("a guest at the lowest share still answers a stop", async () => {
    const guest = await spinGuest();
    const slow = spinning(guest, 0.01);
    await slow.running;
    slow.machine.stop();
    expect((await slow.machine.done).stop).toBe("stopped");
  });

  it("refuses a share outside [0.01, 1]", async () => {
    const guest = await spinGuest();
    const { machine, running } = spinning(guest, 1);
    expect(() => machine.setCpuShare(0)).toThrow(/CPU share/);
    expect(() => machine.setCpuShare(1.5)).toThrow(/CPU share/);
    await running;
    machine.stop();
    expect((await machine.done).stop).toBe("stopped");
  });
});
