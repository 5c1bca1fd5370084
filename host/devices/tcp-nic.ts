// The virtual NIC's main-thread half in live and record modes: each virtual port the guest
// listens on is a real TCP server, each client connection a virtual connection.
//
// Bounded both ways: the socket is paused while the guest has RX_BUFFER_BYTES_MAX bytes of it
// unread, and transmit credit goes back to the guest only as the kernel takes the bytes, so
// a client that stops reading slows the guest's sends instead of growing a buffer.

import net from "node:net";
import { EventKind } from "../../protocol/records.js";
import type { NicDevice } from "../vm/machine.js";
import type { DeviceEvent } from "../vm/messages.js";
import { CONNECTIONS_MAX, RX_BUFFER_BYTES_MAX, TX_WINDOW_BYTES } from "../vm/limits.js";

/**
 * Credit goes back in chunks, or once the guest's window is half used, so that a connection
 * that sends many small replies adds a credit record per 64 KiB, not one per reply.
 */
const TX_CREDIT_CHUNK_BYTES = 64 * 1024;

export interface ListenAddress {
  host: string;
  port: number;
}

interface Connection {
  socket: net.Socket;
  rxUnread: number;
  paused: boolean;
  /** Bytes the guest sent that it has not had credit for: its window is the rest. */
  txOutstanding: number;
  txCredit: number;
  closedReported: boolean;
}

export class TcpNic implements NicDevice {
  /** Local sockets die with this host: a backup going live starts without connections. */
  readonly streams = false;
  private readonly servers = new Map<number, net.Server>();
  private readonly connections = new Map<number, Connection>();
  private nextConnId = 1;

  constructor(
    private readonly addressFor: (virtualPort: number) => ListenAddress,
    private readonly deliver: (event: DeviceEvent) => void,
    private readonly onListening: (virtualPort: number, address: ListenAddress) => void,
    private readonly onError: (message: string) => void,
  ) {}

  listen(virtualPort: number): void {
    if (this.servers.has(virtualPort)) return;
    const address = this.addressFor(virtualPort);
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(virtualPort, socket));
    server.on("error", (error) => this.onError(`cannot listen on ${address.host}:${address.port}: ${error.message}`));
    server.listen(address.port, address.host, () => {
      const bound = server.address() as net.AddressInfo;
      this.onListening(virtualPort, { host: bound.address, port: bound.port });
    });
    this.servers.set(virtualPort, server);
  }

  private accept(virtualPort: number, socket: net.Socket): void {
    if (this.connections.size >= CONNECTIONS_MAX) {
      socket.destroy();
      return;
    }
    const id = this.nextConnId++;
    const connection: Connection = {
      socket,
      rxUnread: 0,
      paused: false,
      txOutstanding: 0,
      txCredit: 0,
      closedReported: false,
    };
    this.connections.set(id, connection);
    this.deliver({ kind: EventKind.NicAccept, arg: id, value: virtualPort });
    socket.on("data", (chunk: Buffer) => {
      connection.rxUnread += chunk.length;
      if (connection.rxUnread >= RX_BUFFER_BYTES_MAX && !connection.paused) {
        connection.paused = true;
        socket.pause();
      }
      this.deliver({ kind: EventKind.NicData, arg: id, value: chunk.length, data: new Uint8Array(chunk) });
    });
    const closed = () => {
      if (connection.closedReported) return;
      connection.closedReported = true;
      this.deliver({ kind: EventKind.NicClosed, arg: id, value: 0 });
    };
    socket.on("end", closed);
    socket.on("close", () => {
      closed();
      this.connections.delete(id);
    });
    socket.on("error", () => socket.destroy());
  }

  /** The guest read `bytes` from its receive buffer: the socket may be read again. */
  rxConsumed(connId: number, bytes: number): void {
    const connection = this.connections.get(connId);
    if (connection === undefined) return;
    connection.rxUnread -= bytes;
    if (connection.paused && connection.rxUnread < RX_BUFFER_BYTES_MAX / 2) {
      connection.paused = false;
      connection.socket.resume();
    }
  }

  send(connId: number, _offset: number, data: Uint8Array): void {
    const connection = this.connections.get(connId);
    if (connection === undefined || connection.socket.destroyed) return;
    connection.txOutstanding += data.length;
    connection.socket.write(data, (error) => {
      if (error) return;
      connection.txCredit += data.length;
      if (connection.txCredit >= TX_CREDIT_CHUNK_BYTES || connection.txOutstanding >= TX_WINDOW_BYTES / 2) {
        const bytes = connection.txCredit;
        connection.txCredit = 0;
        connection.txOutstanding -= bytes;
        this.deliver({ kind: EventKind.NicTxCredit, arg: connId, value: bytes });
      }
    });
  }

  rxAck(): void {}

  /**
   * A backup going live: the replayed guest still holds the primary's connection ids (their
   * NicClosed events are pending), so new connections are numbered past them. Reusing one
   * would let the guest's close of the old connection close the new one.
   */
  goLive(_streams: unknown, connIdsFrom: number): void {
    this.nextConnId = Math.max(this.nextConnId, connIdsFrom);
  }

  close(connId: number): void {
    const connection = this.connections.get(connId);
    if (connection === undefined) return;
    connection.closedReported = true;
    connection.socket.end();
    this.connections.delete(connId);
  }

  async shutdown(): Promise<void> {
    for (const connection of this.connections.values()) connection.socket.end();
    const closing = [...this.servers.values()].map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const connection of this.connections.values()) connection.socket.destroy();
    this.connections.clear();
    await Promise.all(closing);
    this.servers.clear();
  }
}
