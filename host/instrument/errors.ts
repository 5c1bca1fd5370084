// Every refusal the instrumenter can produce is built here, with a stable code.
// Refusals are operating errors (a bad guest), handled by the caller. Bugs in the
// instrumenter itself are assertions (`assert` below) and are not meant to be handled.

export type InstrumentErrorCode =
  /** Not a valid WebAssembly binary (wabt's reason in the message). */
  | "WASM_MALFORMED"
  /** Shared memory or atomics. */
  | "WASM_THREADS"
  /** Relaxed SIMD: results are implementation-defined, so replay could diverge. */
  | "WASM_RELAXED_SIMD"
  /** Any SIMD (v128). */
  | "WASM_SIMD"
  /** 64-bit memory. */
  | "WASM_MEMORY64"
  /** More than one memory. */
  | "WASM_MULTI_MEMORY"
  /** Another post-MVP feature we do not accept (exceptions, tail calls, GC, multi-value, ...). */
  | "WASM_UNSUPPORTED_FEATURE"
  /** An import outside the Lockstep ABI (docs/abi.md), of any kind. */
  | "WASM_UNKNOWN_IMPORT"
  /** An ABI import declared with the wrong signature. */
  | "WASM_IMPORT_SIGNATURE"
  /** The guest imports `lockstep.checkpoint` or `lockstep.memory_grow` itself. */
  | "WASM_RESERVED_IMPORT"
  /** The guest exports a name the instrumentation adds (`__ls_fuel`, `__ls_global_<i>`). */
  | "WASM_RESERVED_EXPORT"
  /** No memory exported as `memory`. */
  | "WASM_NO_MEMORY"
  /** A start function would run guest code during instantiation, before the host sets the deadline. */
  | "WASM_START_FUNCTION";

export class InstrumentError extends Error {
  readonly code: InstrumentErrorCode;

  constructor(code: InstrumentErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = "InstrumentError";
    this.code = code;
  }
}

/** Programmer errors: a broken invariant of the instrumenter, never a property of the guest. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`instrument: assertion failed: ${message}`);
}
