// The logging channel's transport: one WebSocket per primary/backup pair, one channel frame
// per binary message (protocol/channel-frames.ts). A frame that does not decode, or a hello
// with the wrong VM or token, closes that connection with a reason; the host goes on.

import { WebSocket, WebSocketServer, type RawData } from "ws";
import { decodeChannelMessage, encodeChannelMessage, isChannelError } from "../../protocol/channel-frames.js";
import type { ChannelMessage } from "./messages.js";

/** WebSocket close code for a peer that broke the protocol (RFC 6455: policy violation). */
const CLOSE_PROTOCOL = 1008;

export interface ChannelEvents {
  message(message: ChannelMessage): void;
  close(reason: string): void;
}

/** One end of a channel, over an open (or opening) WebSocket. */
export class Channel {
  private closed = false;
  /** Encoded bytes sent and received on this connection: the logging bandwidth's figures. */
  bytesSent = 0;
  bytesReceived = 0;

  constructor(
    private readonly socket: WebSocket,
    private readonly events: ChannelEvents,
    private readonly log: (line: Record<string, unknown>) => void,
  ) {
    socket.binaryType = "nodebuffer";
    socket.on("message", (data: RawData, isBinary: boolean) => this.receive(data, isBinary));
    socket.on("close", (code, reason) => this.closedBy(`closed (${code}${reason.length > 0 ? ` ${reason}` : ""})`));
    socket.on("error", (error) => this.closedBy(`error: ${error.message}`));
  }

  get open(): boolean {
    return !this.closed && this.socket.readyState === WebSocket.OPEN;
  }

  send(message: ChannelMessage): void {
    if (!this.open) return;
    const frame = encodeChannelMessage(message);
    this.bytesSent += frame.length;
    this.socket.send(frame);
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
): Channel {
  const socket = new WebSocket(url, { maxPayload: 64 * 1024 * 1024 });
  socket.on("open", () => events.open());
  return new Channel(socket, events, log);
}

export function listenForChannels(
  host: string,
  port: number,
  onSocket: (socket: WebSocket) => void,
): Promise<{ server: WebSocketServer; port: number }> {
  return new Promise((resolve, reject) => {
    const server = new WebSocketServer({ host, port, maxPayload: 64 * 1024 * 1024 });
    server.once("error", reject);
    server.on("connection", onSocket);
    server.once("listening", () => {
      const address = server.address();
      resolve({ server, port: typeof address === "string" || address === null ? port : address.port });
    });
  });
}
