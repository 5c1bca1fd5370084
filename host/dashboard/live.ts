// The dashboard's live feed: a WebSocket at /api/live on `lockstep up`'s HTTP server.
//
// Server → client, JSON text frames:
//   {"type":"hello","status":{...},"events":[...]}   once, on connecting (events: the last 100)
//   {"type":"status","ts":ms,"status":{...}}          every STATUS_INTERVAL_MS (status without events)
//   {"type":"event","event":{...}}                    each cluster event as it is logged
//
// Authentication: with a cluster token, a client sends `Authorization: Bearer <token>` on the
// upgrade (programs), or, since a browser's WebSocket cannot set headers, its first message is
// {"type":"auth","token":"..."} (the page: the token stays out of URLs and server logs).
// Nothing is sent before that. A wrong token closes with 4401, none in time with 4408.
//
// Each client's send buffer is bounded: a client that does not read (a stalled tab, a slow
// link) is dropped once LIVE_BUFFER_BYTES_MAX is queued for it, never buffered without limit.

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { type WebSocket, WebSocketServer } from "ws";
import type { ClusterEvent } from "../cluster/embedded.js";
import { ApiError, checkToken, toJson } from "../cluster/http.js";
import type { Logger } from "../log.js";
import { sameSecret } from "../secret.js";
import { checkOrigin } from "./static.js";

export const LIVE_PATH = "/api/live";
/** How often a fresh status goes to the clients: charts get a point per interval. */
export const STATUS_INTERVAL_MS = 500;
/** Queued bytes past which a client is dropped: a few seconds of status snapshots. */
export const LIVE_BUFFER_BYTES_MAX = 1024 * 1024;
/** Open feeds at once: each costs a status snapshot per interval. */
export const LIVE_CLIENTS_MAX = 32;
/** A client may send nothing but its auth message. */
const CLIENT_MESSAGE_BYTES_MAX = 4096;
const AUTH_TIMEOUT_MS = 5_000;

export const CLOSE_UNAUTHORIZED = 4401;
export const CLOSE_AUTH_TIMEOUT = 4408;
export const CLOSE_TOO_MANY = 4429;

export interface LiveSource {
  status(): Promise<Record<string, unknown>>;
  /** Calls `listener` with every event from now on; returns the unsubscribe. */
  onEvent(listener: (event: ClusterEvent) => void): () => void;
}

export class LiveHub {
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: CLIENT_MESSAGE_BYTES_MAX, perMessageDeflate: false });
  /** Clients that passed authentication and receive the feed. */
  private readonly clients = new Set<WebSocket>();
  private pending = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly unsubscribe: () => void;
  private polling = false;
  private closed = false;
  /** Clients dropped for not reading, since start (for the tests and the logs). */
  dropped = 0;

  constructor(
    private readonly source: LiveSource,
    private readonly options: { token: string | null; log: Logger; intervalMs?: number },
  ) {
    this.timer = setInterval(() => void this.pushStatus(), options.intervalMs ?? STATUS_INTERVAL_MS);
    this.timer.unref();
    this.unsubscribe = source.onEvent((event) => this.broadcast({ type: "event", event }));
  }

  /** Takes an HTTP upgrade for LIVE_PATH; answers an HTTP error and closes the socket otherwise. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // A client that resets mid-handshake must not take the cluster down with an unhandled error.
    socket.on("error", () => socket.destroy());
    const refuse = (status: number, code: string, message: string) => {
      const body = toJson({ error: { code, message } });
      socket.end(`HTTP/1.1 ${status} ${code}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    };
    const pathname = new URL(req.url ?? "/", "http://up").pathname;
    if (this.closed || pathname !== LIVE_PATH) return refuse(404, "NOT_FOUND", `no WebSocket at ${pathname}`);
    try {
      checkOrigin(req);
    } catch (error) {
      return refuse(403, "UNAUTHORIZED", (error as Error).message);
    }
    if (this.clients.size + this.pending >= LIVE_CLIENTS_MAX) return refuse(503, "UNAVAILABLE", `${LIVE_CLIENTS_MAX} live feeds are open already`);
    // A header, when given, must be right; without one the first message decides.
    let authorized = this.options.token === null;
    if (req.headers.authorization !== undefined) {
      try {
        checkToken(req, this.options.token);
        authorized = true;
      } catch (error) {
        return refuse(401, "UNAUTHORIZED", (error as ApiError).message);
      }
    }
    // Counted only once upgraded: a handshake that fails never calls back.
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on("error", () => ws.terminate());
      if (authorized) return void this.admit(ws);
      this.pending++;
      let settled = false;
      const settle = () => {
        if (settled) return false;
        settled = true;
        this.pending--;
        clearTimeout(timer);
        return true;
      };
      const timer = setTimeout(() => settle() && ws.close(CLOSE_AUTH_TIMEOUT, "no auth message in time"), AUTH_TIMEOUT_MS);
      ws.once("close", () => settle());
      ws.once("message", (data, isBinary) => {
        if (!settle()) return;
        if (!isBinary && sameSecret(authToken(data.toString()), this.options.token!)) return void this.admit(ws);
        ws.close(CLOSE_UNAUTHORIZED, "missing or wrong token");
      });
    });
  }

  /** Drops every client and stops pushing. */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.unsubscribe();
    for (const ws of this.clients) ws.terminate();
    this.clients.clear();
    this.wss.close();
  }

  private async admit(ws: WebSocket): Promise<void> {
    if (this.closed) return void ws.terminate();
    ws.on("close", () => this.clients.delete(ws));
    this.clients.add(ws);
    try {
      const status = await this.source.status();
      this.send(ws, toJson({ type: "hello", status: { ...status, events: undefined }, events: status.events ?? [] }));
    } catch (error) {
      this.options.log.warn("dashboard status failed", { code: "LIVE_STATUS_FAILED", error: (error as Error).message });
    }
  }

  private async pushStatus(): Promise<void> {
    if (this.clients.size === 0 || this.polling || this.closed) return;
    this.polling = true;
    try {
      const status = await this.source.status();
      this.broadcast({ type: "status", ts: Date.now(), status: { ...status, events: undefined } });
    } catch (error) {
      this.options.log.warn("dashboard status failed", { code: "LIVE_STATUS_FAILED", error: (error as Error).message });
    } finally {
      this.polling = false;
    }
  }

  private broadcast(message: unknown): void {
    if (this.clients.size === 0) return;
    const text = toJson(message);
    for (const ws of this.clients) this.send(ws, text);
  }

  /** Sends, unless the client has more than LIVE_BUFFER_BYTES_MAX waiting: then it is dropped. */
  private send(ws: WebSocket, text: string): void {
    if (ws.readyState !== ws.OPEN) return;
    if (ws.bufferedAmount + Buffer.byteLength(text) > LIVE_BUFFER_BYTES_MAX) {
      // close() would queue its frame behind the very bytes the client does not read.
      this.clients.delete(ws);
      ws.terminate();
      this.dropped++;
      this.options.log.warn("dashboard client dropped: it does not read its live feed", { code: "LIVE_CLIENT_SLOW", queuedBytes: ws.bufferedAmount });
      return;
    }
    ws.send(text);
  }
}

function authToken(text: string): string {
  try {
    const message = JSON.parse(text) as { type?: unknown; token?: unknown };
    return message.type === "auth" && typeof message.token === "string" ? message.token : "";
  } catch {
    return "";
  }
}
