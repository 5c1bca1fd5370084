// Clocks. Both readings are inputs: the primary logs them and the backup replays them.

import { clock_now, CLOCK_MONOTONIC, CLOCK_WALL } from "./abi";

/** Monotonic nanoseconds since the VM booted. */
export function monotonicNs(): i64 {
  return clock_now(CLOCK_MONOTONIC);
}

/** Monotonic milliseconds since the VM booted. */
export function monotonicMs(): i64 {
  return clock_now(CLOCK_MONOTONIC) / 1000000;
}

/** Wall-clock nanoseconds since the Unix epoch. */
export function wallNs(): i64 {
  return clock_now(CLOCK_WALL);
}

/** Wall-clock milliseconds since the Unix epoch. */
export function wallMs(): i64 {
  return clock_now(CLOCK_WALL) / 1000000;
}
