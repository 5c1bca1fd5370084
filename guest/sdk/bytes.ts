// ByteQueue: a growable FIFO of bytes (append at the end, consume from the front), the
// building block for receive buffers, reply builders and the NIC transmit queue.

/** A growable byte FIFO. Pointers it hands out are valid until the next mutation. */
export class ByteQueue {
  private buf: ArrayBuffer;
  private start: i32 = 0;
  private end: i32 = 0;
  private initialCapacity: i32;

  constructor(initialCapacity: i32 = 256) {
    if (initialCapacity < 16) initialCapacity = 16;
    this.initialCapacity = initialCapacity;
    this.buf = new ArrayBuffer(initialCapacity);
  }

  /** Bytes held. */
  get length(): i32 {
    return this.end - this.start;
  }

  /** Bytes allocated. */
  get capacity(): i32 {
    return this.buf.byteLength;
  }

  /** Address of the first byte held (valid until the next mutation). */
  get ptr(): usize {
    return changetype<usize>(this.buf) + <usize>this.start;
  }

  /** The byte at offset `i` from the front (unchecked beyond an assert). */
  @inline byteAt(i: i32): u8 {
    assert(<u32>i < <u32>this.length, "ByteQueue index out of range");
    return load<u8>(changetype<usize>(this.buf) + <usize>(this.start + i));
  }

  /** Offset of the first `byte` at or after `from`, or -1. */
  indexOf(byte: u8, from: i32 = 0): i32 {
    const base = changetype<usize>(this.buf) + <usize>this.start;
    const n = this.end - this.start;
    for (let i = from; i < n; i++) {
      if (load<u8>(base + <usize>i) == byte) return i;
    }
    return -1;
  }

  /** Offset of the first "\r\n" at or after `from`, or -1. */
  indexOfCrlf(from: i32 = 0): i32 {
    const base = changetype<usize>(this.buf) + <usize>this.start;
    const n = this.end - this.start - 1;
    for (let i = from; i < n; i++) {
      if (load<u8>(base + <usize>i) == 13 && load<u8>(base + <usize>i + 1) == 10) return i;
    }
    return -1;
  }

  /** Makes room for `n` more bytes and returns where to write them; then call commit(n). */
  reserve(n: i32): usize {
    const cap = this.buf.byteLength;
    if (this.end + n > cap) {
      const len = this.end - this.start;
      if (len + n <= cap && this.start >= (cap >> 1)) {
        // enough room once the consumed front is reclaimed
        memory.copy(changetype<usize>(this.buf), changetype<usize>(this.buf) + <usize>this.start, <usize>len);
      } else {
        let newCap = cap << 1;
        if (newCap < len + n) newCap = len + n;
        const nb = new ArrayBuffer(newCap);
        memory.copy(changetype<usize>(nb), changetype<usize>(this.buf) + <usize>this.start, <usize>len);
        this.buf = nb;
      }
      this.start = 0;
      this.end = len;
    }
    return changetype<usize>(this.buf) + <usize>this.end;
  }

  /** Adds `n` bytes written at the address reserve() returned. */
  commit(n: i32): void {
    assert(this.end + n <= this.buf.byteLength, "ByteQueue commit past reserve");
    this.end += n;
  }

  /** Appends `len` bytes from `ptr`. */
  append(ptr: usize, len: i32): void {
    if (len <= 0) return;
    const p = this.reserve(len);
    memory.copy(p, ptr, <usize>len);
    this.end += len;
  }

  /** Appends the bytes of `data`. */
  appendBytes(data: Uint8Array): void {
    this.append(data.dataStart, data.byteLength);
  }

  /** Appends one byte. */
  appendByte(b: u8): void {
    const p = this.reserve(1);
    store<u8>(p, b);
    this.end += 1;
  }

  /** Appends `s` as UTF-8. */
  appendString(s: string): void {
    const n = String.UTF8.byteLength(s);
    const p = this.reserve(n);
    String.UTF8.encodeUnsafe(changetype<usize>(s), s.length, p);
    this.end += n;
  }

  /** Appends `s` as Latin-1 (one byte per UTF-16 unit; use for ASCII and for byte strings). */
  appendLatin1(s: string): void {
    const n = s.length;
    const p = this.reserve(n);
    const src = changetype<usize>(s);
    for (let i = 0; i < n; i++) store<u8>(p + <usize>i, <u8>load<u16>(src + (<usize>i << 1)));
    this.end += n;
  }

  /** Appends the decimal form of `v`. */
  appendInt(v: i64): void {
    const p = this.reserve(20);
    let u: u64 = v < 0 ? <u64>(-v) : <u64>v;
    let digits = 1;
    for (let t = u; t >= 10; t /= 10) digits++;
    let q = p;
    if (v < 0) {
      store<u8>(q, 45); // '-'
      q++;
    }
    let w = q + <usize>digits;
    do {
      w--;
      store<u8>(w, <u8>(48 + <i32>(u % 10)));
      u /= 10;
    } while (u != 0);
    this.end += digits + (v < 0 ? 1 : 0);
  }

  /** Drops `n` bytes from the front. */
  consume(n: i32): void {
    assert(n >= 0 && n <= this.end - this.start, "ByteQueue consume out of range");
    this.start += n;
    if (this.start == this.end) {
      this.start = 0;
      this.end = 0;
    }
  }

  /** Drops everything. */
  clear(): void {
    this.start = 0;
    this.end = 0;
  }

  /** When empty, gives back a buffer grown past `maxIdle` bytes (bounded memory per user). */
  shrink(maxIdle: i32 = 65536): void {
    if (this.end == this.start && this.buf.byteLength > maxIdle) {
      this.buf = new ArrayBuffer(this.initialCapacity);
      this.start = 0;
      this.end = 0;
    }
  }

  /** A copy of bytes [from, to) counted from the front. */
  slice(from: i32, to: i32): Uint8Array {
    assert(from >= 0 && from <= to && to <= this.length, "ByteQueue slice out of range");
    const out = new Uint8Array(to - from);
    memory.copy(out.dataStart, this.ptr + <usize>from, <usize>(to - from));
    return out;
  }

  /**
   * A view of bytes [from, to) counted from the front, sharing this queue's memory: valid
   * until the next mutation (use it to hand a buffer to writeBlocks without copying).
   */
  view(from: i32, to: i32): Uint8Array {
    assert(from >= 0 && from <= to && to <= this.length, "ByteQueue view out of range");
    return Uint8Array.wrap(this.buf, this.start + from, to - from);
  }

  /** A copy of everything held. */
  toBytes(): Uint8Array {
    return this.slice(0, this.length);
  }
}
