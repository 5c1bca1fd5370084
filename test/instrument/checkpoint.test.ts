// Delivery points: where checkpoints land, and the replay property the FT protocol relies on
// (a backup that sets its deadline to the primary's landing count lands exactly there).

import { describe, expect, it } from "vitest";
import { instrument } from "../../host/instrument/index.js";
import { fixture, MeteredHost, watToWasm, xorshift32 } from "./harness.js";

const CLOCK = { "lockstep.clock_now": () => 42n };
const ROUNDS = 60;

const workload = instrument(fixture("workload.wat")).wasm;

/** Runs workload.run(ROUNDS); the host picks each next deadline with `next`. */
async function record(next: (landing: bigint, index: number) => bigint, first: bigint): Promise<{ landings: bigint[]; total: bigint; result: unknown }> {
  const host = await MeteredHost.create(workload, CLOCK);
  host.setDeadline(first);
  host.onCheckpoint = (h) => {
    const landing = h.landings[h.landings.length - 1]!;
    h.setDeadline(next(landing, h.landings.length - 1));
  };
  const { result, icount } = host.measure("run", ROUNDS);
  return { landings: [...host.landings], total: icount, result };
}

describe("checkpoints", () => {
  it("fire at the first checkpoint at or past the deadline, at strictly increasing counts", async () => {
    const { total } = await record(() => 1n << 60n, 1n << 60n);
    const step = 97n;
    const { landings, total: again, result } = await record((landing) => landing + step, step);
    expect(again).toBe(total); // delivering checkpoints does not change the count
    expect(landings.length).toBeGreaterThan(Number(total / step / 2n));
    let deadline = step;
    for (let i = 0; i < landings.length; i++) {
      expect(landings[i]!).toBeGreaterThanOrEqual(deadline);
      if (i > 0) expect(landings[i]!).toBeGreaterThan(landings[i - 1]!);
      deadline = landings[i]! + step;
    }
    expect(result).toBeTypeOf("bigint");
  });

  it("with a deadline of 1, every function entry and loop header is a checkpoint, each at its own count", async () => {
    // The deadline just past the current count: the very next checkpoint fires, every time.
    const { landings, total } = await record((landing) => landing + 1n, 1n);
    const unique = new Set(landings);
    expect(unique.size).toBe(landings.length);
    // The largest gap between two delivery points bounds interrupt latency in instructions.
    let gapMax = 0n;
    for (let i = 1; i < landings.length; i++) {
      const gap = landings[i]! - landings[i - 1]!;
      if (gap > gapMax) gapMax = gap;
    }
    expect(gapMax).toBeLessThan(40n);
    // run's entry checkpoint: entry 1 + (const set) 2, charged before the check
    expect(landings[0]).toBe(3n);
    expect(landings[landings.length - 1]!).toBeLessThanOrEqual(total);
  }, 60_000);

  it("replay: a deadline set to a recorded landing count lands exactly there", async () => {
    const random = xorshift32(0x5eed);
    const { landings } = await record((landing) => landing + 50n + BigInt(random() % 5000), 1000n);
    expect(landings.length).toBeGreaterThan(100);
    const sample = [0, 1, 2, landings.length >> 1, landings.length - 2, landings.length - 1];
    for (let i = 0; i < 20; i++) sample.push(random() % landings.length);
    for (const index of sample) {
      const target = landings[index]!;
      const { landings: replayed } = await record(() => 1n << 60n, target);
      expect(replayed[0], `landing #${index}`).toBe(target);
    }
  });

  it("replay: a backup driven by the primary's landing counts reproduces every landing and the result", async () => {
    const random = xorshift32(0xbac0);
    const primary = await record((landing) => landing + 1n + BigInt(random() % 3000), 500n);
    const backup = await record((_, index) => primary.landings[index + 1] ?? 1n << 60n, primary.landings[0]!);
    expect(backup.landings).toEqual(primary.landings);
    expect(backup.result).toBe(primary.result);
    expect(backup.total).toBe(primary.total);
  });

  it("the host may re-enter the guest from inside a checkpoint (an interrupt handler)", async () => {
    const wasm = instrument(
      watToWasm(`(module
        (memory (export "memory") 1)
        (global $irqs (mut i32) (i32.const 0))
        (func (export "irq") (global.set $irqs (i32.add (global.get $irqs) (i32.const 1))))
        (func (export "spin") (param $n i32) (result i32)
          (loop $L (br_if $L (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
          (global.get $irqs)))`),
    ).wasm;
    const host = await MeteredHost.create(wasm);
    host.setDeadline(100n);
    host.onCheckpoint = (h) => {
      h.setDeadline(h.icount() + (1n << 60n)); // the deadline moves before the handler runs
      h.call("irq"); // irq: entry 1 + (get const add set) 4 = 5
      h.setDeadline(h.icount() + 100n);
    };
    const { result, icount } = host.measure("spin", 1000);
    // spin: entry 1 + 1000 arrivals x (header 1 + get const sub tee br_if 5) + get 1 = 6002,
    // plus 5 per handler run.
    expect(result).toBe(host.landings.length);
    expect(icount).toBe(6002n + 5n * BigInt(host.landings.length));
  });

  it("a host that returns from a checkpoint with the deadline still due makes the guest trap, not spin", async () => {
    const host = await MeteredHost.create(workload, CLOCK);
    host.setDeadline(10n);
    host.onCheckpoint = () => {}; // bug: leaves fuel >= 0
    expect(() => host.call("run", 5)).toThrow(WebAssembly.RuntimeError);
    expect(host.landings.length).toBe(1);
  });
});
