// Random bytes from the host (an input: logged on the primary, replayed on the backup).

import { random_fill, RANDOM_FILL_MAX } from "./abi";

const SCRATCH: usize = memory.data(8, 8);

/** Fills `len` bytes at `ptr` with random bytes. */
export function randomFillRaw(ptr: usize, len: i32): void {
  while (len > 0) {
    const n = min(len, RANDOM_FILL_MAX);
    random_fill(ptr, n);
    ptr += <usize>n;
    len -= n;
  }
}

/** Fills `buf` with random bytes. */
export function randomFill(buf: Uint8Array): void {
  randomFillRaw(buf.dataStart, buf.byteLength);
}

/** Returns `n` new random bytes. */
export function randomBytes(n: i32): Uint8Array {
  const buf = new Uint8Array(n);
  randomFillRaw(buf.dataStart, n);
  return buf;
}

/** A random u32. */
export function randomU32(): u32 {
  random_fill(SCRATCH, 4);
  return load<u32>(SCRATCH);
}

/** A random u64. */
export function randomU64(): u64 {
  random_fill(SCRATCH, 8);
  return load<u64>(SCRATCH);
}

/** A random f64 in [0, 1). */
export function randomF64(): f64 {
  return <f64>(randomU64() >> 11) * (1.0 / 9007199254740992.0);
}
