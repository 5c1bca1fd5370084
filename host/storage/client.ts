// The storage client: what a host uses to reach its VMs' disks and the test-and-set registers.
//
// One WebSocket, requests multiplexed on it by id. Every request has a timeout; requests in
// flight are bounded (the smaller of our limit and the server's), and those waiting for a slot
// are bounded too (beyond: BUSY at once). When the connection drops, the client reconnects by
// itself with a doubling, capped backoff, for as long as it is open: a host that cannot reach
// storage "just waits until it can" (§2.3). Meanwhile its state is `unreachable`, which callers
// observe (`state`, `onState`, `waitReachable`); the FT layer must not go live in that state.
//
// What a request's failure means (StorageError.code):
//   DISCONNECTED  sent, then the connection dropped: it may or may not have run. Retryable.
//   UNREACHABLE   not sent: no connection at the moment (or it dropped before sending). Retryable.
//   TIMEOUT       sent, no answer in time. The connection is then dropped as suspect, so that a
//                 late execution of it cannot follow requests sent after a retry (a new session
//                 fences the old one on the server). Retryable.
//   BUSY, SHUTTING_DOWN: the server did nothing. Retryable.
//   anything else: the server's answer; not retryable (IO_ERROR, BAD_REQUEST, NO_DISK, ...).
// Retrying is the caller's choice: every operation is idempotent.

import { randomInt } from "node:crypto";
import { WebSocket, type RawData } from "ws";
import {
  type ErrorFrame,
  encodeFrame,
  FLAG_CREATED,
  FLAG_WON,
  FRAME_BYTES_MAX,
  FrameType,
  IO_BLOCKS_MAX,
  IO_DATA_BYTES_MAX,
  Op,
  OP_NAMES,
  decodeFrame,
  isFrameError,
  requestProblem,
  type ResponseFrame,
  Status,
  statusName,
  TEXT_BYTES_MAX,
  type WelcomeFrame,
} from "../../protocol/storage-frames.js";
import { assert } from "../errors.js";
import { statusError, StorageError, storageError } from "./errors.js";

export type StorageState =
  /** Before the first welcome (only while `connect` is waiting). */
  | "connecting"
  /** Connected and welcomed: requests are sent. */
  | "ready"
  /** Lost the connection; reconnecting. Requests fail with UNREACHABLE. */
  | "unreachable"
  /** `close()` was called, or the server refused us for good (`fatalError`). */
  | "closed";

export interface StorageClientOptions {
  /** Who we are, in the server's logs. Unique per host is best. */
  clientId: string;
  token?: string | null;
  /** Default 10 s. */
  requestTimeoutMs?: number;
  /** Requests in flight at once (default 64; the server's limit applies if lower). */
  inflightMax?: number;
  /** Requests waiting for an in-flight slot (default 1024); beyond it requests fail BUSY. */
  queueMax?: number;
  /** How long `connect` waits for the first connection (default 10 s). */
  connectTimeoutMs?: number;
  /** Reconnect backoff: first delay, doubling up to the max (defaults 50 ms, 2 s), with jitter. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Ping period (default 2 s); a connection with no pong for one period is dropped. */
  keepaliveMs?: number;
}

export const CLIENT_DEFAULTS = {
  requestTimeoutMs: 10_000,
  inflightMax: 64,
  queueMax: 1024,
  connectTimeoutMs: 10_000,
  reconnectMinMs: 50,
  reconnectMaxMs: 2_000,
  keepaliveMs: 2_000,
} as const;

export interface DiskInfo {
  blocks: number;
  /** This open created the disk (it was not there). */
  created: boolean;
}

export interface TestAndSetAnswer {
  won: boolean;
  /** Won: the requested generation. Lost: the highest generation set, at least the requested one. */
  generation: number;
  /** Won: us. Lost: the owner of `generation`. */
  owner: string;
}

export interface GenerationOwner {
  generation: number;
  owner: string;
}

export type StateListener = (state: StorageState, reason: string) => void;

interface Call {
  readonly id: number;
  readonly frame: Uint8Array;
  readonly resolve: (response: ResponseFrame) => void;
  readonly reject: (error: StorageError) => void;
  readonly timer: NodeJS.Timeout;
  sent: boolean;
}

const U32_MAX = 0xffff_ffff;
/** Statuses of an error frame after which reconnecting cannot help: a bug or a wrong setup. */
const FATAL_STATUSES: ReadonlySet<Status> = new Set([
  Status.Unauthorized,
  Status.BadVersion,
  Status.BadFrame,
  Status.TooLarge,
  Status.Protocol,
  Status.UnknownOp,
]);

export class StorageClient {
  /** Random per client object: with the client id it names this client across reconnects. */
  readonly instance = randomInt(2 ** 47);

  private stateNow: StorageState = "connecting";
  private readonly listeners = new Set<StateListener>();
  private readonly readyWaiters = new Set<{ resolve: () => void; reject: (error: StorageError) => void }>();

  private ws: WebSocket | null = null;
  private session = 0;
  private welcomed = false;
  private welcomeTimer: NodeJS.Timeout | null = null;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private pongPending = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectFailures = 0;
  private cutOff = false;
  private closeWaiter: Promise<void> | null = null;

  private readonly pending = new Map<number, Call>();
  private readonly waiting: Call[] = [];
  private inflight = 0;
  private inflightLimit: number;
  private lastId = 0;

  /** Why the last connection ended or failed, for messages. */
  lastError = "not connected yet";
  /** Set when the server refused this client for good (wrong token, version...). */
  fatalError: StorageError | null = null;
  /** The welcoming server's id; changes when the server restarted. */
  serverId: string | null = null;

  private readonly options: Required<Omit<StorageClientOptions, "token">> & { token: string };

  private constructor(
    readonly url: string,
    options: StorageClientOptions,
  ) {
    this.options = { ...CLIENT_DEFAULTS, ...options, token: options.token ?? "" };
    const o = this.options;
    assert(typeof o.clientId === "string" && o.clientId.length > 0 && Buffer.byteLength(o.clientId) <= 128, "clientId: 1 to 128 bytes");
    assert(Buffer.byteLength(o.token) <= 256, "token: at most 256 bytes");
    for (const name of ["requestTimeoutMs", "inflightMax", "queueMax", "connectTimeoutMs", "reconnectMinMs", "reconnectMaxMs", "keepaliveMs"] as const) {
      assert(Number.isSafeInteger(o[name]) && o[name] >= 1, `${name} must be a positive integer`);
    }
    assert(o.reconnectMinMs <= o.reconnectMaxMs, "reconnectMinMs ≤ reconnectMaxMs");
    this.inflightLimit = o.inflightMax;
  }

  /**
   * Connects and waits for the server's welcome, retrying with backoff for up to
   * `connectTimeoutMs`. Rejects UNREACHABLE after that, or at once with the server's answer if
   * it refuses us for good (UNAUTHORIZED, BAD_VERSION).
   */
  static async connect(url: string, options: StorageClientOptions): Promise<StorageClient> {
    const client = new StorageClient(url, options);
    client.open();
    try {
      await client.waitReachable(client.options.connectTimeoutMs);
    } catch (error) {
      await client.close();
      throw error;
    }
    return client;
  }

  get state(): StorageState {
    return this.stateNow;
  }

  /** True only when requests can be sent now. */
  get reachable(): boolean {
    return this.stateNow === "ready";
  }

  /** Calls `listener` on every state change; returns the function that unsubscribes it. */
  onState(listener: StateListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves when the client is ready (at once if it is). Rejects with the closing error if the
   * client is or becomes closed, or UNREACHABLE after `timeoutMs` (default: no limit).
   */
  waitReachable(timeoutMs?: number): Promise<void> {
    if (this.stateNow === "ready") return Promise.resolve();
    if (this.stateNow === "closed") return Promise.reject(this.closedError());
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const waiter = {
        resolve: () => {
          if (timer) clearTimeout(timer);
          resolve();
        },
        reject: (error: StorageError) => {
          if (timer) clearTimeout(timer);
          reject(error);
        },
      };
      this.readyWaiters.add(waiter);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.readyWaiters.delete(waiter);
          reject(storageError("UNREACHABLE", `storage server ${this.url} not reachable within ${timeoutMs} ms: ${this.lastError}`));
        }, Math.max(0, timeoutMs));
      }
    });
  }

  // -------------------------------------------------------------------------------------------
  // Operations

  /** Opens the VM's disk, creating it (sparse) if it does not exist. */
  async openDisk(vm: string, blocks: number): Promise<DiskInfo> {
    const response = await this.call(Op.OpenDisk, vm, blocks, 0, "", EMPTY);
    return { blocks: response.value, created: (response.flags & FLAG_CREATED) !== 0 };
  }

  /** Reads `count` (1..256) blocks at `block`. */
  async read(vm: string, block: number, count: number): Promise<Uint8Array> {
    const response = await this.call(Op.Read, vm, block, count, "", EMPTY);
    return response.data;
  }

  /** Writes whole blocks at `block`; resolves once they are durable on the server. */
  async write(vm: string, block: number, data: Uint8Array): Promise<void> {
    if (!(data instanceof Uint8Array) || data.length % 4096 !== 0 || data.length > IO_DATA_BYTES_MAX) {
      throw storageError("BAD_REQUEST", `write data must be 1..${IO_BLOCKS_MAX} whole blocks`);
    }
    await this.call(Op.Write, vm, block, data.length / 4096, "", data);
  }

  /** Contends for register (vm, generation) as `owner` (§2.3). Won is final; so is lost. */
  async testAndSet(vm: string, generation: number, owner: string): Promise<TestAndSetAnswer> {
    const response = await this.call(Op.TestAndSet, vm, generation, 0, owner, EMPTY);
    return { won: (response.flags & FLAG_WON) !== 0, generation: response.value, owner: response.text };
  }

  /** The highest generation set for `vm`, and its owner; null if none is. */
  async readGeneration(vm: string): Promise<GenerationOwner | null> {
    const response = await this.call(Op.ReadGeneration, vm, 0, 0, "", EMPTY);
    return response.value === 0 ? null : { generation: response.value, owner: response.text };
  }

  /**
   * Cut off (NetworkGate): the connection is dropped and not made again, and requests fail
   * UNREACHABLE, until this is called with false.
   */
  setCutOff(cutOff: boolean): void {
    if (cutOff === this.cutOff || this.stateNow === "closed") return;
    this.cutOff = cutOff;
    if (cutOff) {
      this.drop("this host is cut off from the network");
      if (this.ws === null) this.stopTimers();
    } else if (this.ws === null) {
      this.stopTimers();
      this.open();
    }
  }

  /** Fails everything pending with CLOSED, stops reconnecting, closes the connection. */
  close(): Promise<void> {
    if (this.closeWaiter !== null) return this.closeWaiter;
    this.setState("closed", "closed by the caller");
    this.failAll("CLOSED", "the storage client was closed");
    this.stopTimers();
    const ws = this.ws;
    this.ws = null;
    this.closeWaiter =
      ws === null || ws.readyState === WebSocket.CLOSED
        ? Promise.resolve()
        : new Promise<void>((resolve) => {
            ws.once("close", () => resolve());
            if (ws.readyState === WebSocket.CONNECTING) {
              ws.terminate();
              return;
            }
            ws.close(1000, "client closing");
            // Bounded: a server that does not answer the close frame is cut off.
            setTimeout(() => ws.terminate(), 1_000).unref();
          });
    return this.closeWaiter;
  }

  private call(op: Op, vm: string, a: number, b: number, text: string, data: Uint8Array): Promise<ResponseFrame> {
    const problem = requestProblem({ op, vm, a, b, text, data });
    if (problem !== null) return Promise.reject(storageError("BAD_REQUEST", `${OP_NAMES[op]}: ${problem}`));
    if (this.stateNow === "closed") return Promise.reject(this.closedError());
    if (this.stateNow !== "ready") {
      return Promise.reject(storageError("UNREACHABLE", `storage server ${this.url} unreachable: ${this.lastError}`));
    }
    if (this.waiting.length >= this.options.queueMax) {
      return Promise.reject(storageError("BUSY", `${this.waiting.length} requests waiting, limit ${this.options.queueMax}`));
    }
    const id = this.nextId();
    const frame = encodeFrame({ type: FrameType.Request, id, op, vm, a, b, text, data });
    return new Promise((resolve, reject) => {
      const call: Call = {
        id,
        frame,
        resolve,
        reject,
        sent: false,
        timer: setTimeout(() => this.timedOut(call), this.options.requestTimeoutMs),
      };
      this.pending.set(id, call);
      this.waiting.push(call);
      this.pump();
    });
  }

  private nextId(): number {
    // Bounded: at most pending.size + 1 ids are tried, and pending is bounded.
    do {
      this.lastId = this.lastId === U32_MAX ? 1 : this.lastId + 1;
    } while (this.pending.has(this.lastId));
    return this.lastId;
  }

  /** Sends waiting requests while slots are free, in the order they were made. */
  private pump(): void {
    const ws = this.ws;
    if (ws === null || !this.welcomed) return;
    while (this.inflight < this.inflightLimit && this.waiting.length > 0) {
      const call = this.waiting.shift()!;
      call.sent = true;
      this.inflight++;
      ws.send(call.frame, { binary: true });
    }
  }

  private timedOut(call: Call): void {
    if (this.pending.get(call.id) !== call) return;
    this.pending.delete(call.id);
    if (!call.sent) {
      this.waiting.splice(this.waiting.indexOf(call), 1);
      call.reject(storageError("TIMEOUT", `no slot to send within ${this.options.requestTimeoutMs} ms`));
      return;
    }
    this.inflight--;
    call.reject(storageError("TIMEOUT", `no answer within ${this.options.requestTimeoutMs} ms`));
    // The request may still run later. Dropping the connection makes the server fence it (a
    // new session closes the old), so a retry cannot be overtaken by the original.
    this.drop(`request timed out after ${this.options.requestTimeoutMs} ms`);
  }

  private settle(response: ResponseFrame): void {
    const call = this.pending.get(response.id);
    // Unknown id: the answer to a request that timed out on a connection since dropped.
    if (call === undefined || !call.sent) return;
    this.pending.delete(response.id);
    clearTimeout(call.timer);
    this.inflight--;
    if (response.status === Status.Ok) call.resolve(response);
    else call.reject(statusError(response.status, response.text));
    this.pump();
  }

  /** On a dropped connection: sent requests may have run (DISCONNECTED), the rest did not. */
  private failAll(code: "DISCONNECTED" | "CLOSED", detail: string): void {
    const calls = [...this.pending.values()];
    this.pending.clear();
    this.waiting.length = 0;
    this.inflight = 0;
    for (const call of calls) {
      clearTimeout(call.timer);
      if (code === "CLOSED") call.reject(storageError("CLOSED", detail));
      else if (call.sent) call.reject(storageError("DISCONNECTED", `connection lost with the request in flight: ${detail}`));
      else call.reject(storageError("UNREACHABLE", `connection lost before the request was sent: ${detail}`));
    }
  }

  // -------------------------------------------------------------------------------------------
  // The connection

  private open(): void {
    this.reconnectTimer = null;
    this.session++;
    this.welcomed = false;
    const ws = new WebSocket(this.url, {
      maxPayload: FRAME_BYTES_MAX,
      perMessageDeflate: false,
      handshakeTimeout: this.options.requestTimeoutMs,
    });
    this.ws = ws;
    ws.on("open", () => {
      if (ws !== this.ws) return;
      ws.send(
        encodeFrame({
          type: FrameType.Hello,
          clientId: this.options.clientId,
          instance: this.instance,
          session: this.session,
          token: this.options.token,
        }),
      );
      this.welcomeTimer = setTimeout(() => this.drop(`no welcome within ${this.options.requestTimeoutMs} ms`), this.options.requestTimeoutMs);
    });
    ws.on("message", (data, isBinary) => {
      if (ws === this.ws) this.receive(data, isBinary);
    });
    ws.on("pong", () => {
      if (ws === this.ws) this.pongPending = false;
    });
    ws.on("error", (error: Error & { code?: string }) => {
      if (ws === this.ws) this.lastError = error.code ?? error.message;
    });
    ws.on("close", (code, reason) => {
      if (ws === this.ws) this.lost(code, reason.toString());
    });
  }

  private receive(data: RawData, isBinary: boolean): void {
    let frame;
    try {
      if (!isBinary || !Buffer.isBuffer(data)) throw new Error("a text or fragmented message");
      frame = decodeFrame(data);
    } catch (error) {
      this.drop(`bad frame from the server: ${isFrameError(error) ? error.message : (error as Error).message}`);
      return;
    }
    switch (frame.type) {
      case FrameType.Welcome:
        if (this.welcomed) return this.drop("a second welcome");
        this.welcomed = true;
        this.welcome(frame);
        return;
      case FrameType.Response:
        if (!this.welcomed) return this.drop("a response before the welcome");
        this.settle(frame);
        return;
      case FrameType.Error:
        this.refused(frame);
        return;
      default:
        this.drop(`unexpected ${FrameType[frame.type]} frame from the server`);
    }
  }

  private welcome(welcome: WelcomeFrame): void {
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    this.welcomeTimer = null;
    if (welcome.blockBytes !== 4096 || welcome.ioBlocksMax < IO_BLOCKS_MAX || welcome.inflightMax < 1) {
      this.fatalError = storageError("PROTOCOL", `server limits unusable: ${JSON.stringify(welcome)}`);
      this.drop(this.fatalError.detail);
      return;
    }
    this.serverId = welcome.serverId;
    this.inflightLimit = Math.min(this.options.inflightMax, welcome.inflightMax);
    this.reconnectFailures = 0;
    this.lastError = "";
    this.pongPending = false;
    this.keepaliveTimer = setInterval(() => this.keepalive(), this.options.keepaliveMs);
    this.setState("ready", `welcomed by server ${welcome.serverId} (session ${this.session})`);
    this.pump();
  }

  /** The server's error frame: the connection is closing. Some refusals are final. */
  private refused(error: ErrorFrame): void {
    this.lastError = `${statusName(error.status)}: ${error.message}`;
    if (FATAL_STATUSES.has(error.status)) {
      this.fatalError = statusError(error.status, `storage server refused the connection: ${error.message}`);
    }
  }

  private keepalive(): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    if (this.pongPending) {
      this.drop(`no pong within ${this.options.keepaliveMs} ms`);
      return;
    }
    this.pongPending = true;
    ws.ping();
  }

  /** Ends the current connection at once; `lost` follows from its close event. */
  private drop(reason: string): void {
    this.lastError = reason;
    this.ws?.terminate();
  }

  private lost(code: number, reason: string): void {
    this.ws = null;
    this.welcomed = false;
    this.stopTimers();
    const why = this.lastError !== "" ? this.lastError : `connection closed (${code}${reason ? ` ${reason}` : ""})`;
    this.lastError = why;
    this.failAll("DISCONNECTED", why);
    if (this.stateNow === "closed") return;
    if (this.fatalError !== null) {
      this.setState("closed", this.fatalError.message);
      return;
    }
    if (this.stateNow === "ready") this.setState("unreachable", why);
    if (this.cutOff) return;
    const delay = Math.min(this.options.reconnectMaxMs, this.options.reconnectMinMs * 2 ** Math.min(this.reconnectFailures, 30));
    this.reconnectFailures++;
    // Jitter in [delay/2, delay]: hosts that lost the same server do not return in lockstep.
    this.reconnectTimer = setTimeout(() => this.open(), Math.ceil(delay / 2 + Math.random() * (delay / 2)));
  }

  private stopTimers(): void {
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.welcomeTimer = null;
    this.keepaliveTimer = null;
    this.reconnectTimer = null;
  }

  private setState(next: StorageState, reason: string): void {
    if (next === this.stateNow) return;
    this.stateNow = next;
    if (next === "ready") {
      for (const waiter of this.readyWaiters) waiter.resolve();
      this.readyWaiters.clear();
    } else if (next === "closed") {
      const error = this.closedError();
      for (const waiter of this.readyWaiters) waiter.reject(error);
      this.readyWaiters.clear();
    }
    for (const listener of this.listeners) listener(next, reason);
  }

  private closedError(): StorageError {
    return this.fatalError ?? storageError("CLOSED", "the storage client is closed");
  }
}

const EMPTY = new Uint8Array(0);

// A response's text must hold any owner the server reports.
assert(TEXT_BYTES_MAX >= 256, "owners fit a response");
