// The contract with the VM: what the instrumented module imports and exports, the globals list,
// the hash, determinism of the output, and real asc-built guests when they have been built.

import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { FUEL_EXPORT, instrument } from "../../host/instrument/index.js";
import { fixture, MeteredHost, wasmToWat, watToWasm } from "./harness.js";

describe("the instrumented module's interface", () => {
  it("imports checkpoint, checkpoint_unwind and memory_grow, exports the fuel global and asyncify's controls, keeps the guest's exports", () => {
    const input = fixture("calls.wat");
    const out = instrument(input);
    const module = new WebAssembly.Module(out.wasm);
    const imports = WebAssembly.Module.imports(module).map((i) => `${i.module}.${i.name}:${i.kind}`).sort();
    expect(imports).toEqual([
      "lockstep.checkpoint:function",
      "lockstep.checkpoint_unwind:function",
      "lockstep.clock_now:function",
      "lockstep.console_write:function",
      "lockstep.memory_grow:function",
    ]);
    const exports = WebAssembly.Module.exports(module).map((e) => `${e.name}:${e.kind}`).sort();
    expect(exports).toEqual(
      [
        "__ls_fuel:global",
        "asyncify_get_state:function", "asyncify_start_rewind:function", "asyncify_start_unwind:function",
        "asyncify_stop_rewind:function", "asyncify_stop_unwind:function",
        "direct:function", "indirect:function", "io:function", "io_nested:function", "memory:memory", "twice:function", "twice_via:function"],
    );
    expect(FUEL_EXPORT).toBe("__ls_fuel");
  });

  it("the fuel global is a mutable i64 the host can write", async () => {
    const host = await MeteredHost.create(instrument(fixture("straight.wat")).wasm);
    host.fuel.value = -5n;
    expect(host.fuel.value).toBe(-5n);
    expect(() => {
      host.fuel.value = 1.5 as unknown as bigint;
    }).toThrow(TypeError); // an i64 global takes BigInts only
  });

  it("exports the guest's mutable globals by index, in index order, and lists them", async () => {
    const out = instrument(fixture("globals.wat"));
    expect(out.globals).toEqual([
      { exportName: "__ls_global_0", type: "i32" },
      { exportName: "__ls_global_2", type: "f64" },
      { exportName: "__ls_global_3", type: "i64" },
      { exportName: "__ls_global_4", type: "f32" },
      { exportName: "__ls_global_5", type: "i32" },
    ]);
    const host = await MeteredHost.create(out.wasm);
    const value = (name: string): unknown => (host.exports[name] as WebAssembly.Global).value;
    expect([value("__ls_global_0"), value("__ls_global_2"), value("__ls_global_3"), value("__ls_global_4"), value("__ls_global_5")]).toEqual([1, 2.5, 3n, 0.25, 7]);
    host.call("bump");
    expect([value("__ls_global_0"), value("__ls_global_3")]).toEqual([6, 4n]);
    (host.exports.__ls_global_3 as WebAssembly.Global).value = 100n; // restoring a snapshot
    host.call("bump");
    expect(value("__ls_global_3")).toBe(101n);
    (host.exports.e as WebAssembly.Global).value = 42; // the guest's own export is the same global
    expect(value("__ls_global_5")).toBe(42);
  });

  it("keeps the original-signature wrapper only for functions reachable other than by a direct call", async () => {
    const wasm = watToWasm(`(module
      (type $t (func (result i32)))
      (memory (export "memory") 1)
      (table 1 funcref)
      (elem (i32.const 0) $inTable)
      (func $internal (result i32) (i32.const 1))
      (func $inTable (result i32) (i32.const 2))
      (func (export "run") (result i32)
        (i32.add (call $internal) (call_indirect (type $t) (i32.const 0)))))`);
    const out = instrument(wasm);
    const host = await MeteredHost.create(out.wasm);
    // run: entry 1 + (call const call_indirect add) 4 = 5; $internal 1 + 1 = 2; $inTable 2
    expect(host.measure("run")).toEqual({ result: 3, icount: 9n });
    // twins of $internal, $inTable, run; wrappers of $inTable (table) and run (export) only;
    // and asyncify's five exported controls (start/stop unwind/rewind, get state)
    expect(wasmToWat(out.wasm).match(/^  \(func /gm)?.length).toBe(5 + 5);
  });

  it("replaces every memory.grow", () => {
    expect(wasmToWat(fixture("memory_grow.wat"))).toContain("memory.grow");
    const text = wasmToWat(instrument(fixture("memory_grow.wat")).wasm);
    expect(text).not.toContain("memory.grow");
    expect(text).toContain('(import "lockstep" "memory_grow"');
  });

  it("hashes the original bytes, leaves them untouched, and produces the same output every time", () => {
    const input = fixture("workload.wat");
    const copy = new Uint8Array(input);
    const a = instrument(input);
    const b = instrument(input);
    expect(a.moduleHash).toBe(createHash("sha256").update(input).digest("hex"));
    expect(input).toEqual(copy);
    expect(a.wasm).toEqual(b.wasm);
  });
});

const GUESTS = join(import.meta.dirname, "..", "..", "build", "guests");
const guests = existsSync(GUESTS) ? readdirSync(GUESTS).filter((f) => f.endsWith(".wasm")) : [];

describe.runIf(guests.length > 0)("asc-built guests (build/guests)", () => {
  for (const file of guests) {
    it(`instruments ${file}`, () => {
      const out = instrument(readFileSync(join(GUESTS, file)));
      expect(WebAssembly.validate(out.wasm)).toBe(true);
    });
  }

  it.runIf(guests.includes("cpu.wasm"))("cpu: every workload returns the same result metered and raw", async () => {
    const wasm = readFileSync(join(GUESTS, "cpu.wasm"));
    const host = await MeteredHost.create(instrument(wasm).wasm);
    const rawHost = new MeteredHost();
    const raw = (await WebAssembly.instantiate(wasm, rawHost.imports())).instance.exports as Record<string, (n?: number) => unknown>;
    raw._start?.();
    host.call("_start");
    const sizes: Record<string, number> = { bench_hash: 3, bench_sieve: 10_000, bench_nbody: 1000, bench_fib: 20, bench_alloc: 300 };
    for (const [name, n] of Object.entries(sizes)) {
      const metered = host.measure(name, n);
      expect({ name, result: metered.result }).toEqual({ name, result: raw[name]!(n) });
      expect(metered.icount).toBeGreaterThan(BigInt(n));
    }
  });
});
