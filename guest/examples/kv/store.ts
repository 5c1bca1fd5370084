// The in-memory key space. Keys are byte strings kept as Latin-1 AssemblyScript strings (one
// UTF-16 unit per byte, so any byte sequence round-trips); values are immutable Uint8Arrays
// (a write installs a new array, so a snapshot can hold references without copying).

const data = new Map<string, Uint8Array>();
let live: i64 = 0;

/** Bytes one key takes in a compacted log (record header 24 + op header 9 + key + value). */
export function entryBytes(keyLen: i32, valueLen: i32): i64 {
  return 33 + <i64>keyLen + <i64>valueLen;
}

/** Sum of entryBytes over all keys: the size of a snapshot. */
export function liveBytes(): i64 {
  return live;
}

export function keyCount(): i32 {
  return data.size;
}

export function has(key: string): bool {
  return data.has(key);
}

/** The value of `key`, or null. */
export function get(key: string): Uint8Array | null {
  return data.has(key) ? data.get(key) : null;
}

export function set(key: string, value: Uint8Array): void {
  if (data.has(key)) live -= entryBytes(key.length, data.get(key).length);
  data.set(key, value);
  live += entryBytes(key.length, value.length);
}

/** Deletes `key`; returns whether it existed. */
export function del(key: string): bool {
  if (!data.has(key)) return false;
  live -= entryBytes(key.length, data.get(key).length);
  data.delete(key);
  return true;
}

export function clear(): void {
  data.clear();
  live = 0;
}

/** Every key (a new array; pairs index-wise with values()). */
export function keys(): Array<string> {
  return data.keys();
}

/** Every value, in the order of keys(). */
export function values(): Array<Uint8Array> {
  return data.values();
}

/** The Latin-1 string of `len` bytes at `ptr` (a key). */
export function keyFrom(ptr: usize, len: i32): string {
  const s = changetype<string>(__new(<usize>len << 1, idof<string>()));
  const dst = changetype<usize>(s);
  for (let i = 0; i < len; i++) store<u16>(dst + (<usize>i << 1), <u16>load<u8>(ptr + <usize>i));
  return s;
}

/** Writes the bytes of Latin-1 string `key` at `ptr`. */
export function keyBytesTo(key: string, ptr: usize): void {
  const src = changetype<usize>(key);
  const n = key.length;
  for (let i = 0; i < n; i++) store<u8>(ptr + <usize>i, <u8>load<u16>(src + (<usize>i << 1)));
}

/** A new Uint8Array holding the `len` bytes at `ptr` (a value). */
export function valueFrom(ptr: usize, len: i32): Uint8Array {
  const v = new Uint8Array(len);
  memory.copy(v.dataStart, ptr, <usize>len);
  return v;
}
