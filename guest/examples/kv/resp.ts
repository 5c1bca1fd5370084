// RESP2 request parsing (multibulk and inline) and reply encoding.

import { ByteQueue } from "../../sdk/index";

/** Largest bulk string accepted in a request (values up to 1 MiB). */
export const BULK_MAX: i32 = 1 << 20;
/** Most arguments in one request. */
export const ARGS_MAX: i32 = 1 << 20;
/** Longest inline request line. */
export const INLINE_MAX: i32 = 64 * 1024;

/** The arguments of the request being executed: pointers into the connection's buffer. */
export class Request {
  ptrs: Array<usize> = new Array<usize>();
  lens: Array<i32> = new Array<i32>();
  argc: i32 = 0;
  /** Set when parse() returns 0: bytes the buffer must hold before parsing again. */
  need: i32 = 0;
  /** Set when parse() returns -1. */
  error: string = "";
  /** Inline arguments are unquoted into here. */
  inline: ByteQueue = new ByteQueue(64);

  reset(): void {
    this.ptrs.length = 0;
    this.lens.length = 0;
    this.argc = 0;
    this.need = 0;
  }

  push(ptr: usize, len: i32): void {
    this.ptrs.push(ptr);
    this.lens.push(len);
    this.argc++;
  }

  /** Argument `i` equals `lower` (an ASCII lower-case word), ignoring case. */
  is(i: i32, lower: string): bool {
    const n = this.lens[i];
    if (n != lower.length) return false;
    const p = this.ptrs[i];
    for (let k = 0; k < n; k++) {
      let c = <u32>load<u8>(p + <usize>k);
      if (c >= 65 && c <= 90) c += 32;
      if (c != <u32>lower.charCodeAt(k)) return false;
    }
    return true;
  }

  /** Argument `i` in ASCII lower case (for command names; long names come back empty). */
  lowerName(i: i32): string {
    const n = this.lens[i];
    if (n > 32) return "";
    const p = this.ptrs[i];
    const s = changetype<string>(__new(<usize>n << 1, idof<string>()));
    const d = changetype<usize>(s);
    for (let k = 0; k < n; k++) {
      let c = load<u8>(p + <usize>k);
      if (c >= 65 && c <= 90) c += 32;
      store<u16>(d + (<usize>k << 1), <u16>c);
    }
    return s;
  }
}

/** Parses a decimal i64 in [p, p+n) the way Redis does (no "+", no leading zeros); see parseOk(). */
let parsedOk = false;
/** Whether the last parseI64 succeeded. */
export function parseOk(): bool {
  return parsedOk;
}
export function parseI64(p: usize, n: i32): i64 {
  parsedOk = false;
  if (n <= 0 || n > 20) return 0;
  let i = 0;
  let neg = false;
  if (load<u8>(p) == 45) { // '-'
    neg = true;
    i = 1;
    if (n == 1) return 0;
  }
  if (load<u8>(p + <usize>i) == 48 && n - i > 1) return 0; // leading zero
  let v: u64 = 0;
  for (; i < n; i++) {
    const c = <u32>load<u8>(p + <usize>i) - 48;
    if (c > 9) return 0;
    if (v > (u64.MAX_VALUE - c) / 10) return 0;
    v = v * 10 + c;
  }
  if (neg) {
    if (v > <u64>i64.MAX_VALUE + 1) return 0;
    parsedOk = true;
    return <i64>(0 - v);
  }
  if (v > <u64>i64.MAX_VALUE) return 0;
  parsedOk = true;
  return <i64>v;
}

function findCrlf(p: usize, from: i32, n: i32): i32 {
  for (let i = from; i + 1 < n; i++) {
    if (load<u8>(p + <usize>i) == 13 && load<u8>(p + <usize>i + 1) == 10) return i;
  }
  return -1;
}

/**
 * Parses one request from the front of `q` into `req`. Returns the bytes it takes (> 0; the
 * request may have no arguments: skip it), 0 if incomplete (req.need says how many bytes to
 * wait for), or -1 on a protocol error (req.error). Pointers in `req` are valid until `q` or
 * req.inline change.
 */
export function parse(q: ByteQueue, req: Request): i32 {
  req.reset();
  const p = q.ptr;
  const n = q.length;
  if (n == 0) return 0;
  if (load<u8>(p) != 42) return parseInline(q, req); // not '*'

  let eol = findCrlf(p, 1, n);
  if (eol < 0) {
    if (n > 64) { req.error = "too big mbulk count string"; return -1; }
    return 0;
  }
  const count = parseI64(p + 1, eol - 1);
  if (!parsedOk || count > <i64>ARGS_MAX) { req.error = "invalid multibulk length"; return -1; }
  let pos = eol + 2;
  if (count <= 0) return pos;
  for (let i: i64 = 0; i < count; i++) {
    if (pos >= n) { req.need = pos + 4; return 0; }
    const c = load<u8>(p + <usize>pos);
    if (c != 36) { // '$'
      req.error = `expected '$', got '${String.fromCharCode(c)}'`;
      return -1;
    }
    eol = findCrlf(p, pos + 1, n);
    if (eol < 0) {
      if (n - pos > 64) { req.error = "invalid bulk length"; return -1; }
      req.need = n + 1;
      return 0;
    }
    const len = parseI64(p + <usize>pos + 1, eol - pos - 1);
    if (!parsedOk || len < 0 || len > <i64>BULK_MAX) { req.error = "invalid bulk length"; return -1; }
    const data = eol + 2;
    const end = data + <i32>len;
    if (end + 2 > n) { req.need = end + 2; return 0; }
    if (load<u8>(p + <usize>end) != 13 || load<u8>(p + <usize>end + 1) != 10) {
      req.error = "bulk string not terminated by CRLF";
      return -1;
    }
    req.push(p + <usize>data, <i32>len);
    pos = end + 2;
  }
  return pos;
}

function hexVal(c: u32): i32 {
  if (c >= 48 && c <= 57) return <i32>c - 48;
  c |= 32;
  if (c >= 97 && c <= 102) return <i32>c - 87;
  return -1;
}

function isSpace(c: u32): bool {
  return c == 32 || c == 9 || c == 13 || c == 11 || c == 12;
}

// Inline request: one line, arguments split on blanks, "double" (with \n \r \t \\ \" \xHH)
// and 'single' (with \') quotes as in redis-cli.
function parseInline(q: ByteQueue, req: Request): i32 {
  const p = q.ptr;
  const n = q.length;
  const nl = q.indexOf(10);
  if (nl < 0) {
    if (n > INLINE_MAX) { req.error = "too big inline request"; return -1; }
    return 0;
  }
  const out = req.inline;
  out.clear();
  const starts = new Array<i32>();
  const ends = new Array<i32>();
  let i = 0;
  while (true) {
    while (i < nl && isSpace(load<u8>(p + <usize>i))) i++;
    if (i >= nl) break;
    starts.push(out.length);
    let inDq = false;
    let inSq = false;
    let done = false;
    while (!done) {
      if (i >= nl) {
        if (inDq || inSq) { req.error = "unbalanced quotes in request"; return -1; }
        break;
      }
      const c = <u32>load<u8>(p + <usize>i);
      if (inDq) {
        if (c == 92 && i + 3 < nl && load<u8>(p + <usize>i + 1) == 120 &&
            hexVal(load<u8>(p + <usize>i + 2)) >= 0 && hexVal(load<u8>(p + <usize>i + 3)) >= 0) {
          out.appendByte(<u8>(hexVal(load<u8>(p + <usize>i + 2)) * 16 + hexVal(load<u8>(p + <usize>i + 3))));
          i += 4;
          continue;
        } else if (c == 92 && i + 1 < nl) {
          const e = <u32>load<u8>(p + <usize>i + 1);
          out.appendByte(<u8>(e == 110 ? 10 : e == 114 ? 13 : e == 116 ? 9 : e == 98 ? 8 : e == 97 ? 7 : e));
          i += 2;
          continue;
        } else if (c == 34) {
          // closing quote must be followed by a blank or the end
          if (i + 1 < nl && !isSpace(load<u8>(p + <usize>i + 1))) { req.error = "unbalanced quotes in request"; return -1; }
          i++;
          done = true;
          continue;
        }
        out.appendByte(<u8>c);
        i++;
      } else if (inSq) {
        if (c == 92 && i + 1 < nl && load<u8>(p + <usize>i + 1) == 39) {
          out.appendByte(39);
          i += 2;
          continue;
        } else if (c == 39) {
          if (i + 1 < nl && !isSpace(load<u8>(p + <usize>i + 1))) { req.error = "unbalanced quotes in request"; return -1; }
          i++;
          done = true;
          continue;
        }
        out.appendByte(<u8>c);
        i++;
      } else {
        if (isSpace(c)) { done = true; continue; }
        if (c == 34) { inDq = true; i++; continue; }
        if (c == 39) { inSq = true; i++; continue; }
        out.appendByte(<u8>c);
        i++;
      }
    }
    ends.push(out.length);
  }
  const base = out.ptr; // stable now that `out` is complete
  for (let k = 0; k < starts.length; k++) req.push(base + <usize>starts[k], ends[k] - starts[k]);
  return nl + 1;
}

// ---- replies ----

export function replySimple(o: ByteQueue, s: string): void {
  o.appendByte(43); // '+'
  o.appendString(s);
  o.appendByte(13);
  o.appendByte(10);
}

export function replyError(o: ByteQueue, s: string): void {
  o.appendByte(45); // '-'
  o.appendString(s);
  o.appendByte(13);
  o.appendByte(10);
}

export function replyInt(o: ByteQueue, v: i64): void {
  o.appendByte(58); // ':'
  o.appendInt(v);
  o.appendByte(13);
  o.appendByte(10);
}

export function replyBulk(o: ByteQueue, p: usize, len: i32): void {
  o.appendByte(36); // '$'
  o.appendInt(len);
  o.appendByte(13);
  o.appendByte(10);
  o.append(p, len);
  o.appendByte(13);
  o.appendByte(10);
}

export function replyBulkBytes(o: ByteQueue, v: Uint8Array): void {
  replyBulk(o, v.dataStart, v.length);
}

export function replyBulkString(o: ByteQueue, s: string): void {
  const b = String.UTF8.encode(s);
  replyBulk(o, changetype<usize>(b), b.byteLength);
}

export function replyNull(o: ByteQueue): void {
  o.appendString("$-1\r\n");
}

export function replyArray(o: ByteQueue, n: i32): void {
  o.appendByte(42); // '*'
  o.appendInt(n);
  o.appendByte(13);
  o.appendByte(10);
}
