// The virtual NIC's main-thread half when clients reach the guest through a switch
// (docs/switch.md): each client connection is a stream of the switch, carried over one link,
// with byte offsets both ways, so that it outlives the primary's host.
//
// Determinism is unchanged: accepts, client bytes, FINs and credit reach the guest as the same
// device events a TcpNic delivers, and are logged and replayed the same way. What is new is
// only in offsets, which are a function of the log (StreamPosition):
//   - client bytes at an offset the guest already has are dropped here, before any event;
//   - sends and closes carry the guest's own offsets, and the switch drops what a client has;
//   - `rxAck` (a nic_rx_ack output, released under the Output Rule) lets the switch forget
//     client bytes only once the backup holds them, so a new primary can ask for the rest;
//   - output not yet confirmed by credit is kept and sent again after every HELLO: DATA that
//     was in flight on a link that died (with its host, or on a blip) is not lost, and the
//     switch drops the part its client already has.
//
// The link is opened lazily: by the first listen (a primary) or by going live (a backup, which
// then names every stream it knows and how far it has got).

import { EventKind } from "../../protocol/records.js";
import { CONNECTIONS_MAX, RX_BUFFER_BYTES_MAX, TX_WINDOW_BYTES } from "../vm/limits.js";
import type { NetworkGate } from "../network-gate.js";
import type { NicDevice } from "../vm/machine.js";
import type { DeviceEvent, StreamPosition } from "../vm/messages.js";
import { SwitchLink, type LinkStream } from "../switch/link-client.js";

/** As in TcpNic: credit goes to the guest in chunks, so small replies do not each cost a record. */
const TX_CREDIT_CHUNK_BYTES = 64 * 1024;
/** Wait before reconnecting a dropped link (the switch restarting, a network blip). */
const RECONNECT_MS = 100;

export interface SwitchNicOptions {
  /** ws://HOST:PORT of the switch; the link is at /link/VM. */
  url: string;
  vm: string;
  host: string;
  token?: string;
  /** The VM's generation now: a backup that went live runs at a newer one than it started. */
  generation: () => number;
  onError: (message: string) => void;
  /** The guest listens on this port: the switch now sends it its service's clients. */
  onListening?: (virtualPort: number) => void;
  /** The host's network: while cut off, no link (network-gate.ts). */
  network?: NetworkGate;
  /** A link state change, for logs and status. */
  onLink?: (up: boolean, detail: string) => void;
}

interface Stream {
  /** Client bytes delivered to the guest: data below this offset is a repeat. */
  rx: number;
  rxUnread: number;
  paused: boolean;
  /** Output bytes released to the switch, and credit the guest was given for them. */
  tx: number;
  credit: number;
  /** Credit received from the switch, not yet handed to the guest. */
  creditPending: number;
  /** Output [confirmed, tx) in chunks: sent, not yet covered by credit from the switch. */
  unconfirmed: Uint8Array[];
  closedReported: boolean;
}

function newStream(rx = 0, tx = 0, credit = 0, unconfirmed: Uint8Array[] = []): Stream {
  return { rx, rxUnread: 0, paused: false, tx, credit, creditPending: 0, unconfirmed, closedReported: false };
}

export class SwitchNic implements NicDevice {
  readonly streams = true;
  private readonly open = new Map<number, Stream>();
  private readonly listening = new Set<number>();
  private link: SwitchLink | null = null;
  private shuttingDown = false;

  private readonly unsubscribe: (() => void) | undefined;

  constructor(
    private readonly options: SwitchNicOptions,
    private readonly deliver: (event: DeviceEvent) => void,
  ) {
    this.unsubscribe = options.network?.onChange((connected) => {
      if (!connected) this.link?.terminate();
      else if (this.listening.size > 0 || this.open.size > 0) this.connect();
    });
  }

  listen(virtualPort: number): void {
    if (this.listening.has(virtualPort)) return;
    this.listening.add(virtualPort);
    if (this.link === null) this.connect();
    else this.link.listen(virtualPort);
    this.options.onListening?.(virtualPort);
  }

  goLive(positions: StreamPosition[]): void {
    for (const p of positions) {
      this.open.set(p.conn, newStream(p.rx, p.tx, p.credit, p.unconfirmed.length > 0 ? [p.unconfirmed] : []));
    }
    // The Machine names the guest's listening ports right after this: let the HELLO carry them.
    queueMicrotask(() => this.connect());
  }

  rxConsumed(conn: number, bytes: number): void {
    const stream = this.open.get(conn);
    if (stream === undefined) return;
    stream.rxUnread -= bytes;
    if (stream.paused && stream.rxUnread < RX_BUFFER_BYTES_MAX / 2) {
      stream.paused = false;
      this.link?.resume(conn);
    }
  }

  send(conn: number, offset: number, data: Uint8Array): void {
    const stream = this.open.get(conn);
    if (stream === undefined) return;
    stream.tx = Math.max(stream.tx, offset + data.length);
    stream.unconfirmed.push(data);
    this.link?.data(conn, offset, data);
  }

  close(conn: number, offset: number): void {
    const stream = this.open.get(conn);
    if (stream === undefined) return;
    stream.closedReported = true;
    this.open.delete(conn);
    this.link?.close(conn, offset);
  }

  rxAck(conn: number, offset: number): void {
    if (this.open.has(conn)) this.link?.ack(conn, offset);
  }

  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    this.unsubscribe?.();
    this.link?.terminate();
    this.link = null;
    this.open.clear();
  }

  // ---- the link ------------------------------------------------------------------------------

  private connect(): void {
    if (this.shuttingDown || this.link !== null || this.options.network?.connected === false) return;
    const streams: LinkStream[] = [...this.open].map(([stream, s]) => ({ stream, rx: s.rx, tx: s.tx, credit: s.credit + s.creditPending }));
    const link = new SwitchLink({
      url: this.options.url,
      vm: this.options.vm,
      generation: this.options.generation(),
      host: this.options.host,
      token: this.options.token,
      listening: [...this.listening],
      streams,
    });
    this.link = link;
    link.onWelcome = () => this.options.onLink?.(true, `generation ${this.options.generation()}`);
    // Behind the HELLO, in order: what may not have reached the clients yet.
    for (const [conn, s] of this.open) {
      let offset = s.tx - s.unconfirmed.reduce((sum, chunk) => sum + chunk.length, 0);
      for (const chunk of s.unconfirmed) {
        link.data(conn, offset, chunk);
        offset += chunk.length;
      }
    }
    link.onOpen = (stream, vport) => this.accepted(stream, vport);
    link.onData = (stream, offset, bytes) => this.received(stream, offset, bytes);
    link.onFin = (stream) => this.ended(stream);
    link.onGone = (stream) => this.ended(stream);
    link.onCredit = (stream, bytes) => this.credited(stream, bytes);
    link.onClose = (reason) => {
      if (this.link !== link) return;
      this.link = null;
      this.options.onLink?.(false, reason);
      // A newer generation owns the VM's clients: this side is stale and about to halt.
      if (/stale generation/.test(reason)) return;
      if (!this.shuttingDown) setTimeout(() => this.connect(), RECONNECT_MS);
    };
  }

  private accepted(conn: number, vport: number): void {
    if (this.open.has(conn) || !this.listening.has(vport) || this.open.size >= CONNECTIONS_MAX) {
      // A duplicate OPEN (the switch resends it when unsure) or one the guest cannot take.
      if (!this.open.has(conn)) this.link?.close(conn, 0);
      return;
    }
    this.open.set(conn, newStream());
    this.deliver({ kind: EventKind.NicAccept, arg: conn, value: vport });
  }

  private received(conn: number, offset: number, bytes: Uint8Array): void {
    const stream = this.open.get(conn);
    if (stream === undefined) return;
    if (offset > stream.rx) {
      this.options.onError(`stream ${conn}: client bytes at ${offset}, expected ${stream.rx}: a gap, dropped`);
      return;
    }
    const fresh = bytes.subarray(Math.min(bytes.length, stream.rx - offset));
    if (fresh.length === 0) return;
    stream.rx += fresh.length;
    stream.rxUnread += fresh.length;
    if (stream.rxUnread >= RX_BUFFER_BYTES_MAX && !stream.paused) {
      stream.paused = true;
      this.link?.pause(conn);
    }
    this.deliver({ kind: EventKind.NicData, arg: conn, value: fresh.length, data: fresh.slice() });
  }

  private ended(conn: number): void {
    const stream = this.open.get(conn);
    if (stream === undefined || stream.closedReported) return;
    stream.closedReported = true;
    this.deliver({ kind: EventKind.NicClosed, arg: conn, value: 0 });
  }

  private credited(conn: number, bytes: number): void {
    const stream = this.open.get(conn);
    if (stream === undefined) return;
    stream.creditPending += bytes;
    confirm(stream, bytes);
    const outstanding = stream.tx - stream.credit;
    if (stream.creditPending >= TX_CREDIT_CHUNK_BYTES || outstanding >= TX_WINDOW_BYTES / 2) {
      const grant = stream.creditPending;
      stream.creditPending = 0;
      stream.credit += grant;
      this.deliver({ kind: EventKind.NicTxCredit, arg: conn, value: grant });
    }
  }
}

/** The switch's client took `bytes` more of the stream's output: stop keeping them. */
function confirm(stream: Stream, bytes: number): void {
  let drop = bytes;
  while (drop > 0 && stream.unconfirmed.length > 0) {
    const first = stream.unconfirmed[0]!;
    if (first.length <= drop) {
      stream.unconfirmed.shift();
      drop -= first.length;
    } else {
      stream.unconfirmed[0] = first.subarray(drop);
      drop = 0;
    }
  }
}
