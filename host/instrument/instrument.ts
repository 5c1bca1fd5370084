// The entry point of the pass: gatekeeping (wabt), metering (binaryen), output validation (wabt).

import { createHash } from "node:crypto";
import type { ValType } from "./abi.js";
import { assert } from "./errors.js";
import { meter, type MeterOptions } from "./meter.js";
import { checkInput, checkOutput } from "./wabt.js";

/**
 * Changes whenever the output for a given input may change (cost model, placement, passes).
 * Part of the cache key. Primary and backup must run the same version: counts are only
 * comparable between modules instrumented the same way.
 */
export const INSTRUMENTER_VERSION = "lockstep-instrument-3";

export interface InstrumentedModule {
  /** Instrumented binary, validated with wabt after rewriting. */
  wasm: Uint8Array;
  /** sha256 hex of the original input bytes. */
  moduleHash: string;
  /** The guest's own mutable globals, exported for snapshot/digest, in index order. */
  globals: { exportName: string; type: ValType }[];
}

/** The passes run after instrumenting; docs/metering.md has the measurements behind the choice. */
export const DEFAULT_OPTIONS: MeterOptions = {
  passes: ["optimize-instructions", "simplify-locals", "vacuum", "merge-blocks", "coalesce-locals", "reorder-locals", "vacuum"],
  optimizeLevel: 2,
  shrinkLevel: 0,
  nan: "sinks",
  validateIr: false,
  unwind: "loops",
  unwindPasses: [],
};

export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Pure and synchronous. Throws InstrumentError when the guest is refused. */
export function instrument(wasm: Uint8Array): InstrumentedModule {
  return instrumentWith(wasm, DEFAULT_OPTIONS);
}

/** `instrument` with explicit pass options: for the benchmark and the tests. */
export function instrumentWith(wasm: Uint8Array, options: MeterOptions): InstrumentedModule {
  assert(wasm instanceof Uint8Array, "wasm is a Uint8Array");
  const input = new Uint8Array(wasm); // our own copy: the caller may reuse its buffer
  const moduleHash = sha256Hex(input);
  checkInput(input);
  const output = meter(input, options);
  const reason = checkOutput(output.wasm);
  assert(reason === null, `wabt rejects the instrumented module: ${reason}`);
  return { wasm: output.wasm, moduleHash, globals: output.globals };
}
