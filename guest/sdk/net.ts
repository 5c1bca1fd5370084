// The virtual NIC: listening ports and connections.
//
// A service subclasses Connection, overrides the callbacks it needs and passes a factory to
// listen(). The SDK reads incoming bytes for it, keeps the bytes the host's transmit window
// could not take and resends them on NIC_TX_CREDIT, and closes gracefully.

import {
  nic_listen, nic_recv, nic_send, nic_close,
  EV_NIC_ACCEPT, EV_NIC_DATA, EV_NIC_CLOSED, EV_NIC_TX_CREDIT,
} from "./abi";
import { setEventHandler } from "./events";
import { ByteQueue } from "./bytes";

const RECV_CHUNK: i32 = 65536;

/**
 * One client connection. Subclass it and override the callbacks; every callback runs in the
 * bottom half (allocation is fine).
 *
 *     class Echo extends Connection {
 *       onData(data: Uint8Array): void { this.send(data); }
 *     }
 *     listen(7, (): Connection => new Echo());
 */
export class Connection {
  /** The host's connection id (set before onOpen). */
  id: i32 = -1;
  /** The virtual port it was accepted on. */
  port: i32 = 0;
  /** Bytes received so far. */
  bytesReceived: u64 = 0;
  /** Bytes handed to the host so far (not counting bytes still queued in the SDK). */
  bytesSent: u64 = 0;

  // SDK state. Not for guest code.
  _txq: ByteQueue | null = null;
  _closing: bool = false; // close() was called; nic_close once the queue is flushed
  _closed: bool = false; // nic_close was called
  _peerClosed: bool = false; // the peer closed (recv returned -4 / NIC_CLOSED)
  _peerNotified: bool = false;
  _txDead: bool = false; // the host refused sends (-4): the queue is dropped
  _paused: bool = false;
  _reading: bool = false;

  // ---- callbacks (override) ----

  /** The connection was accepted. */
  onOpen(): void {}

  /**
   * Bytes arrived. `data` is a view of an SDK buffer valid only during this call: copy what
   * you keep (e.g. into a ByteQueue).
   */
  onData(data: Uint8Array): void {}

  /**
   * The peer closed its side (or reset) and every byte it sent was delivered by onData.
   * Default: close() (after the queued output is sent).
   */
  onPeerClosed(): void {
    this.close();
  }

  /** Everything queued by send() has been handed to the host (after the queue was non-empty). */
  onDrain(): void {}

  /** The connection is closed; no callback follows. */
  onClose(): void {}

  // ---- operations ----

  /**
   * Queues `data` for the client. Never blocks; see pendingBytes for backpressure. If the host
   * reports the connection gone, the SDK closes it (onClose runs) and later sends are ignored.
   */
  send(data: Uint8Array): void {
    this.sendRaw(data.dataStart, data.byteLength);
  }

  /** Queues the UTF-8 encoding of `s`. */
  sendString(s: string): void {
    const buf = String.UTF8.encode(s);
    this.sendRaw(changetype<usize>(buf), buf.byteLength);
  }

  /** Queues the bytes held by `q` (without consuming them). */
  sendQueue(q: ByteQueue): void {
    this.sendRaw(q.ptr, q.length);
  }

  /** Queues `len` bytes at `ptr` (copied if the host's window can't take them now). */
  sendRaw(ptr: usize, len: i32): void {
    if (len <= 0 || this._closing || this._closed || this._txDead) return;
    let off = 0;
    const q = this._txq;
    if (q === null || q.length == 0) {
      const n = nic_send(this.id, ptr, len);
      if (n < 0) {
        this._sendFailed();
        return;
      }
      off = n;
      this.bytesSent += <u64>n;
    }
    if (off < len) {
      let tq = this._txq;
      if (tq === null) {
        tq = new ByteQueue(len - off > 4096 ? len - off : 4096);
        this._txq = tq;
      }
      tq.append(ptr + <usize>off, len - off);
    }
  }

  /** Bytes accepted by send() and still waiting for the host's transmit window. */
  get pendingBytes(): i32 {
    const q = this._txq;
    return q === null ? 0 : q.length;
  }

  /** Stops reading: data stays in the host's receive buffer (256 KiB), then in the socket. */
  pauseReading(): void {
    this._paused = true;
  }

  /** Resumes reading: buffered data is delivered now (onData), then as it arrives. */
  resumeReading(): void {
    if (!this._paused) return;
    this._paused = false;
    this._readAvailable();
  }

  /** True while reading is paused. */
  get isPaused(): bool {
    return this._paused;
  }

  /** True once the peer has closed its side. */
  get peerClosed(): bool {
    return this._peerClosed;
  }

  /** True until close() or abort() is called. */
  get isOpen(): bool {
    return !this._closing && !this._closed;
  }

  /** Closes after every queued byte has been sent. No data callback follows; onClose does. */
  close(): void {
    if (this._closing || this._closed) return;
    this._closing = true;
    if (this.pendingBytes == 0) this._finishClose();
  }

  /** Closes now, dropping queued bytes. */
  abort(): void {
    if (this._closed) return;
    const q = this._txq;
    if (q !== null) q.clear();
    this._closing = true;
    this._finishClose();
  }

  // ---- SDK internals ----

  _sendFailed(): void {
    // The host refused the bytes (-4: the peer reset or is gone; -1: unknown connection):
    // nothing queued can ever be delivered, so the connection is finished here.
    this._txDead = true;
    const q = this._txq;
    if (q !== null) q.clear();
    this._peerClosed = true;
    this._closing = true;
    this._finishClose();
  }

  _finishClose(): void {
    if (this._closed) return;
    this._closed = true;
    nic_close(this.id);
    if (connections.has(this.id) && connections.get(this.id) === this) connections.delete(this.id);
    this._txq = null;
    this.onClose();
  }

  _flush(): void {
    const q = this._txq;
    if (q === null || q.length == 0 || this._closed) return;
    while (q.length > 0) {
      const n = nic_send(this.id, q.ptr, q.length);
      if (n < 0) {
        this._sendFailed();
        return;
      }
      if (n == 0) break;
      this.bytesSent += <u64>n;
      q.consume(n);
    }
    if (q.length == 0) {
      q.shrink();
      if (this._closing) this._finishClose();
      else this.onDrain();
    }
  }

  _readAvailable(): void {
    if (this._reading) return; // a nested call (handler called halt()): the outer loop reads
    this._reading = true;
    while (!this._paused && !this._closing && !this._closed) {
      const scratch = acquireScratch();
      const n = nic_recv(this.id, scratch.dataStart, RECV_CHUNK);
      if (n > 0) {
        this.bytesReceived += <u64>n;
        this.onData(Uint8Array.wrap(scratch.buffer, 0, n));
        releaseScratch(scratch);
        continue;
      }
      releaseScratch(scratch);
      if (n < 0) this._peerClosed = true; // -4: the peer closed and the buffer is empty
      break;
    }
    this._reading = false;
    if (this._peerClosed && !this._peerNotified && !this._paused && !this._closing && !this._closed) {
      this._peerNotified = true;
      this.onPeerClosed();
    }
  }
}

// ---- module state ----

const listeners = new Map<i32, () => Connection>();
const connections = new Map<i32, Connection>();
let recvScratch: Uint8Array | null = null;
let scratchBusy = false;
let installed = false;

function acquireScratch(): Uint8Array {
  if (scratchBusy) return new Uint8Array(RECV_CHUNK); // nested read (rare)
  scratchBusy = true;
  let s = recvScratch;
  if (s === null) {
    s = new Uint8Array(RECV_CHUNK);
    recvScratch = s;
  }
  return s;
}

function releaseScratch(s: Uint8Array): void {
  if (s === recvScratch) scratchBusy = false;
}

function onNicAccept(conn: i32, port: i32): void {
  if (!listeners.has(port)) {
    nic_close(conn);
    return;
  }
  const factory = listeners.get(port);
  const c = factory();
  c.id = conn;
  c.port = port;
  connections.set(conn, c);
  c.onOpen();
}

function onNicData(conn: i32, bytes: i32): void {
  if (!connections.has(conn)) return; // closed by us meanwhile
  connections.get(conn)._readAvailable();
}

function onNicClosed(conn: i32, b: i32): void {
  if (!connections.has(conn)) return;
  const c = connections.get(conn);
  c._peerClosed = true;
  // With bytes still queued, try to send now: after a reset nic_send fails and the SDK closes
  // the connection; after a half-close the peer may still be reading.
  if (c.pendingBytes > 0) c._flush();
  if (!c._closed) c._readAvailable(); // delivers what is still buffered, then onPeerClosed
}

function onNicTxCredit(conn: i32, bytes: i32): void {
  if (!connections.has(conn)) return;
  connections.get(conn)._flush();
}

function install(): void {
  if (installed) return;
  installed = true;
  setEventHandler(EV_NIC_ACCEPT, onNicAccept);
  setEventHandler(EV_NIC_DATA, onNicData);
  setEventHandler(EV_NIC_CLOSED, onNicClosed);
  setEventHandler(EV_NIC_TX_CREDIT, onNicTxCredit);
}

/**
 * Listens on virtual port `port`; each accepted connection is made by `factory` (a
 * function, not a closure: AssemblyScript has none). Returns 0 or a negative error.
 */
export function listen(port: i32, factory: () => Connection): i32 {
  install();
  const r = nic_listen(port);
  if (r >= 0) listeners.set(port, factory);
  return r;
}

/** Open connections (accepted and not yet closed). */
export function connectionCount(): i32 {
  return connections.size;
}
