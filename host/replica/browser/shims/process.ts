// The one use of Node's `process` in the vCPU: a monotonic clock in nanoseconds (live mode,
// which a replica never reaches; its boot still reads it once).
export const process = {
  hrtime: { bigint: (): bigint => BigInt(Math.round(performance.now() * 1e6)) },
};
