// The imports a guest may declare (docs/abi.md) and the ones the instrumentation adds.
// Signatures are checked too: a JS host function accepts any signature, so a mismatch
// would otherwise surface as silently wrong arguments rather than a link error.

export type ValType = "i32" | "i64" | "f32" | "f64";

export interface ImportSignature {
  params: readonly ValType[];
  results: readonly ValType[];
}

const sig = (params: ValType[], results: ValType[] = []): ImportSignature => ({ params, results });

/** module -> name -> signature. Anything else is refused with WASM_UNKNOWN_IMPORT. */
export const ALLOWED_IMPORTS: ReadonlyMap<string, ReadonlyMap<string, ImportSignature>> = new Map([
  [
    "lockstep",
    new Map([
      ["clock_now", sig(["i32"], ["i64"])],
      ["random_fill", sig(["i32", "i32"])],
      ["console_write", sig(["i32", "i32"])],
      ["timer_set", sig(["i32"])],
      ["irq_mask", sig(["i32"], ["i32"])],
      ["halt", sig([])],
      ["exit", sig(["i32"])],
      ["nic_listen", sig(["i32"], ["i32"])],
      ["nic_recv", sig(["i32", "i32", "i32"], ["i32"])],
      ["nic_send", sig(["i32", "i32", "i32"], ["i32"])],
      ["nic_close", sig(["i32"])],
      ["disk_blocks", sig([], ["i32"])],
      ["disk_read", sig(["i32", "i32", "i32", "i32"], ["i32"])],
      ["disk_write", sig(["i32", "i32", "i32", "i32"], ["i32"])],
    ]),
  ],
  [
    "env",
    new Map([
      ["abort", sig(["i32", "i32", "i32", "i32"])],
      ["trace", sig(["i32", "i32", "f64", "f64", "f64", "f64", "f64"])],
      ["seed", sig([], ["f64"])],
    ]),
  ],
]);

/** Added by the instrumentation; a guest declaring them itself is refused. */
export const INJECTED_MODULE = "lockstep";
export const CHECKPOINT_IMPORT = "checkpoint"; // () -> ()
/**
 * The same as checkpoint, at loop headers, when the module is built for unwinding
 * (docs/snapshots.md): binaryen's asyncify lets the host unwind the guest's stack from inside
 * this import (and only this one), to snapshot it mid-computation.
 */
export const CHECKPOINT_UNWIND_IMPORT = "checkpoint_unwind"; // () -> ()
/** Exports asyncify adds, by which the host unwinds and rewinds the stack. */
export const ASYNCIFY_EXPORTS = {
  startUnwind: "asyncify_start_unwind", // (data_ptr: i32) -> ()
  stopUnwind: "asyncify_stop_unwind", // () -> ()
  startRewind: "asyncify_start_rewind", // (data_ptr: i32) -> ()
  stopRewind: "asyncify_stop_rewind", // () -> ()
  getState: "asyncify_get_state", // () -> i32: 0 normal, 1 unwinding, 2 rewinding
} as const;
export const MEMORY_GROW_IMPORT = "memory_grow"; // (delta_pages: i32) -> i32

/** The counter global: icount - deadline, an i64. */
export const FUEL_EXPORT = "__ls_fuel";
/** Prefix of the exports that expose the guest's own mutable globals, by original index. */
export const GLOBAL_EXPORT_PREFIX = "__ls_global_";
/** The guest must export its memory under this name. */
export const MEMORY_EXPORT = "memory";
