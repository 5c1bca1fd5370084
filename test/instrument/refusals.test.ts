// Every refusal code, with a module that triggers it, and malformed input of every kind:
// always an InstrumentError with a reason, never a crash (and binaryen stays usable after).

import { describe, expect, it } from "vitest";
import { instrument, InstrumentError, type InstrumentErrorCode } from "../../host/instrument/index.js";
import { fixture, watToWasm, xorshift32 } from "./harness.js";

function refusal(wasm: Uint8Array): InstrumentError {
  try {
    instrument(wasm);
  } catch (error) {
    if (error instanceof InstrumentError) return error;
    throw error;
  }
  throw new Error("expected a refusal, the module was accepted");
}

const MEMORY = `(memory (export "memory") 1)`;

const cases: { name: string; code: InstrumentErrorCode; wat: string; features?: Record<string, boolean>; message: RegExp }[] = [
  {
    name: "shared memory",
    code: "WASM_THREADS",
    wat: `(module (memory (export "memory") 1 1 shared))`,
    features: { threads: true },
    message: /threads/,
  },
  {
    name: "atomics",
    code: "WASM_THREADS",
    wat: `(module ${MEMORY} (func (export "f") (result i32) (i32.atomic.load (i32.const 0))))`,
    features: { threads: true },
    message: /threads/,
  },
  {
    name: "SIMD",
    code: "WASM_SIMD",
    wat: `(module ${MEMORY} (func (export "f") (result i32) (i32x4.extract_lane 0 (i32x4.splat (i32.const 1)))))`,
    features: { simd: true },
    message: /SIMD/,
  },
  {
    name: "relaxed SIMD",
    code: "WASM_RELAXED_SIMD",
    wat: `(module ${MEMORY} (func (export "f") (result v128) (i32x4.relaxed_trunc_f32x4_s (v128.const i32x4 0 0 0 0))))`,
    features: { simd: true, relaxed_simd: true },
    message: /relaxed SIMD/,
  },
  {
    name: "memory64",
    code: "WASM_MEMORY64",
    wat: `(module (memory (export "memory") i64 1))`,
    features: { memory64: true },
    message: /64-bit memory/,
  },
  {
    name: "two memories",
    code: "WASM_MULTI_MEMORY",
    wat: `(module (memory (export "memory") 1) (memory 1))`,
    features: { multi_memory: true },
    message: /more than one memory/,
  },
  {
    name: "multi-value results",
    code: "WASM_UNSUPPORTED_FEATURE",
    wat: `(module ${MEMORY} (func (export "f") (result i32 i32) (i32.const 1) (i32.const 2)))`,
    features: { multi_value: true },
    message: /multi-value/,
  },
  {
    name: "tail calls",
    code: "WASM_UNSUPPORTED_FEATURE",
    wat: `(module ${MEMORY} (func $g) (func (export "f") (return_call $g)))`,
    features: { tail_call: true },
    message: /tail calls/,
  },
  {
    name: "reference types",
    code: "WASM_UNSUPPORTED_FEATURE",
    wat: `(module ${MEMORY} (table $t 1 funcref) (func (export "f") (table.set $t (i32.const 0) (ref.null func))))`,
    features: { reference_types: true },
    message: /reference types/,
  },
  {
    name: "a table changed at run time (bulk memory)",
    code: "WASM_UNSUPPORTED_FEATURE",
    wat: `(module ${MEMORY} (table 1 funcref) (elem $e func $g) (func $g) (func (export "f") (table.init $e (i32.const 0) (i32.const 0) (i32.const 1))))`,
    message: /changes a table at run time/,
  },
  {
    name: "exceptions",
    code: "WASM_UNSUPPORTED_FEATURE",
    wat: `(module ${MEMORY} (tag $t) (func (export "f") (throw $t)))`,
    features: { exceptions: true },
    message: /exception handling/,
  },
  {
    name: "a WASI import",
    code: "WASM_UNKNOWN_IMPORT",
    wat: `(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) ${MEMORY})`,
    message: /unknown import "wasi_snapshot_preview1\.fd_write"/,
  },
  {
    name: "an unknown name in module lockstep",
    code: "WASM_UNKNOWN_IMPORT",
    wat: `(module (import "lockstep" "sleep" (func (param i32))) ${MEMORY})`,
    message: /unknown import "lockstep\.sleep"/,
  },
  {
    name: "an imported global",
    code: "WASM_UNKNOWN_IMPORT",
    wat: `(module (import "env" "__stack_pointer" (global (mut i32))) ${MEMORY})`,
    message: /unknown import "env\.__stack_pointer" \(a global\)/,
  },
  {
    name: "an imported memory",
    code: "WASM_UNKNOWN_IMPORT",
    wat: `(module (import "env" "memory" (memory 1)) (export "memory" (memory 0)))`,
    message: /unknown import "env\.memory" \(a memory/,
  },
  {
    name: "an imported table",
    code: "WASM_UNKNOWN_IMPORT",
    wat: `(module (import "env" "table" (table 1 funcref)) ${MEMORY})`,
    message: /unknown import "env\.table" \(a table\)/,
  },
  {
    name: "an ABI import with the wrong signature",
    code: "WASM_IMPORT_SIGNATURE",
    wat: `(module (import "lockstep" "clock_now" (func (param i32) (result i32))) ${MEMORY})`,
    message: /"lockstep\.clock_now" has signature \(i32\) -> \(i32\), the ABI says \(i32\) -> \(i64\)/,
  },
  {
    name: "importing lockstep.checkpoint",
    code: "WASM_RESERVED_IMPORT",
    wat: `(module (import "lockstep" "checkpoint" (func)) ${MEMORY})`,
    message: /"lockstep\.checkpoint" is added by the instrumentation/,
  },
  {
    name: "importing lockstep.memory_grow",
    code: "WASM_RESERVED_IMPORT",
    wat: `(module (import "lockstep" "memory_grow" (func (param i32) (result i32))) ${MEMORY})`,
    message: /"lockstep\.memory_grow"/,
  },
  {
    name: "exporting __ls_fuel",
    code: "WASM_RESERVED_EXPORT",
    wat: `(module ${MEMORY} (global (export "__ls_fuel") (mut i64) (i64.const 0)))`,
    message: /"__ls_fuel" is reserved/,
  },
  {
    name: "exporting __ls_global_0",
    code: "WASM_RESERVED_EXPORT",
    wat: `(module ${MEMORY} (func (export "__ls_global_0")))`,
    message: /"__ls_global_0" is reserved/,
  },
  {
    name: "no memory",
    code: "WASM_NO_MEMORY",
    wat: `(module (func (export "f")))`,
    message: /does not export a memory named "memory"/,
  },
  {
    name: "a memory exported under another name",
    code: "WASM_NO_MEMORY",
    wat: `(module (memory (export "mem") 1))`,
    message: /"memory"/,
  },
  {
    name: "a start function",
    code: "WASM_START_FUNCTION",
    wat: `(module ${MEMORY} (func $init) (start $init))`,
    message: /--exportStart/,
  },
];

describe("refusals", () => {
  for (const c of cases) {
    it(`${c.code}: ${c.name}`, () => {
      const error = refusal(watToWasm(c.wat, c.features ?? {}));
      expect(error.code).toBe(c.code);
      expect(error.message).toMatch(c.message);
      expect(error.message.startsWith(`${c.code}: `)).toBe(true);
    });
  }

  it("accepts every ABI import with its signature", () => {
    const wat = `(module
      (import "lockstep" "clock_now" (func (param i32) (result i64)))
      (import "lockstep" "random_fill" (func (param i32 i32)))
      (import "lockstep" "console_write" (func (param i32 i32)))
      (import "lockstep" "timer_set" (func (param i32)))
      (import "lockstep" "irq_mask" (func (param i32) (result i32)))
      (import "lockstep" "halt" (func))
      (import "lockstep" "exit" (func (param i32)))
      (import "lockstep" "nic_listen" (func (param i32) (result i32)))
      (import "lockstep" "nic_recv" (func (param i32 i32 i32) (result i32)))
      (import "lockstep" "nic_send" (func (param i32 i32 i32) (result i32)))
      (import "lockstep" "nic_close" (func (param i32)))
      (import "lockstep" "disk_blocks" (func (result i32)))
      (import "lockstep" "disk_read" (func (param i32 i32 i32 i32) (result i32)))
      (import "lockstep" "disk_write" (func (param i32 i32 i32 i32) (result i32)))
      (import "env" "abort" (func (param i32 i32 i32 i32)))
      (import "env" "trace" (func (param i32 i32 f64 f64 f64 f64 f64)))
      (import "env" "seed" (func (result f64)))
      ${MEMORY})`;
    expect(instrument(watToWasm(wat)).wasm.byteLength).toBeGreaterThan(0);
  });
});

describe("malformed input", () => {
  const valid = fixture("calls.wat");

  const inputs: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["garbage", new Uint8Array([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8])],
    ["the magic alone", new Uint8Array([0x00, 0x61, 0x73, 0x6d])],
    ["a wrong version", new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x02, 0x00, 0x00, 0x00])],
    ["text instead of binary", new TextEncoder().encode("(module)")],
    ["truncated by one byte", valid.slice(0, valid.length - 1)],
    ["truncated in half", valid.slice(0, valid.length >> 1)],
    ["a section length past the end", (() => {
      const bytes = new Uint8Array(valid);
      bytes[9] = 0x7f; // the first section's size
      return bytes;
    })()],
  ];

  for (const [name, bytes] of inputs) {
    it(`WASM_MALFORMED: ${name}`, () => {
      const error = refusal(bytes);
      expect(error.code).toBe("WASM_MALFORMED");
      expect(error.message.length).toBeGreaterThan("WASM_MALFORMED: ".length + 5);
    });
  }

  it("random corruptions give a refusal or a valid module, never another error, and binaryen survives", () => {
    const seed = 0x1ee7;
    const random = xorshift32(seed);
    let refused = 0;
    for (let i = 0; i < 300; i++) {
      const bytes = new Uint8Array(valid);
      const flips = 1 + (random() % 3);
      for (let f = 0; f < flips; f++) bytes[8 + (random() % (bytes.length - 8))] = random() & 0xff;
      try {
        const out = instrument(bytes);
        expect(out.wasm.byteLength, `seed=${seed} i=${i}`).toBeGreaterThan(0);
      } catch (error) {
        expect(error, `seed=${seed} i=${i}: ${String(error)}`).toBeInstanceOf(InstrumentError);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(0);
    expect(instrument(valid).wasm.byteLength).toBeGreaterThan(0);
  });

  it("reads the bytes of a view, not of its whole buffer (byteOffset)", () => {
    const padded = new Uint8Array(valid.length + 16);
    padded.fill(0xff);
    padded.set(valid, 16);
    const view = padded.subarray(16);
    expect(instrument(view).wasm).toEqual(instrument(valid).wasm);
  });
});
