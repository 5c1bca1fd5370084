// NaN canonicalization, in both modes: every place a NaN's bits can be observed shows the
// canonical NaN after instrumentation. On x86 the raw module shows the CPU's negative default
// NaN at the same places, which is what makes these tests able to fail there.

import { describe, expect, it } from "vitest";
import { DEFAULT_OPTIONS, instrumentWith } from "../../host/instrument/index.js";
import { fixture, MeteredHost } from "./harness.js";

const CANONICAL_F64 = 0x7ff8000000000000n;
const CANONICAL_F32 = 0x7fc00000;
const PAYLOAD_NAN = 0x7ff4000000000abcn; // signaling, with a payload

function f64Bits(value: number): bigint {
  const f = new Float64Array([value]);
  return new BigUint64Array(f.buffer)[0]!;
}

interface Observed {
  store64: bigint;
  store32: number;
  bits64: bigint;
  bits32: number;
  sign: number;
  global64: bigint;
  global32: number;
  ret: bigint;
  trace: bigint;
  propagate: bigint;
  throughLocals: bigint;
  negzero: bigint;
}

async function observe(instance: { exports: WebAssembly.Exports; traced: number[] }, globals: { g64: string; g32: string }): Promise<Observed> {
  const e = instance.exports as Record<string, (...args: number[]) => unknown> & Record<string, unknown>;
  const memory = e.memory as unknown as WebAssembly.Memory;
  const view = new DataView(memory.buffer);
  view.setBigUint64(24, PAYLOAD_NAN, true);
  e.store64!(0);
  e.store32!(0);
  e.globals!(0);
  e.trace!(0);
  e.propagate!();
  e.through_locals!(0);
  e.negzero!();
  const g64 = e[globals.g64] as unknown as WebAssembly.Global;
  const g32 = e[globals.g32] as unknown as WebAssembly.Global;
  return {
    store64: view.getBigUint64(0, true),
    store32: view.getUint32(8, true),
    bits64: BigInt.asUintN(64, e.bits64!(0) as bigint),
    bits32: (e.bits32!(1) as number) >>> 0,
    sign: e.sign!(0) as number,
    // JS numbers keep a NaN's bits in V8 as long as nothing computes with them.
    global64: f64Bits(g64.value as number),
    global32: Number(f64Bits(g32.value as number) >> 32n),
    ret: f64Bits(e.ret!(0) as number),
    trace: f64Bits(instance.traced[0]!),
    propagate: view.getBigUint64(16, true),
    throughLocals: view.getBigUint64(32, true),
    negzero: view.getBigUint64(40, true),
  };
}

const CANONICAL: Observed = {
  store64: CANONICAL_F64,
  store32: CANONICAL_F32,
  bits64: CANONICAL_F64,
  bits32: CANONICAL_F32,
  sign: 1,
  global64: CANONICAL_F64,
  global32: Number(f64Bits(new Float32Array([Number.NaN])[0]!) >> 32n), // the f32 canonical NaN, widened by JS
  ret: CANONICAL_F64,
  trace: CANONICAL_F64,
  propagate: CANONICAL_F64,
  throughLocals: CANONICAL_F64,
  negzero: 0x8000000000000000n,
};

describe("NaN canonicalization", () => {
  for (const nan of ["sinks", "eager"] as const) {
    it(`${nan}: every observation point shows the canonical NaN, other values keep their bits`, async () => {
      const wasm = instrumentWith(fixture("nan.wat"), { ...DEFAULT_OPTIONS, nan }).wasm;
      const traced: number[] = [];
      const host = await MeteredHost.create(wasm, { "env.trace": (_h: MeteredHost, ...args: never[]) => void traced.push(args[2] as number) });
      const observed = await observe({ exports: host.exports, traced }, { g64: "__ls_global_0", g32: "__ls_global_1" });
      expect(observed).toEqual(CANONICAL);
    });
  }

  it("the f32 global holds exactly 0x7fc00000", async () => {
    const wasm = instrumentWith(fixture("nan.wat"), DEFAULT_OPTIONS).wasm;
    const host = await MeteredHost.create(wasm);
    host.call("globals", 0);
    // Read the f32 global's bits through memory-free means: a Float32Array round trip is exact for NaNs in V8.
    const f = new Float32Array([(host.exports.__ls_global_1 as WebAssembly.Global).value as number]);
    expect(new Uint32Array(f.buffer)[0]).toBe(CANONICAL_F32);
  });

  it.runIf(process.arch === "x64")("without instrumentation, x86 shows its own NaNs at the same places", async () => {
    const traced: number[] = [];
    const { instance } = await WebAssembly.instantiate(fixture("nan.wat"), {
      env: { trace: (...args: number[]) => void traced.push(args[2]!) },
    });
    // The raw module does not export its globals: read what it can.
    const e = instance.exports as Record<string, (...args: number[]) => unknown>;
    const memory = instance.exports.memory as WebAssembly.Memory;
    const view = new DataView(memory.buffer);
    e.store64!(0);
    expect(view.getBigUint64(0, true)).toBe(0xfff8000000000000n);
    expect(e.sign!(0)).toBe(-1);
    view.setBigUint64(24, PAYLOAD_NAN, true);
    e.propagate!();
    expect(view.getBigUint64(16, true)).toBe(0x7ffc000000000abcn); // quieted, payload kept
  });
});
