// The storage server: virtual disks and test-and-set registers behind a WebSocket
// (docs/storage.md). One process serves every host; primary and backup share its disks, and
// its registers decide which of them goes live (§2.3).
//
// Every connection is on its own: bytes that are not frames, a wrong version or token, a
// request before hello, an unknown op, all end that connection with an error frame and one
// JSON log line, and nobody else notices. Everything is bounded: connections, requests in
// flight per connection and bytes in flight server-wide (beyond them: BUSY, nothing done),
// frame size (the WebSocket message limit), time to say hello, output waiting for a slow
// reader (the server stops reading that connection), open disk files, cached registers.

import { randomBytes, createHash, timingSafeEqual } from "node:crypto";
import fs from "node:fs/promises";
import { createServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import net from "node:net";
import path from "node:path";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import {
  BLOCK_BYTES,
  boundedText,
  decodeFrame,
  encodeFrame,
  FLAG_CREATED,
  FLAG_WON,
  FRAME_BYTES_MAX,
  FRAME_ERROR_STATUS,
  FrameType,
  type HelloFrame,
  IO_BLOCKS_MAX,
  isFrameError,
  Op,
  OP_NAMES,
  type RequestFrame,
  requestProblem,
  type ResponseFrame,
  Status,
  statusName,
} from "../../protocol/storage-frames.js";
import { assert, LockstepError } from "../errors.js";
import { DiskStore } from "./disks.js";
import { OpError } from "./errors.js";
import { ensureDir } from "./fsutil.js";
import { type Logger, SILENT_LOGGER } from "../log.js";
import { RegisterStore } from "./registers.js";

export interface StorageServerOptions {
  /** Where disks and registers live; created if missing. One server per directory (a LOCK file). */
  dir: string;
  /** Default 127.0.0.1. Any address that is not loopback requires `token`. */
  host?: string;
  /** 0: any free port (see `port` on the result). Default 0. */
  port?: number;
  /** Shared secret every client must present in its hello; null: none required. */
  token?: string | null;
  connectionsMax?: number;
  /** Requests in flight per connection; beyond it the server answers BUSY. */
  inflightMax?: number;
  /** Data bytes in flight server-wide (write data and read results); beyond it: BUSY. */
  inflightBytesMax?: number;
  /** A connection that has not said hello by then is closed. */
  helloTimeoutMs?: number;
  /** A connection that has not answered a ping for this long is dropped. */
  keepaliveMs?: number;
  disksOpenMax?: number;
  registerVmsCachedMax?: number;
  log?: Logger;
}

export const STORAGE_DEFAULTS = {
  host: "127.0.0.1",
  port: 0,
  connectionsMax: 64,
  inflightMax: 64,
  inflightBytesMax: 256 * 1024 * 1024,
  helloTimeoutMs: 5_000,
  keepaliveMs: 15_000,
  disksOpenMax: 256,
  registerVmsCachedMax: 4096,
} as const;

/** A connection whose unsent output passes this stops being read until it drains below half. */
const OUTPUT_PAUSE_BYTES = 4 * 1024 * 1024;
/** After a close frame, how long a peer has to finish the closing handshake. */
const CLOSE_GRACE_MS = 1_000;

export interface StorageServer {
  /** ws://host:port, with the bound port. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Random per process; clients see it in the welcome. */
  readonly serverId: string;
  /** Answers requests in progress, closes every connection, the files and the lock. */
  close(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (net.isIPv4(host)) return host.startsWith("127.");
  if (net.isIPv6(host)) return host === "::1" || /^::ffff:127\./i.test(host);
  return false;
}

/** Starts a storage server; resolves once it listens. Start failures are LockstepErrors. */
export async function startStorageServer(options: StorageServerOptions): Promise<StorageServer> {
  const host = options.host ?? STORAGE_DEFAULTS.host;
  const token = options.token ?? null;
  // Anyone who can reach the port could write any disk and win any register: off loopback,
  // only with a token.
  if (!isLoopback(host) && token === null) {
    throw new LockstepError("USAGE", `refusing to listen on ${host} without a token: pass --token (or bind to 127.0.0.1)`);
  }
  const dir = path.resolve(options.dir);
  const lockFile = await prepareDir(dir);
  const server = new Server(dir, lockFile, host, token, options);
  try {
    await server.listen(options.port ?? STORAGE_DEFAULTS.port);
  } catch (error) {
    await fs.unlink(lockFile).catch(() => undefined);
    throw error;
  }
  return server;
}

// ---------------------------------------------------------------------------------------------

interface Connection {
  readonly id: number;
  readonly ws: WebSocket;
  readonly remote: string;
  state: "hello" | "ready" | "closing";
  clientId: string | null;
  sessionKey: string | null;
  session: number;
  inflight: number;
  /** Answered a ping since the last keepalive tick. */
  alive: boolean;
  helloTimer: NodeJS.Timeout | null;
  pausedForOutput: boolean;
}

type Answer = Omit<ResponseFrame, "type" | "id">;

const OK: Answer = { status: Status.Ok, flags: 0, value: 0, text: "", data: new Uint8Array(0) };

class Server implements StorageServer {
  readonly serverId = randomBytes(8).toString("hex");
  url = "";
  port = 0;

  private readonly log: Logger;
  private readonly limits: Required<Omit<StorageServerOptions, "dir" | "host" | "port" | "token" | "log">>;
  private readonly tokenDigest: Buffer | null;
  private readonly disks: DiskStore;
  private readonly registers: RegisterStore;
  private readonly connections = new Map<number, Connection>();
  /** (client id, instance) → its newest connection: a newer session fences the older. */
  private readonly sessions = new Map<string, Connection>();
  private http: HttpServer | null = null;
  private wss: WebSocketServer | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private nextConnectionId = 1;
  private inflightBytes = 0;
  private closing: Promise<void> | null = null;

  constructor(
    private readonly dir: string,
    private readonly lockFile: string,
    readonly host: string,
    token: string | null,
    options: StorageServerOptions,
  ) {
    this.log = options.log ?? SILENT_LOGGER;
    this.limits = {
      connectionsMax: options.connectionsMax ?? STORAGE_DEFAULTS.connectionsMax,
      inflightMax: options.inflightMax ?? STORAGE_DEFAULTS.inflightMax,
      inflightBytesMax: options.inflightBytesMax ?? STORAGE_DEFAULTS.inflightBytesMax,
      helloTimeoutMs: options.helloTimeoutMs ?? STORAGE_DEFAULTS.helloTimeoutMs,
      keepaliveMs: options.keepaliveMs ?? STORAGE_DEFAULTS.keepaliveMs,
      disksOpenMax: options.disksOpenMax ?? STORAGE_DEFAULTS.disksOpenMax,
      registerVmsCachedMax: options.registerVmsCachedMax ?? STORAGE_DEFAULTS.registerVmsCachedMax,
    };
    for (const [name, value] of Object.entries(this.limits)) {
      assert(Number.isSafeInteger(value) && value >= 1, `storage limit ${name} must be a positive integer`);
    }
    // The largest request must fit the byte budget, or it could never run.
    assert(this.limits.inflightBytesMax >= IO_BLOCKS_MAX * BLOCK_BYTES, "inflightBytesMax below one IO");
    // Compared as digests: equal lengths, so timingSafeEqual applies and the length leaks nothing.
    this.tokenDigest = token === null ? null : digest(token);
    this.disks = new DiskStore(path.join(dir, "disks"), this.log, this.limits.disksOpenMax);
    this.registers = new RegisterStore(path.join(dir, "registers"), this.log, this.limits.registerVmsCachedMax);
  }

  async listen(port: number): Promise<void> {
    // Our own HTTP server rather than ws's, to see (and log) what never becomes a WebSocket.
    const http = createServer((request, response) => {
      this.log.warn("connection rejected", { code: "NOT_WEBSOCKET", detail: `${request.method} without a WebSocket upgrade`, remote: remoteOf(request.socket) });
      response.writeHead(426, { "content-type": "text/plain", connection: "close" }).end("storage speaks WebSocket (docs/storage.md)\n");
    });
    http.on("clientError", (error: NodeJS.ErrnoException, socket) => {
      // Bytes that are not HTTP at all, or headers too slow or too large.
      this.log.warn("connection rejected", { code: error.code ?? "BAD_HTTP", detail: error.message, remote: remoteOf(socket as net.Socket) });
      if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
      else socket.destroy();
    });
    // Sockets that have not upgraded yet are bounded too: a few beyond the connection limit, so
    // that a refusal can still be said over WebSocket; and they must send headers promptly.
    http.maxConnections = this.limits.connectionsMax + 16;
    http.headersTimeout = Math.max(1_000, this.limits.helloTimeoutMs);
    http.requestTimeout = http.headersTimeout;
    await new Promise<void>((resolve, reject) => {
      http.once("listening", resolve);
      http.once("error", (error: NodeJS.ErrnoException) => {
        reject(new LockstepError("USAGE", `cannot listen on ${this.host}:${port}: ${error.code ?? error.message}`));
      });
      http.listen(port, this.host);
    });
    this.http = http;
    const wss = new WebSocketServer({ server: http, maxPayload: FRAME_BYTES_MAX, perMessageDeflate: false, clientTracking: false });
    this.wss = wss;
    const address = http.address();
    assert(typeof address === "object" && address !== null, "a TCP address");
    this.port = address.port;
    this.url = `ws://${net.isIPv6(this.host) ? `[${this.host}]` : this.host}:${this.port}`;
    http.on("error", (error) => this.log.error("server error", { detail: error.message }));
    wss.on("error", (error) => this.log.error("server error", { detail: error.message }));
    wss.on("wsClientError", (error: Error & { code?: string }, socket) => {
      // An HTTP upgrade that is not a valid WebSocket handshake: ws answers 400 and closes.
      this.log.warn("connection rejected", { code: error.code ?? "BAD_UPGRADE", detail: error.message, remote: remoteOf(socket as net.Socket) });
    });
    wss.on("connection", (ws, request) => this.accept(ws, request));
    this.keepaliveTimer = setInterval(() => this.keepalive(), this.limits.keepaliveMs);
    this.keepaliveTimer.unref();
    this.log.info("storage server listening", {
      url: this.url,
      dir: this.dir,
      serverId: this.serverId,
      token: this.tokenDigest !== null,
      ...this.limits,
    });
  }

  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.log.info("storage server closing", { connections: this.connections.size });
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    // No new connections; requests arriving from now on are answered SHUTTING_DOWN; those in
    // progress finish and are answered, then every connection is closed.
    this.wss?.close();
    const httpClosed = new Promise<void>((resolve) => (this.http === null ? resolve() : this.http.close(() => resolve())));
    await this.disks.close();
    await this.registers.close();
    const closed = [...this.connections.values()].map(
      (conn) => new Promise<void>((resolve) => (conn.ws.readyState === WebSocket.CLOSED ? resolve() : conn.ws.once("close", () => resolve()))),
    );
    for (const conn of this.connections.values()) this.reject(conn, Status.ShuttingDown, "the storage server is shutting down", 1001);
    await Promise.all(closed);
    this.http?.closeAllConnections();
    await httpClosed;
    await fs.unlink(this.lockFile).catch(() => undefined);
    this.log.info("storage server closed");
  }

  // -------------------------------------------------------------------------------------------
  // Connections

  private accept(ws: WebSocket, request: IncomingMessage): void {
    const conn: Connection = {
      id: this.nextConnectionId++,
      ws,
      remote: remoteOf(request.socket),
      state: "hello",
      clientId: null,
      sessionKey: null,
      session: 0,
      inflight: 0,
      alive: true,
      helloTimer: null,
      pausedForOutput: false,
    };
    ws.on("error", (error: Error & { code?: string }) => {
      // ws's own protocol checks (message over maxPayload, bad WebSocket framing): ws closes
      // the connection itself right after this event.
      this.log.warn("connection rejected", { conn: conn.id, client: conn.clientId, remote: conn.remote, code: error.code ?? "WS_ERROR", detail: error.message });
      conn.state = "closing";
    });
    ws.on("close", (code) => this.closed(conn, code));
    if (this.closing !== null) {
      this.reject(conn, Status.ShuttingDown, "the storage server is shutting down", 1001);
      return;
    }
    if (this.connections.size >= this.limits.connectionsMax) {
      this.reject(conn, Status.TooManyConnections, `${this.connections.size} connections, limit ${this.limits.connectionsMax}`, 1013);
      return;
    }
    this.connections.set(conn.id, conn);
    conn.helloTimer = setTimeout(() => {
      this.reject(conn, Status.HelloTimeout, `no hello within ${this.limits.helloTimeoutMs} ms`, 1008);
    }, this.limits.helloTimeoutMs);
    ws.on("pong", () => (conn.alive = true));
    ws.on("message", (data, isBinary) => this.receive(conn, data, isBinary));
    this.log.debug("connection opened", { conn: conn.id, remote: conn.remote });
  }

  private closed(conn: Connection, code: number): void {
    if (conn.helloTimer) clearTimeout(conn.helloTimer);
    const known = this.connections.delete(conn.id);
    if (conn.sessionKey !== null && this.sessions.get(conn.sessionKey) === conn) this.sessions.delete(conn.sessionKey);
    if (known) this.log.info("connection closed", { conn: conn.id, client: conn.clientId, remote: conn.remote, closeCode: code });
  }

  /**
   * Ends a connection: one log line, an error frame saying why, a close frame, and a
   * terminate if the peer does not finish the closing handshake in time.
   */
  private reject(conn: Connection, status: Status, message: string, closeCode: number, fields: Record<string, unknown> = {}): void {
    if (conn.state === "closing") return;
    conn.state = "closing";
    if (conn.helloTimer) clearTimeout(conn.helloTimer);
    const level = status === Status.ShuttingDown ? "info" : "warn";
    this.log[level]("connection rejected", {
      conn: conn.id,
      client: conn.clientId,
      remote: conn.remote,
      code: statusName(status),
      detail: message,
      ...fields,
    });
    if (conn.ws.readyState === WebSocket.OPEN) {
      conn.ws.send(encodeFrame({ type: FrameType.Error, status, message: boundedText(message) }));
      conn.ws.close(closeCode, boundedText(message, 120));
    }
    setTimeout(() => conn.ws.terminate(), CLOSE_GRACE_MS).unref();
  }

  private keepalive(): void {
    for (const conn of this.connections.values()) {
      if (!conn.alive) {
        this.log.warn("connection dropped: no pong", { conn: conn.id, client: conn.clientId, remote: conn.remote, keepaliveMs: this.limits.keepaliveMs });
        conn.state = "closing";
        conn.ws.terminate();
        continue;
      }
      conn.alive = false;
      conn.ws.ping();
    }
  }

  private receive(conn: Connection, data: RawData, isBinary: boolean): void {
    if (conn.state === "closing") return;
    if (!isBinary) {
      this.reject(conn, Status.BadFrame, "a text message: storage frames are binary messages", 1003, { code: "FRAME_TEXT" });
      return;
    }
    // With the default binaryType a message is one Buffer.
    assert(Buffer.isBuffer(data), "binary messages arrive as one Buffer");
    let frame;
    try {
      frame = decodeFrame(data);
    } catch (error) {
      if (!isFrameError(error)) throw error;
      const status = FRAME_ERROR_STATUS[error.code];
      this.reject(conn, status, error.message, status === Status.TooLarge ? 1009 : 1002, { code: error.code, detail: error.detail, bytes: data.length });
      return;
    }
    if (conn.state === "hello") {
      if (frame.type !== FrameType.Hello) {
        this.reject(conn, Status.Protocol, `expected a hello, got a ${FrameType[frame.type]} frame`, 1002);
        return;
      }
      this.hello(conn, frame);
      return;
    }
    if (frame.type !== FrameType.Request) {
      this.reject(conn, Status.Protocol, `expected a request, got a ${FrameType[frame.type]} frame`, 1002);
      return;
    }
    this.request(conn, frame);
  }

  private hello(conn: Connection, hello: HelloFrame): void {
    conn.clientId = hello.clientId;
    if (this.tokenDigest !== null && !timingSafeEqual(digest(hello.token), this.tokenDigest)) {
      this.reject(conn, Status.Unauthorized, "wrong token", 1008);
      return;
    }
    const key = `${hello.clientId}\u0000${hello.instance}`;
    const previous = this.sessions.get(key);
    if (previous !== undefined) {
      if (previous.session >= hello.session) {
        this.reject(conn, Status.Protocol, `session ${hello.session} is not newer than this client's session ${previous.session}`, 1008);
        return;
      }
      // The client reconnected while its old connection still looks open here: requests of
      // the old session that have not arrived yet must not run after the new session's, so
      // the old connection is closed and read no more (docs/storage.md, "Ordering").
      this.log.info("session fenced", { conn: previous.id, client: hello.clientId, by: conn.id, session: previous.session });
      previous.state = "closing";
      previous.ws.close(1008, "replaced by a newer session");
      setTimeout(() => previous.ws.terminate(), CLOSE_GRACE_MS).unref();
    }
    if (conn.helloTimer) clearTimeout(conn.helloTimer);
    conn.helloTimer = null;
    conn.sessionKey = key;
    conn.session = hello.session;
    conn.state = "ready";
    this.sessions.set(key, conn);
    conn.ws.send(
      encodeFrame({
        type: FrameType.Welcome,
        serverId: this.serverId,
        inflightMax: this.limits.inflightMax,
        ioBlocksMax: IO_BLOCKS_MAX,
        blockBytes: BLOCK_BYTES,
      }),
    );
    this.log.info("client connected", { conn: conn.id, client: hello.clientId, session: hello.session, remote: conn.remote });
  }

  // -------------------------------------------------------------------------------------------
  // Requests

  private request(conn: Connection, request: RequestFrame): void {
    if (!(request.op in OP_NAMES)) {
      // A peer of this version never sends one (a new op comes with a new version): a bug or
      // garbage that passed the checksum. Answered, so the caller does not wait, then closed.
      this.answer(conn, request.id, { ...OK, status: Status.UnknownOp, text: `unknown op ${request.op}` }, null);
      this.reject(conn, Status.UnknownOp, `unknown op ${request.op}`, 1002, { op: request.op });
      return;
    }
    const op = request.op as Op;
    const fields = { conn: conn.id, client: conn.clientId, vm: request.vm, op: OP_NAMES[op] };
    if (this.closing !== null) {
      this.answer(conn, request.id, { ...OK, status: Status.ShuttingDown, text: "the storage server is shutting down" }, null);
      return;
    }
    const problem = requestProblem(request);
    if (problem !== null) {
      this.log.warn("bad request", { ...fields, code: "BAD_REQUEST", detail: problem });
      this.answer(conn, request.id, { ...OK, status: Status.BadRequest, text: problem }, null);
      return;
    }
    const bytes = request.data.length + (op === Op.Read ? request.b * BLOCK_BYTES : 0);
    if (conn.inflight >= this.limits.inflightMax || this.inflightBytes + bytes > this.limits.inflightBytesMax) {
      this.log.debug("busy", { ...fields, inflight: conn.inflight, inflightBytes: this.inflightBytes });
      this.answer(conn, request.id, {
        ...OK,
        status: Status.Busy,
        text: `${conn.inflight} requests and ${this.inflightBytes} bytes in flight, limits ${this.limits.inflightMax} and ${this.limits.inflightBytesMax}`,
      }, null);
      return;
    }
    conn.inflight++;
    this.inflightBytes += bytes;
    this.execute(conn, op, request).then(
      (answer) => this.answer(conn, request.id, answer, bytes),
      (error: unknown) => {
        if (!(error instanceof OpError)) throw error;
        this.answer(conn, request.id, { ...OK, status: error.status, text: boundedText(error.message) }, bytes);
      },
    );
  }

  /** Starts the operation now (synchronously up to its queue): arrival order is execution order. */
  private async execute(conn: Connection, op: Op, request: RequestFrame): Promise<Answer> {
    const { vm, a, b, text, data } = request;
    switch (op) {
      case Op.OpenDisk: {
        const opened = await this.disks.open(vm, a);
        return { ...OK, flags: opened.created ? FLAG_CREATED : 0, value: opened.blocks };
      }
      case Op.Read:
        return { ...OK, data: await this.disks.read(vm, a, b) };
      case Op.Write:
        await this.disks.write(vm, a, data);
        return OK;
      case Op.TestAndSet: {
        const outcome = await this.registers.testAndSet(vm, a, text);
        this.log.info(outcome.won ? "test-and-set won" : "test-and-set lost", {
          vm,
          generation: a,
          owner: text,
          ...(outcome.won ? {} : { current: { generation: outcome.generation, owner: outcome.owner } }),
          conn: conn.id,
          client: conn.clientId,
        });
        return { ...OK, flags: outcome.won ? FLAG_WON : 0, value: outcome.generation, text: outcome.owner };
      }
      case Op.ReadGeneration: {
        const register = await this.registers.readGeneration(vm);
        return register === null ? OK : { ...OK, value: register.generation, text: register.owner };
      }
    }
  }

  /**
   * Sends an answer. `counted`: the data bytes of a request that holds a share of the limits
   * (released once the answer is written out), or null for one answered without running.
   */
  private answer(conn: Connection, id: number, answer: Answer, counted: number | null): void {
    const release = () => {
      if (counted === null) return;
      conn.inflight--;
      this.inflightBytes -= counted;
      assert(conn.inflight >= 0 && this.inflightBytes >= 0, "in-flight counters balance");
    };
    const ws = conn.ws;
    if (ws.readyState !== WebSocket.OPEN) {
      release();
      return;
    }
    ws.send(encodeFrame({ type: FrameType.Response, id, ...answer }), { binary: true }, () => {
      release();
      if (conn.pausedForOutput && ws.bufferedAmount <= OUTPUT_PAUSE_BYTES / 2) {
        conn.pausedForOutput = false;
        ws.resume();
      }
    });
    if (!conn.pausedForOutput && ws.bufferedAmount > OUTPUT_PAUSE_BYTES) {
      // The client is not reading its answers: stop reading its requests until it does.
      conn.pausedForOutput = true;
      ws.pause();
      this.log.debug("connection paused: output backlog", { conn: conn.id, client: conn.clientId, bufferedBytes: ws.bufferedAmount });
    }
  }
}

/** Creates the directory layout and takes the directory's lock; returns the lock's path. */
async function prepareDir(dir: string): Promise<string> {
  try {
    await fs.mkdir(dir, { recursive: true });
    const stat = await fs.stat(dir);
    if (!stat.isDirectory()) throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" });
    await ensureDir(path.join(dir, "disks"), dir);
    await ensureDir(path.join(dir, "registers"), dir);
  } catch (error) {
    throw new LockstepError("DISK_IO", `cannot use storage directory ${dir}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  const lockFile = path.join(dir, "LOCK");
  // Two passes at most: the second after removing a lock left by a server that died.
  for (let pass = 0; pass < 2; pass++) {
    try {
      const handle = await fs.open(lockFile, "wx", 0o644);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return lockFile;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new LockstepError("DISK_IO", `cannot lock storage directory ${dir}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
    }
    const pid = Number((await fs.readFile(lockFile, "utf8").catch(() => "")).trim());
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
      throw new LockstepError("DISK_IO", `storage directory ${dir} is in use by process ${pid} (${lockFile})`);
    }
    await fs.unlink(lockFile).catch(() => undefined);
  }
  throw new LockstepError("DISK_IO", `cannot lock storage directory ${dir}: ${lockFile} keeps reappearing`);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

function remoteOf(socket: net.Socket): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

function digest(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}
