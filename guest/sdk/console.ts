// The VM's console (an output: released under the Output Rule, dropped on the backup).

import { console_write, CONSOLE_WRITE_MAX } from "./abi";

/** Writes `len` bytes of UTF-8 at `ptr`, in pieces the host accepts, split between characters. */
export function writeRaw(ptr: usize, len: i32): void {
  while (len > 0) {
    let n = len;
    if (n > CONSOLE_WRITE_MAX) {
      n = CONSOLE_WRITE_MAX;
      // back off to a character boundary (never cut a UTF-8 sequence in two)
      while (n > CONSOLE_WRITE_MAX - 4 && (load<u8>(ptr + <usize>n) & 0xc0) == 0x80) n--;
    }
    console_write(ptr, n);
    ptr += <usize>n;
    len -= n;
  }
}

/** Writes `s` (UTF-8) to the console, without a newline. */
export function write(s: string): void {
  const buf = String.UTF8.encode(s);
  writeRaw(changetype<usize>(buf), buf.byteLength);
}

/** Writes `s` and a newline to the console. */
export function print(s: string): void {
  const n = String.UTF8.byteLength(s);
  const buf = new ArrayBuffer(n + 1);
  const p = changetype<usize>(buf);
  String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, p);
  store<u8>(p + <usize>n, 10);
  writeRaw(p, n + 1);
}

/** Writes raw bytes (expected to be UTF-8) to the console. */
export function writeBytes(data: Uint8Array): void {
  writeRaw(data.dataStart, data.byteLength);
}
