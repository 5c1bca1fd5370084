// wabt is the gatekeeper: every input is parsed and validated by wabt before binaryen sees it,
// because binaryen.readBinary on a malformed binary may abort its own runtime (leaving the
// shared binaryen instance unusable) instead of throwing a useful error.

import wabtInit from "wabt";
import { InstrumentError, type InstrumentErrorCode } from "./errors.js";

const wabt = await wabtInit();

type Features = {
  mutable_globals: boolean;
  sat_float_to_int: boolean;
  sign_extension: boolean;
  bulk_memory: boolean;
  reference_types: boolean;
  multi_value: boolean;
  simd: boolean;
  relaxed_simd: boolean;
  threads: boolean;
  memory64: boolean;
  multi_memory: boolean;
  exceptions: boolean;
  tail_call: boolean;
  gc: boolean;
  function_references: boolean;
  extended_const: boolean;
};

/** What a guest may use. Everything else is refused with a code naming the feature. */
const ACCEPTED: Features = {
  mutable_globals: true,
  sat_float_to_int: true,
  sign_extension: true,
  bulk_memory: true,
  // Refused: tables would become mutable state that a snapshot (memory + globals) does not hold,
  // and asc does not use them.
  reference_types: false,
  // wabt 1.0.39 parses multi-value whatever this flag says (it is standard now); the metering
  // pass refuses it (meter.ts), binaryen's tuples being the only sign of it.
  multi_value: true,
  simd: false,
  relaxed_simd: false,
  threads: false,
  memory64: false,
  multi_memory: false,
  exceptions: false,
  tail_call: false,
  gc: false,
  function_references: false,
  extended_const: false,
};

const EVERYTHING: Features = Object.fromEntries(Object.keys(ACCEPTED).map((k) => [k, true])) as Features;

/** What the instrumented output uses: the accepted set, with multi-value (the counter rides in call results). */
const OUTPUT: Features = { ...ACCEPTED, multi_value: true };

/**
 * Refused features in the order they are tried when classifying a refusal. Each entry lists
 * the features to enable on top of ACCEPTED; the first set that makes the module valid names it.
 * relaxed_simd needs simd to parse, so it is tried before plain simd.
 */
const REFUSED: readonly { enable: (keyof Features)[]; code: InstrumentErrorCode; reason: string }[] = [
  { enable: ["threads"], code: "WASM_THREADS", reason: "uses threads (shared memory or atomics): replay needs one deterministic thread" },
  { enable: ["memory64"], code: "WASM_MEMORY64", reason: "uses a 64-bit memory" },
  { enable: ["multi_memory"], code: "WASM_MULTI_MEMORY", reason: "declares more than one memory" },
  { enable: ["simd"], code: "WASM_SIMD", reason: "uses SIMD (v128): not supported (lane-wise NaN canonicalization is not implemented)" },
  { enable: ["simd", "relaxed_simd"], code: "WASM_RELAXED_SIMD", reason: "uses relaxed SIMD: its results are implementation-defined, so a replay could diverge" },
  { enable: ["reference_types"], code: "WASM_UNSUPPORTED_FEATURE", reason: "uses reference types (a table that changes at run time is state a snapshot does not hold)" },
  { enable: ["exceptions"], code: "WASM_UNSUPPORTED_FEATURE", reason: "uses exception handling" },
  { enable: ["tail_call"], code: "WASM_UNSUPPORTED_FEATURE", reason: "uses tail calls" },
  { enable: ["extended_const"], code: "WASM_UNSUPPORTED_FEATURE", reason: "uses extended constant expressions" },
  { enable: ["function_references"], code: "WASM_UNSUPPORTED_FEATURE", reason: "uses typed function references" },
  { enable: ["function_references", "gc"], code: "WASM_UNSUPPORTED_FEATURE", reason: "uses garbage collection" },
];

/** Parses and validates with wabt; returns wabt's reason on failure, null on success. */
function check(wasm: Uint8Array, features: Features): string | null {
  // wabt's readWasm reads from offset 0 of the underlying buffer, ignoring byteOffset:
  // always hand it a fresh, exactly sized copy.
  const copy = new Uint8Array(wasm);
  let module: ReturnType<typeof wabt.readWasm> | undefined;
  try {
    module = wabt.readWasm(copy, { readDebugNames: false, check: true, ...features });
    // validate() takes the features too (wabt.js's typings omit the parameter); without them it
    // validates against wabt's defaults, which include SIMD.
    (module.validate as (features: Features) => void)(features);
    return null;
  } catch (error) {
    return String(error instanceof Error ? error.message : error).trim();
  } finally {
    module?.destroy();
  }
}

/**
 * Throws WASM_MALFORMED for a binary that is invalid whatever the features, or the code of the
 * first refused feature it needs. Returns normally for a module binaryen may safely read.
 */
export function checkInput(wasm: Uint8Array): void {
  const reason = check(wasm, ACCEPTED);
  if (reason === null) return;
  const anyFeatureReason = check(wasm, EVERYTHING);
  if (anyFeatureReason !== null) throw new InstrumentError("WASM_MALFORMED", anyFeatureReason);
  for (const refused of REFUSED) {
    const features = { ...ACCEPTED };
    for (const name of refused.enable) features[name] = true;
    if (check(wasm, features) === null) throw new InstrumentError(refused.code, `module ${refused.reason}`);
  }
  // Valid only with several refused features at once: name wabt's first complaint.
  throw new InstrumentError("WASM_UNSUPPORTED_FEATURE", `module uses several unsupported features (${reason})`);
}

/** Validates the instrumented output; returns wabt's reason on failure, null when valid. */
export function checkOutput(wasm: Uint8Array): string | null {
  return check(wasm, OUTPUT);
}
