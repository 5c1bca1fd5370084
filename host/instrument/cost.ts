// The cost model: what one executed operator adds to the instruction count (icount).
//
// The count is a deterministic clock, not a cycle count: it must be identical on every CPU and
// every V8 tier, strictly increase between two checkpoints, and grow with the work done.
// Like wasmtime's fuel, every operator costs 1; unlike wasmtime, nothing that the guest wrote is
// free except the purely structural markers, so that a count can be derived by hand from the
// text of a function (docs/metering.md has worked examples).
//
// Costs are per node of binaryen's IR as read from the binary. For tree-shaped code (everything
// binaryen or asc emits, and folded WAT) that is exactly one node per wasm operator.

import { B } from "./binaryen.js";

/**
 * Entering a function: the frame setup. Charged at the entry checkpoint, so that checkpoint charges
 * at least 1 before it checks, even for an empty function.
 */
export const COST_FUNCTION_ENTRY = 1;

/**
 * Arriving at a loop header, from the fall-in edge or a back edge. Charged at the loop's
 * checkpoint, which therefore charges at least 1 even for an empty body: the count strictly
 * increases between any two checkpoints and names each one uniquely.
 */
export const COST_LOOP_HEADER = 1;

/** block, loop, else, end: structure only, no code of their own (the loop's arrival is above). */
export const COST_STRUCTURAL = 0;

/**
 * Every other operator: arithmetic, locals, globals, loads, stores, constants, nop, drop, select,
 * if, br, br_if, br_table, return, unreachable, call, call_indirect, memory.size, memory.grow
 * (now a call to the host), and the bulk-memory and table operators. One each, whatever they do:
 * memory.fill of a megabyte costs 1 like i32.add, as in wasmtime. The host call behind an import
 * costs the guest 1 (the call operator); the host charges its own delivery points separately.
 */
export const COST_OPERATOR = 1;

/**
 * Float operators whose NaN result has a non-deterministic sign or payload (the hardware picks
 * the "default NaN", or which input NaN to propagate). Their results are canonicalized.
 * Not listed, because they are bit-exact on every CPU: neg, abs, copysign (sign-bit operations),
 * reinterpret, load, store, const, and the conversions from integers (they never produce NaN).
 */
export const NAN_UNARY_OPS: ReadonlySet<number> = new Set([
  B.CeilFloat32, B.FloorFloat32, B.TruncFloat32, B.NearestFloat32, B.SqrtFloat32,
  B.CeilFloat64, B.FloorFloat64, B.TruncFloat64, B.NearestFloat64, B.SqrtFloat64,
  B.PromoteFloat32, B.DemoteFloat64,
]);

export const NAN_BINARY_OPS: ReadonlySet<number> = new Set([
  B.AddFloat32, B.SubFloat32, B.MulFloat32, B.DivFloat32, B.MinFloat32, B.MaxFloat32,
  B.AddFloat64, B.SubFloat64, B.MulFloat64, B.DivFloat64, B.MinFloat64, B.MaxFloat64,
]);

/** The canonical quiet NaNs (positive, payload = quiet bit only). */
export const CANONICAL_NAN_F32_BITS = 0x7fc00000;
export const CANONICAL_NAN_F64_BITS = 0x7ff8000000000000n;
