// The cluster service's side of the in-browser replica: it opens a replica feed on the host
// that runs the VM's primary (feed.ts), keeps what arrives, and serves it over plain HTTP to
// the browser's replica worker, which reads it with synchronous requests between stretches of
// guest code (a worker running Wasm never returns to its event loop to read a WebSocket):
//
//   POST   /api/vms/:vm/replicas           open one: {id, start} (start: feed.ts ReplicaStart)
//   GET    /api/replicas/:id/module        the instrumented module (application/wasm)
//   GET    /api/replicas/:id/snapshot      the snapshot at start.seq (snapshot-portable.ts)
//   GET    /api/replicas/:id/records?from=SEQ
//                                          record frames from SEQ on (protocol/codec.ts), once
//                                          there are any or after REPLICA_POLL_MS (then empty);
//                                          once none will follow, `x-lockstep-end: <reason>`
//   DELETE /api/replicas/:id               close it
//
// Asking from SEQ says the browser holds every record before it: those are dropped here. Every
// buffer is bounded: a browser that stops reading is dropped after REPLICA_IDLE_MS, one that
// falls REPLICA_BUFFER_BYTES_MAX behind is ended with a reason it is shown.

import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { WebSocket } from "ws";
import { decodeRecords } from "../../protocol/codec.js";
import { ApiError, sendJson } from "../cluster/http.js";
import type { Logger } from "../log.js";
import type { ReplicaStart } from "./feed.js";

/** Replicas open at once, over all VMs: each holds a module, a snapshot and a log buffer. */
export const REPLICA_SESSIONS_MAX = 8;
/** Log bytes kept for one browser that has not asked for them yet. */
export const REPLICA_BUFFER_BYTES_MAX = 64 * 1024 * 1024;
/** A records request waits this long for records before it answers empty. */
export const REPLICA_POLL_MS = 1_000;
/** A replica whose browser has not asked for anything this long is closed. */
export const REPLICA_IDLE_MS = 30_000;
/** One answer carries at most this many bytes of records: the browser asks again at once. */
const RECORDS_ANSWER_BYTES_MAX = 4 * 1024 * 1024;
/**
 * Records are answered in stretches: once this many bytes are there, or once the oldest has
 * waited RECORDS_GATHER_MS. A busy VM logs a batch every few hundred microseconds; a request
 * for each would cost the primary's machine more than the replay does (bench/replica.ts).
 */
const RECORDS_GATHER_BYTES = 256 * 1024;
const RECORDS_GATHER_MS = 50;
/** The host's feed must deliver the start, module and snapshot within this long. */
const OPEN_TIMEOUT_MS = 20_000;
/** The module and the snapshot: a 1 GiB guest is the most a host runs. */
const FEED_FRAME_BYTES_MAX = 1100 * 1024 * 1024;

interface Chunk {
  /** When it arrived from the host (performance.now()). */
  receivedMs: number;
  firstSeq: bigint;
  /** Exclusive. */
  endSeq: bigint;
  bytes: Uint8Array;
}

class ReplicaSession {
  start: ReplicaStart | null = null;
  module: Uint8Array | null = null;
  snapshot: Uint8Array | null = null;
  private readonly chunks: Chunk[] = [];
  private bufferedBytes = 0;
  private nextSeq = 0n;
  /** Records below this were dropped: the browser said it holds them. */
  private keptFromSeq = 0n;
  ended: string | null = null;
  lastAskedMs = performance.now();
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly id: string,
    readonly vm: string,
    readonly socket: WebSocket,
  ) {}

  /** A frame of the feed, in order: start, module, snapshot, then records. */
  receive(data: Buffer, isBinary: boolean): void {
    if (this.ended !== null) return;
    if (this.start === null) {
      if (isBinary) return this.end("the host's feed began with a binary frame");
      let start: ReplicaStart;
      try {
        start = JSON.parse(data.toString("utf8")) as ReplicaStart;
      } catch {
        return this.end("the host's feed began with something that is not JSON");
      }
      if (start.t !== "start" || !Number.isSafeInteger(start.seq) || start.seq < 0) return this.end("the host's feed began without a start");
      this.start = start;
      this.nextSeq = this.keptFromSeq = BigInt(start.seq);
      return;
    }
    if (!isBinary) return this.end("the host's feed sent text after its start");
    if (this.module === null) {
      this.module = new Uint8Array(data);
      return;
    }
    if (this.snapshot === null) {
      this.snapshot = new Uint8Array(data);
      this.wake();
      return;
    }
    let count: number;
    try {
      // Checked here, not only in the browser: a host that sends garbage or skips records
      // ends this replica with a reason, instead of a replay that fails somewhere later.
      count = decodeRecords(data, { expectSeq: this.nextSeq }).length;
    } catch (error) {
      return this.end(`the host's feed sent bad records: ${(error as Error).message}`);
    }
    if (count === 0) return;
    this.chunks.push({ receivedMs: performance.now(), firstSeq: this.nextSeq, endSeq: this.nextSeq + BigInt(count), bytes: new Uint8Array(data) });
    this.nextSeq += BigInt(count);
    this.bufferedBytes += data.length;
    if (this.bufferedBytes > REPLICA_BUFFER_BYTES_MAX) return this.end(`the browser fell ${REPLICA_BUFFER_BYTES_MAX >> 20} MiB behind the primary's log`);
    this.wake();
  }

  end(reason: string): void {
    if (this.ended !== null) return;
    this.ended = reason;
    this.socket.terminate();
    this.wake();
  }

  /** Drops what the browser holds (records < fromSeq) and returns what follows, up to a bound. */
  take(fromSeq: bigint): Uint8Array[] {
    if (fromSeq < this.keptFromSeq) throw new ApiError("BAD_REQUEST", `records before ${this.keptFromSeq} were dropped: the browser asked past them`);
    while (this.chunks.length > 0 && this.chunks[0]!.endSeq <= fromSeq) {
      const chunk = this.chunks.shift()!;
      this.bufferedBytes -= chunk.bytes.length;
      this.keptFromSeq = chunk.endSeq;
    }
    const first = this.chunks[0];
    if (first !== undefined && first.firstSeq !== fromSeq) {
      throw new ApiError("BAD_REQUEST", `records are sent from ${first.firstSeq}, in whole batches; ${fromSeq} is not where one starts`);
    }
    const out: Uint8Array[] = [];
    let bytes = 0;
    for (const chunk of this.chunks) {
      if (out.length > 0 && bytes + chunk.bytes.length > RECORDS_ANSWER_BYTES_MAX) break;
      out.push(chunk.bytes);
      bytes += chunk.bytes.length;
    }
    return out;
  }

  /**
   * How much longer an answer should gather records (called after take(), so every chunk held
   * is one the browser lacks): none once RECORDS_GATHER_BYTES are there, or the oldest has
   * waited RECORDS_GATHER_MS, or no more will come.
   */
  gatherMs(): number {
    const oldest = this.chunks[0];
    if (oldest === undefined || this.ended !== null || this.bufferedBytes >= RECORDS_GATHER_BYTES) return 0;
    return Math.max(0, oldest.receivedMs + RECORDS_GATHER_MS - performance.now());
  }

  /** Resolves on the next change (records, the end) or after `ms`. */
  changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }

  private wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }
}

export class ReplicaSessions {
  private readonly sessions = new Map<string, ReplicaSession>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly log: Logger) {
    this.sweeper = setInterval(() => this.sweep(), REPLICA_IDLE_MS / 3);
    this.sweeper.unref();
  }

  /** Opens a replica of `vm` from the feed at `feedUrl` (ws://host/observe/vm) on its primary's host. */
  async open(vm: string, feedUrl: string, hostToken: string): Promise<{ id: string; start: ReplicaStart }> {
    this.sweep();
    if (this.sessions.size >= REPLICA_SESSIONS_MAX) throw new ApiError("UNAVAILABLE", `${REPLICA_SESSIONS_MAX} replicas are open already: close one`);
    const id = randomBytes(12).toString("base64url");
    const socket = new WebSocket(feedUrl, { headers: { authorization: `Bearer ${hostToken}` }, maxPayload: FEED_FRAME_BYTES_MAX, perMessageDeflate: false });
    const session = new ReplicaSession(id, vm, socket);
    this.sessions.set(id, session);
    socket.on("message", (data, isBinary) => session.receive(data as Buffer, isBinary));
    socket.on("close", (code, reason) => session.end(reason.length > 0 ? reason.toString() : `the primary's host closed the feed (${code})`));
    socket.on("error", (error) => session.end(`the primary's host feed failed: ${error.message}`));
    const deadline = performance.now() + OPEN_TIMEOUT_MS;
    while (session.snapshot === null && session.ended === null && performance.now() < deadline) await session.changed(deadline - performance.now());
    if (session.snapshot === null) {
      const reason = session.ended ?? `no snapshot from the primary's host within ${OPEN_TIMEOUT_MS} ms`;
      this.close(id);
      throw new ApiError("UNAVAILABLE", `cannot replicate ${vm}: ${reason}`);
    }
    this.log.info("replica opened", { vm, replica: id, seq: session.start!.seq, icount: session.start!.icount, event: "replicaOpened" });
    return { id, start: session.start! };
  }

  /** Serves GET /api/replicas/:id/{module,snapshot,records}. */
  async serve(res: ServerResponse, id: string, what: string, url: URL): Promise<void> {
    const session = this.named(id);
    session.lastAskedMs = performance.now();
    if (what === "module") return sendBytes(res, session.module!, "application/wasm");
    if (what === "snapshot") return sendBytes(res, session.snapshot!, "application/octet-stream");
    if (what !== "records") throw new ApiError("NOT_FOUND", `no replica resource ${what}`);
    const from = url.searchParams.get("from") ?? "";
    if (!/^\d{1,20}$/.test(from)) throw new ApiError("BAD_REQUEST", "records?from=SEQ: a log position");
    const fromSeq = BigInt(from);
    let chunks = session.take(fromSeq);
    if (chunks.length === 0 && session.ended === null) {
      await session.changed(REPLICA_POLL_MS);
      chunks = session.take(fromSeq);
    }
    for (let waitMs = session.gatherMs(); waitMs > 0; waitMs = session.gatherMs()) {
      await session.changed(waitMs);
      chunks = session.take(fromSeq);
    }
    session.lastAskedMs = performance.now();
    const headers: Record<string, string> = {};
    if (chunks.length === 0 && session.ended !== null) headers["x-lockstep-end"] = encodeURIComponent(session.ended);
    return sendBytes(res, Buffer.concat(chunks), "application/octet-stream", headers);
  }

  close(id: string): void {
    const session = this.sessions.get(id);
    if (session === undefined) return;
    this.sessions.delete(id);
    session.end("closed");
    this.log.info("replica closed", { vm: session.vm, replica: id, event: "replicaClosed" });
  }

  closeAll(): void {
    clearInterval(this.sweeper);
    for (const id of [...this.sessions.keys()]) this.close(id);
  }

  private named(id: string): ReplicaSession {
    const session = this.sessions.get(id);
    if (session === undefined) throw new ApiError("NOT_FOUND", `no replica ${id}: it was closed, or its browser was away over ${REPLICA_IDLE_MS / 1000} s`);
    return session;
  }

  private sweep(): void {
    const now = performance.now();
    for (const [id, session] of this.sessions) if (now - session.lastAskedMs > REPLICA_IDLE_MS) this.close(id);
  }
}

function sendBytes(res: ServerResponse, body: Uint8Array, type: string, headers: Record<string, string> = {}): void {
  res.writeHead(200, { "content-type": type, "content-length": body.length, "cache-control": "no-store", ...headers });
  res.end(body);
}

/** The request names a replica resource: [id, what] of /api/replicas/:id/:what. */
export function replicaRoute(req: IncomingMessage, pathname: string): [string, string] | null {
  const match = /^\/api\/replicas\/([A-Za-z0-9_-]{1,32})(?:\/(module|snapshot|records))?$/.exec(pathname);
  if (match === null || req.method === undefined) return null;
  return [match[1]!, match[2] ?? ""];
}
