// http: a small HTTP/1.1 server on virtual port 80.
//
//   GET /      an HTML page
//   GET /hits  the hit counter as plain text: requests answered so far, this one included
//   anything else: 404 (405 for methods other than GET and HEAD)
//
// Keep-alive by default (HTTP/1.1), `Connection: close` honoured, HTTP/1.0 closes unless it
// asks for keep-alive; pipelined requests are answered in order; every response carries
// Content-Length. Request bodies (Content-Length) are read and ignored; chunked bodies are
// refused with 501. Memory per connection is bounded: a request head is at most 16 KiB, a
// body at most 1 MiB, and reading pauses while 1 MiB of responses wait for the client.

export { __ls_irq, __ls_run } from "../../sdk/index";
import { Connection, ByteQueue, listen, print } from "../../sdk/index";

const PORT: i32 = 80;
const HEAD_MAX: i32 = 16 * 1024;
const BODY_MAX: i64 = 1024 * 1024;
const TX_HIGH_WATER: i32 = 1024 * 1024;

let hits: i64 = 0;

const INDEX_HTML = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>Lockstep</title></head>
<body>
<h1>Hello from a Lockstep guest</h1>
<p>This page is served by an AssemblyScript program running in a fault-tolerant WebAssembly
virtual machine: a backup replays every input it receives and takes over if the primary fails.</p>
<p>See <a href="/hits">/hits</a> for the hit counter.</p>
</body>
</html>
`;

/** ASCII lower-case of a Latin-1 string. */
function lower(s: string): string {
  return s.toLowerCase();
}

/** The bytes [0, n) of `q` as a Latin-1 string (one char per byte). */
function latin1(q: ByteQueue, n: i32): string {
  const out = changetype<string>(__new(<usize>n << 1, idof<string>()));
  const src = q.ptr;
  const dst = changetype<usize>(out);
  for (let i = 0; i < n; i++) store<u16>(dst + (<usize>i << 1), <u16>load<u8>(src + <usize>i));
  return out;
}

function indexOfHeadEnd(q: ByteQueue): i32 {
  const n = q.length;
  const p = q.ptr;
  for (let i = 0; i + 3 < n; i++) {
    if (load<u8>(p + <usize>i) == 13 && load<u8>(p + <usize>i + 1) == 10 &&
        load<u8>(p + <usize>i + 2) == 13 && load<u8>(p + <usize>i + 3) == 10) return i;
  }
  return -1;
}

class HttpConnection extends Connection {
  inbuf: ByteQueue = new ByteQueue(1024);
  out: ByteQueue = new ByteQueue(512);
  bodyToSkip: i64 = 0; // bytes of the current request's body still to drop
  closeAfter: bool = false; // a response with Connection: close was queued
  scanFrom: i32 = 0; // where the search for the end of the head resumes

  onData(data: Uint8Array): void {
    this.inbuf.appendBytes(data);
    this.process();
  }

  onDrain(): void {
    if (this.isPaused && !this.closeAfter) {
      this.process();
      if (this.pendingBytes < TX_HIGH_WATER) this.resumeReading();
    }
  }

  process(): void {
    while (!this.closeAfter && this.isOpen) {
      if (this.bodyToSkip > 0) {
        const k = <i32>min<i64>(this.bodyToSkip, <i64>this.inbuf.length);
        this.inbuf.consume(k);
        this.bodyToSkip -= k;
        if (this.bodyToSkip > 0) break;
      }
      if (this.pendingBytes >= TX_HIGH_WATER) {
        this.pauseReading(); // resumes in onDrain
        break;
      }
      const end = indexOfHeadEnd(this.inbuf);
      if (end < 0) {
        if (this.inbuf.length > HEAD_MAX) this.fail(431, "Request Header Fields Too Large");
        break;
      }
      if (end > HEAD_MAX) {
        this.fail(431, "Request Header Fields Too Large");
        break;
      }
      const head = latin1(this.inbuf, end);
      this.inbuf.consume(end + 4);
      this.handle(head);
    }
    this.inbuf.shrink();
  }

  fail(status: i32, reason: string): void {
    hits++;
    this.respond(status, reason, "text/plain; charset=utf-8", `${status} ${reason}\n`, true, false, "");
  }

  handle(head: string): void {
    const lines = head.split("\r\n");
    const reqLine = lines[0].split(" ");
    if (reqLine.length != 3 || !reqLine[2].startsWith("HTTP/1.")) {
      this.fail(400, "Bad Request");
      return;
    }
    const method = reqLine[0];
    let target = reqLine[1];
    const http10 = reqLine[2] == "HTTP/1.0";
    let keepAlive = !http10;
    let contentLength: i64 = 0;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i];
      const colon = line.indexOf(":");
      if (colon <= 0) {
        this.fail(400, "Bad Request");
        return;
      }
      const name = lower(line.substring(0, colon).trim());
      const value = line.substring(colon + 1).trim();
      if (name == "connection") {
        const v = lower(value);
        if (v.includes("close")) keepAlive = false;
        else if (v.includes("keep-alive")) keepAlive = true;
      } else if (name == "content-length") {
        let n: i64 = 0;
        if (value.length == 0 || value.length > 18) {
          this.fail(400, "Bad Request");
          return;
        }
        for (let k = 0; k < value.length; k++) {
          const c = value.charCodeAt(k);
          if (c < 48 || c > 57) {
            this.fail(400, "Bad Request");
            return;
          }
          n = n * 10 + (c - 48);
        }
        contentLength = n;
      } else if (name == "transfer-encoding") {
        this.fail(501, "Not Implemented");
        return;
      }
    }
    if (contentLength > BODY_MAX) {
      this.fail(413, "Content Too Large");
      return;
    }
    this.bodyToSkip = contentLength;
    // strip a query string
    const q = target.indexOf("?");
    if (q >= 0) target = target.substring(0, q);

    hits++;
    const isHead = method == "HEAD";
    if (method != "GET" && !isHead) {
      this.respond(405, "Method Not Allowed", "text/plain; charset=utf-8", "405 Method Not Allowed\n", !keepAlive, false, "Allow: GET, HEAD\r\n");
    } else if (target == "/") {
      this.respond(200, "OK", "text/html; charset=utf-8", INDEX_HTML, !keepAlive, isHead, "");
    } else if (target == "/hits") {
      this.respond(200, "OK", "text/plain; charset=utf-8", `${hits}\n`, !keepAlive, isHead, "");
    } else {
      this.respond(404, "Not Found", "text/plain; charset=utf-8", "404 Not Found\n", !keepAlive, isHead, "");
    }
  }

  respond(status: i32, reason: string, contentType: string, body: string, close: bool, headOnly: bool, extra: string): void {
    const out = this.out;
    out.clear();
    out.appendString("HTTP/1.1 ");
    out.appendInt(status);
    out.appendByte(32);
    out.appendString(reason);
    out.appendString("\r\nServer: lockstep-http\r\nContent-Type: ");
    out.appendString(contentType);
    out.appendString("\r\nContent-Length: ");
    out.appendInt(String.UTF8.byteLength(body));
    out.appendString(close ? "\r\nConnection: close\r\n" : "\r\nConnection: keep-alive\r\n");
    out.appendString(extra);
    out.appendString("\r\n");
    if (!headOnly) out.appendString(body);
    this.sendQueue(out);
    out.clear();
    if (close) {
      this.closeAfter = true;
      this.close(); // after the queued bytes are sent
    }
  }
}

export function main(): void {
  const r = listen(PORT, (): Connection => new HttpConnection());
  if (r < 0) {
    print(`http: listen on port ${PORT} failed: ${r}`);
    return;
  }
  print(`http: listening on port ${PORT}`);
}
