// Golden counts. Each fixture in test/fixtures/wat/ states, next to the code, the count its
// export calls must take, derived by hand from the cost model (docs/metering.md):
//
//   ;; @run <export>(<args>) => <result | undefined | trap> icount <n>
//
// Arguments are numbers (`7n` for an i64). Each @run line is checked on a fresh instance, so
// that state (memory size, ...) is the one the derivation assumes only where runs say so: runs in
// one file share one instance, in file order.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { instrument } from "../../host/instrument/index.js";
import { FIXTURES, fixture, MeteredHost } from "./harness.js";

interface Run {
  line: number;
  fn: string;
  args: (number | bigint)[];
  result: string;
  icount: bigint;
}

const RUN = /^\s*;;\s*@run\s+(\w+)\(([^)]*)\)\s*=>\s*(\S+)\s+icount\s+(\d+)\s*$/;

function parseRuns(text: string): Run[] {
  const runs: Run[] = [];
  text.split("\n").forEach((line, index) => {
    if (!/^\s*;;\s*@run\b/.test(line)) return;
    const match = RUN.exec(line);
    if (match === null) throw new Error(`line ${index + 1}: malformed @run annotation: ${line}`);
    const args = match[2]!
      .split(",")
      .map((a) => a.trim())
      .filter((a) => a !== "")
      .map((a) => (a.endsWith("n") ? BigInt(a.slice(0, -1)) : Number(a)));
    runs.push({ line: index + 1, fn: match[1]!, args, result: match[3]!, icount: BigInt(match[4]!) });
  });
  return runs;
}

const files = readdirSync(FIXTURES).filter((f) => f.endsWith(".wat")).sort();

describe("golden instruction counts", () => {
  it("has fixtures with annotations", () => {
    const total = files.reduce((n, f) => n + parseRuns(readFileSync(join(FIXTURES, f), "utf8")).length, 0);
    expect(files.length).toBeGreaterThanOrEqual(8);
    expect(total).toBeGreaterThanOrEqual(40);
  });

  for (const file of files) {
    const runs = parseRuns(readFileSync(join(FIXTURES, file), "utf8"));
    if (runs.length === 0) continue;
    it(file, async () => {
      const host = await MeteredHost.create(instrument(fixture(file)).wasm);
      for (const run of runs) {
        const label = `${file}:${run.line} ${run.fn}(${run.args.join(", ")})`;
        const before = host.icount();
        let result: string;
        try {
          result = String(host.call(run.fn, ...run.args));
        } catch (error) {
          expect(error, label).toBeInstanceOf(WebAssembly.RuntimeError);
          result = "trap";
        }
        expect({ at: label, result, icount: host.icount() - before }).toEqual({ at: label, result: run.result, icount: run.icount });
      }
    });
  }
});

describe("what the host observes during a call", () => {
  it("an import sees its whole segment already charged, and the host may move the deadline there", async () => {
    const host = await MeteredHost.create(instrument(fixture("calls.wat")).wasm, {
      // Move the deadline inside the import: the guest must reload the counter, and icount must not jump.
      "lockstep.console_write": (h) => h.setDeadline(h.deadline + 12_345n),
    });
    const { icount } = host.measure("io", 1);
    expect(icount).toBe(7n);
    expect(host.calls.map((c) => [c.name, c.icount])).toEqual([
      ["lockstep.console_write", 7n],
      ["lockstep.clock_now", 7n],
    ]);
    expect(host.measure("io_nested", 1).icount).toBe(9n);
    expect(host.calls[2]).toMatchObject({ name: "lockstep.console_write", icount: 16n, args: [2, 1] });
  });

  it("memory.grow reaches the host with its delta and returns the host's answer", async () => {
    const host = await MeteredHost.create(instrument(fixture("memory_grow.wat")).wasm);
    expect(host.measure("grow", 1)).toEqual({ result: 1, icount: 3n });
    expect(host.memory.buffer.byteLength).toBe(2 * 65536);
    expect(host.measure("grow", 10)).toEqual({ result: -1, icount: 3n });
    expect(host.calls).toEqual([
      { name: "lockstep.memory_grow", icount: 3n, args: [1] },
      { name: "lockstep.memory_grow", icount: 6n, args: [10] },
    ]);
  });

  it("abort sees the count of the segment that calls it", async () => {
    const host = await MeteredHost.create(instrument(fixture("traps.wat")).wasm, {
      "env.abort": () => {
        throw new Error("guest aborted");
      },
    });
    expect(() => host.call("assert_positive", -3)).toThrow("guest aborted");
    expect(host.calls).toEqual([{ name: "env.abort", icount: 11n, args: [1, 2, 3, 4] }]);
    expect(host.icount()).toBe(11n);
  });
});
