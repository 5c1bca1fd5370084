// The logging channel's transport: one WebSocket per primary/backup pair, one channel frame
// per binary message (protocol/channel-frames.ts). A frame that does not decode, or a hello
// with the wrong VM or token, closes that connection with a reason; the host goes on.
//
// Log compression (docs/performance.md, "Log compression"), off by default: the WebSocket
// permessage-deflate extension, offered by the primary (the client) and accepted by the
// backup's listener, so it is negotiated per connection: if either side has it off, the pair
// runs uncompressed and neither needs to know the other's setting.

import type { Socket } from "node:net";
import { WebSocket, WebSocketServer, type PerMessageDeflateOptions, type RawData } from "ws";
import { decodeChannelMessage, encodeChannelMessage, isChannelError } from "../../protocol/channel-frames.js";
import type { ChannelMessage } from "./messages.js";

/** WebSocket close code for a peer that broke the protocol (RFC 6455: policy violation). */
const CLOSE_PROTOCOL = 1008;

/** "on" turns log compression on for this process and the hosts it starts (`--log-compression`). */
export const LOG_COMPRESSION_ENV = "LOCKSTEP_LOG_COMPRESSION";

/**
 * Frames shorter than this go out uncompressed: acks (about 40 bytes), heartbeats, hellos and
 * entries of a record or two. Under a read-heavy kv load most entries frames hold one request
 * (median 67 bytes) and carry a small share of the bytes: compressing them too took the log
 * from 0.40 to 0.31 of its size for five times as many trips through zlib's thread pool, each
 * of which an output may wait behind (bench/compression.ts).
 */
export const COMPRESS_FRAME_BYTES_MIN = 128;

/**
 * The permessage-deflate settings of both ends, chosen on a recorded kv log
 * (bench/compression.ts; docs/performance.md, "Log compression"):
 * - level 1: the log is repetitive (the same commands, record headers, icounts that differ in
 *   their low bytes), so level 6 or 9 saved only 1 % more at more CPU, on a machine whose two
 *   cores also run the vCPUs.
 * - context takeover with a 32 KiB window (15 bits): a frame is compressed against the frames
 *   before it, which is where the repetition is. Without takeover: 0.42 of the size instead of
 *   0.40, and a fresh zlib stream per message; 11 bits: 0.41. It costs about 256 KiB of zlib
 *   state per connection, in the primary's direction only (the backup's acks are all below the
 *   threshold, so its deflate stream is never made).
 * - concurrencyLimit 2: ws shares one limit among every connection of the process (the first
 *   instance sets it); one compression per core keeps zlib from crowding the vCPUs when a host
 *   runs many primaries. A connection compresses one message at a time in any case.
 * ws's own `threshold` applies only without context takeover: ours is COMPRESS_FRAME_BYTES_MIN,
 * in `Channel.send`.
 */
export function channelDeflate(enabled: boolean): PerMessageDeflateOptions | false {
  if (!enabled) return false;
  return {
    clientNoContextTakeover: false,
    serverNoContextTakeover: false,
    clientMaxWindowBits: 15,
    serverMaxWindowBits: 15,
    zlibDeflateOptions: { level: 1 },
    concurrencyLimit: 2,
  };
}

/**
 * Off unless $LOCKSTEP_LOG_COMPRESSION is "on": the drivers' and daemons' default. Measured on
 * kv (docs/performance.md, "Log compression"), deflate halves the log on the wire but costs
 * SET-heavy loads about 10 % of their requests/s on this 2-core machine: every compressed
 * frame waits for a trip through zlib's thread pool before it leaves, and outputs wait for its
 * ack. The log is a few Mbit/s, which any LAN carries: compression pays only on a link that
 * is slow or priced by the byte (a distant backup), where an operator turns it on.
 */
export function logCompressionDefault(): boolean {
  return process.env[LOG_COMPRESSION_ENV] === "on";
}

export interface ChannelEvents {
  message(message: ChannelMessage): void;
  close(reason: string): void;
}

/** One end of a channel, over an open (or opening) WebSocket. */
export class Channel {
  private closed = false;
  /** Encoded bytes sent and received on this connection: channel frames before compression. */
  bytesSent = 0;
  bytesReceived = 0;
  /** The TCP socket's counters when the connection opened: the HTTP handshake is not the log's. */
  private wireBase: { written: number; read: number } | null = null;

  constructor(
    private readonly socket: WebSocket,
    private readonly events: ChannelEvents,
    private readonly log: (line: Record<string, unknown>) => void,
  ) {
    socket.binaryType = "nodebuffer";
    if (socket.readyState === WebSocket.OPEN) this.opened();
    else socket.once("open", () => this.opened());
    socket.on("message", (data: RawData, isBinary: boolean) => this.receive(data, isBinary));
    socket.on("close", (code, reason) => this.closedBy(`closed (${code}${reason.length > 0 ? ` ${reason}` : ""})`));
    socket.on("error", (error) => this.closedBy(`error: ${error.message}`));
  }

  get open(): boolean {
    return !this.closed && this.socket.readyState === WebSocket.OPEN;
  }

  /** Whether this connection negotiated permessage-deflate (false until it opens). */
  get compressed(): boolean {
    return this.socket.extensions.includes("permessage-deflate");
  }

  /**
   * Bytes written to and read from the TCP connection since it opened: WebSocket headers,
   * masks and compression included, so the logging bandwidth is what the network carries.
   */
  get wireBytesSent(): number {
    const tcp = this.tcp();
    return this.wireBase === null || tcp === undefined ? 0 : tcp.bytesWritten - this.wireBase.written;
  }

  get wireBytesReceived(): number {
    const tcp = this.tcp();
    return this.wireBase === null || tcp === undefined ? 0 : tcp.bytesRead - this.wireBase.read;
  }

  send(message: ChannelMessage): void {
    if (!this.open) return;
    const frame = encodeChannelMessage(message);
    this.bytesSent += frame.length;
    this.socket.send(frame, { compress: frame.length >= COMPRESS_FRAME_BYTES_MIN });
  }

  /** Drops the connection at once, as a dead host would. */
  terminate(): void {
    this.socket.terminate();
    this.closedBy("terminated");
  }

  reject(reason: string): void {
    this.log({ level: "warn", msg: "channel rejected", reason });
    this.socket.close(CLOSE_PROTOCOL, reason.slice(0, 120));
    this.closedBy(reason);
  }

  private receive(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    if (!isBinary) return this.reject("text frame on the logging channel");
    const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as Buffer);
    this.bytesReceived += bytes.length;
    let message: ChannelMessage;
    try {
      message = decodeChannelMessage(bytes);
    } catch (error) {
      if (!isChannelError(error)) throw error;
      return this.reject(error.message);
    }
    this.events.message(message);
  }

  /** ws keeps its net.Socket in `_socket` (not in its types); it stays readable after a close. */
  private tcp(): Socket | undefined {
    return (this.socket as unknown as { _socket?: Socket })._socket;
  }

  private opened(): void {
    const tcp = this.tcp();
    this.wireBase = { written: tcp?.bytesWritten ?? 0, read: tcp?.bytesRead ?? 0 };
  }

  private closedBy(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.events.close(reason);
  }
}

export function connectChannel(
  url: string,
  events: ChannelEvents & { open(): void },
  log: (line: Record<string, unknown>) => void,
  compress = logCompressionDefault(),
): Channel {
  const socket = new WebSocket(url, { maxPayload: 64 * 1024 * 1024, perMessageDeflate: channelDeflate(compress) });
  // The Channel's own open listener first: it takes the socket's counters before the hello.
  const channel = new Channel(socket, events, log);
  socket.on("open", () => events.open());
  return channel;
}

export function listenForChannels(
  host: string,
  port: number,
  onSocket: (socket: WebSocket) => void,
  compress = logCompressionDefault(),
): Promise<{ server: WebSocketServer; port: number }> {
  return new Promise((resolve, reject) => {
    const server = new WebSocketServer({ host, port, maxPayload: 64 * 1024 * 1024, perMessageDeflate: channelDeflate(compress) });
    server.once("error", reject);
    server.on("connection", onSocket);
    server.once("listening", () => {
      const address = server.address();
      resolve({ server, port: typeof address === "string" || address === null ? port : address.port });
    });
  });
}
