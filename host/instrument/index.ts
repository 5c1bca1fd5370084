// Instruction counting for Lockstep guests. The model and the host protocol are in
// docs/metering.md; the pass itself is meter.ts.

export { FUEL_EXPORT, GLOBAL_EXPORT_PREFIX, ALLOWED_IMPORTS, type ValType } from "./abi.js";
export { InstrumentError, type InstrumentErrorCode } from "./errors.js";
export { instrument, instrumentWith, INSTRUMENTER_VERSION, DEFAULT_OPTIONS, sha256Hex, type InstrumentedModule } from "./instrument.js";
export type { MeterOptions } from "./meter.js";
export { instrumentCached, defaultCacheDir, instrumenterFingerprint } from "./cache.js";
