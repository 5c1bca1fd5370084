// The switch (docs/switch.md): public TCP ports whose client connections survive the failover
// of the VM behind them. Each client connection is a *stream*, carried to the VM's current
// primary over one WebSocket *link* per VM with byte offsets both ways; when a backup goes
// live, its HELLO says how far it has got on each stream, and the switch moves the stream to
// it: resends the client bytes it lacks, drops the output bytes the client already has.
//
//   GET /api/status     services, and per VM its generation, link and streams (with offsets)
//   WS  /link/:vm       the VM's link (frames: link-frames.ts)
//
// The file has two parts: the per-stream state machine (its states and rules, next), and the
// Switch class, the I/O around it (servers, sockets, the link, logs). Every bound is a named
// limit; a bad client costs its own connection, a bad link peer its own link (close 1008 and
// a log line), never the switch.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import net from "node:net";
import type { Duplex } from "node:stream";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { ApiError, checkToken, isLoopback, sendError, sendJson } from "../cluster/http.js";
import { VM_NAME } from "../cluster/vm-spec.js";
import { assert, LockstepError } from "../errors.js";
import { type Logger, SILENT_LOGGER } from "../log.js";
import { sameSecret } from "../secret.js";
import {
  decodeVmFrame,
  encodeLinkFrame,
  type Hello,
  type HelloStream,
  isLinkFrameError,
  LINK_DATA_BYTES_MAX,
  LINK_FRAME_BYTES_MAX,
  LINK_STREAMS_MAX,
  LINK_VPORTS_MAX,
  linkTypeName,
  LinkType,
  type SwitchFrame,
  type VmFrame,
  LINK_CLOSE_POLICY,
} from "./link-frames.js";

// ---------------------------------------------------------------------------------------------
// Limits

/** Client connections per VM; clients beyond are refused (their socket is closed at once). */
export const STREAMS_PER_VM_MAX = LINK_STREAMS_MAX;
/** Client bytes per stream not yet ACKed (kept for a new primary); the client is paused beyond. */
export const UNACKED_BYTES_MAX = 1024 * 1024;
/** Output bytes per stream written to the client socket but not drained; more is a bad VM. */
export const UNDRAINED_BYTES_MAX = 1024 * 1024;
/** Client bytes kept by the whole switch: every client that sends is paused beyond. */
export const TOTAL_KEPT_BYTES_MAX = 256 * 1024 * 1024;
/**
 * A kept chunk counts as at least this many bytes against the bounds: a client that sends one
 * byte at a time must not make the switch hold a million small Buffers.
 */
export const CHUNK_CHARGE_BYTES_MIN = 256;
/** A link that has not sent its HELLO by then is closed. */
export const HELLO_TIMEOUT_MS = 5_000;
/** Links connected but not yet through their HELLO, switch-wide. */
export const PENDING_LINKS_MAX = 64;
export const SERVICES_MAX = 256;
/** Connections to the HTTP server (links and status requests). */
export const HTTP_CONNECTIONS_MAX = 1024;
/** After the guest closed a stream and its output is out, the client has this long to end its side. */
export const CLOSE_LINGER_MS = 10_000;
/** A peer that does not finish the WebSocket closing handshake by then is cut off. */
const CLOSE_GRACE_MS = 1_000;
/** Refused clients are logged once per this period, with a count, not one line each. */
const REFUSAL_LOG_MS = 1_000;
/** A WebSocket close reason is at most 123 bytes. */
const CLOSE_REASON_BYTES_MAX = 123;
const CLOSE_GOING_AWAY = 1001;
const STREAM_ID_MAX = 0xffff_ffff;

export const SWITCH_PORT_DEFAULT = 7440;
/** Service names appear in flags, logs and the READY line. */
export const SERVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface SwitchLimits {
  streamsPerVmMax: number;
  unackedBytesMax: number;
  undrainedBytesMax: number;
  totalKeptBytesMax: number;
  helloTimeoutMs: number;
}

export const SWITCH_LIMITS: SwitchLimits = {
  streamsPerVmMax: STREAMS_PER_VM_MAX,
  unackedBytesMax: UNACKED_BYTES_MAX,
  undrainedBytesMax: UNDRAINED_BYTES_MAX,
  totalKeptBytesMax: TOTAL_KEPT_BYTES_MAX,
  helloTimeoutMs: HELLO_TIMEOUT_MS,
};

// ---------------------------------------------------------------------------------------------
// The stream state machine
//
// A stream's facts about its client (bytes received and kept, whether it ended, output written
// and drained) live in Stream; its relation to the VM is one of three states:
//
//   Detached ──(HELLO names it: resume at rx)──────────────▶ Open
//   Detached ──(VM listens on the vport, stream fresh: OPEN)─▶ Open
//   Open ─────(the link goes down or is superseded)─────────▶ Detached
//   Open ─────(CLOSE)────────────────────────────────────────▶ Closing
//   any ──────(client socket closed; or reset)──────────────▶ removed (GONE if the VM knows it)
//
// Ordering rules, per stream and per link (they are what makes a failover exact):
//   1. OPEN comes before any DATA or FIN of the stream on that link; a stream the HELLO named
//      needs none.
//   2. Client bytes go in offset order without gaps, from `sent`, which starts at the HELLO's
//      `rx` (or 0 after OPEN); none while the VM has PAUSEd the stream.
//   3. FIN comes once, after the last client byte (its offset is the client's byte count).
//   4. Client bytes are forgotten only when ACKed, and an ACK past `sent` is a protocol error:
//      so a new primary's `rx` is always within the kept bytes, or the stream is broken.
//   5. Output is written to the client only past `written` (a new primary may resend what the
//      client has); output past `written` with a gap before it means bytes are lost: reset.
//   6. CREDIT counts output bytes drained to the client's kernel, so a VM's total credit never
//      exceeds `delivered`; a HELLO's `credit` below it gets the difference at once.
//   7. The client socket ends only once every output byte below the CLOSE offset is written.
//   8. GONE is the last frame of a stream on a link.

/**
 * Not carried by any link: none is up, the link that carried it went down, or the VM does not
 * listen on the stream's vport yet. Client bytes are kept (bounded) and wait for a link.
 */
interface Detached {
  readonly kind: "detached";
}

/** Carried by the VM's current link. */
interface Open {
  readonly kind: "open";
  /** Client bytes sent on this link (rule 2). */
  sent: number;
  /** Credit this link's VM has been given: the HELLO's `credit`, plus every CREDIT since (rule 6). */
  credit: number;
  /** PAUSE from the VM: no client bytes until RESUME. */
  vmPaused: boolean;
  finSent: boolean;
}

/** The guest closed the stream after `closeAt` output bytes: client bytes are dropped from now on. */
interface Closing {
  readonly kind: "closing";
  readonly closeAt: number;
}

type StreamState = Detached | Open | Closing;

/** What a HELLO did to the VM's streams, for the `failover` log line. */
interface RejoinCounts {
  /** Named by the HELLO and resumed where it said; `bytesResent` client bytes sent again. */
  moved: number;
  bytesResent: number;
  /** Not named, new to the VM: OPEN and `bytesOpened` client bytes from offset 0. */
  opened: number;
  bytesOpened: number;
  /** Not named, waiting for the VM to listen on their vport. */
  waiting: number;
  closing: number;
  /** Could not be resumed (rules 4, 5): the client got a reset. */
  reset: number;
  /** Named by the HELLO but unknown here: GONE. */
  gone: number;
}

const DETACHED: Detached = { kind: "detached" };

/** Client bytes from the last ACK up: what a new primary may ask for again. */
class KeptBytes {
  /** Offset of the first byte kept: every byte below it is in the backup's log (ACKed). */
  base = 0;
  /** Client bytes received: the offset just past the last kept byte. */
  end = 0;
  /** What the kept bytes count against the bounds (CHUNK_CHARGE_BYTES_MIN per chunk at least). */
  charge = 0;
  private readonly chunks: Buffer[] = [];

  /** Keeps `chunk`; returns its charge. */
  push(chunk: Buffer): number {
    this.chunks.push(chunk);
    this.end += chunk.length;
    this.charge += chargeOf(chunk.length);
    return chargeOf(chunk.length);
  }

  /** Forgets the bytes below `offset`; returns the charge freed. */
  forget(offset: number): number {
    let freed = 0;
    while (this.base < offset && this.chunks.length > 0) {
      const first = this.chunks[0]!;
      const drop = Math.min(first.length, offset - this.base);
      if (drop === first.length) {
        this.chunks.shift();
        freed += chargeOf(first.length);
      } else {
        this.chunks[0] = first.subarray(drop);
        freed += chargeOf(first.length) - chargeOf(first.length - drop);
      }
      this.base += drop;
    }
    this.charge -= freed;
    return freed;
  }

  clear(): number {
    return this.forget(this.end);
  }

  /** The kept bytes from `offset` (base ≤ offset ≤ end) on, as views; searched from the end, where sends start. */
  *from(offset: number): Generator<Buffer> {
    assert(offset >= this.base && offset <= this.end, "bytes from within the kept range");
    let index = this.chunks.length;
    let at = this.end;
    while (index > 0 && at > offset) at -= this.chunks[--index]!.length;
    for (; index < this.chunks.length; index++) {
      const chunk = this.chunks[index]!;
      if (at + chunk.length > offset) yield chunk.subarray(Math.max(0, offset - at));
      at += chunk.length;
    }
  }
}

function chargeOf(bytes: number): number {
  return Math.max(bytes, CHUNK_CHARGE_BYTES_MIN);
}

// ---------------------------------------------------------------------------------------------
// Services, VMs, links, streams

export interface ServiceSpec {
  name: string;
  vm: string;
  vport: number;
  /** Public address; 127.0.0.1 and port 0 (a free one) by default in the CLI. */
  host: string;
  port: number;
}

interface Service extends ServiceSpec {
  readonly server: net.Server;
  /** "host:port" as bound. */
  address: string;
}

interface Vm {
  readonly name: string;
  /** The newest generation a link was accepted for; null before the first HELLO. */
  generation: number | null;
  link: Link | null;
  /** Virtual ports the current link's guest listens on (HELLO's `listening` and every LISTEN). */
  listening: Set<number>;
  readonly streams: Map<number, Stream>;
}

interface Link {
  readonly id: number;
  readonly ws: WebSocket;
  readonly vm: Vm;
  readonly remote: string;
  phase: "hello" | "up" | "closed";
  /** From the HELLO, for logs. */
  generation: number | null;
  host: string | null;
  helloTimer: NodeJS.Timeout | null;
  /** Resolves once the WebSocket is closed. */
  closed: Promise<void>;
}

interface Stream {
  readonly id: number;
  readonly vm: Vm;
  readonly service: Service;
  readonly socket: net.Socket;
  readonly remote: string;
  state: StreamState;
  readonly kept: KeptBytes;
  /** The client ended its side (TCP FIN). */
  clientEnded: boolean;
  /** The socket is paused: too many client bytes kept (this stream's bound or the switch's). */
  socketPaused: boolean;
  /** Output bytes handed to the client socket. */
  written: number;
  /** Output bytes the socket drained to the kernel. */
  delivered: number;
  lingerTimer: NodeJS.Timeout | null;
}

export interface SwitchOptions {
  /** Address of the HTTP server (status API and links). */
  bind: string;
  port: number;
  /** Required in HELLO and as `Authorization: Bearer` on the API when set; must be set beyond loopback. */
  token: string | null;
  services: ServiceSpec[];
  log?: Logger;
  limits?: Partial<SwitchLimits>;
}

export interface StreamStatus {
  stream: number;
  service: string;
  vport: number;
  remote: string;
  state: StreamState["kind"];
  /** Client bytes received; `acked` of them forgotten; `sent` on the current link (open streams). */
  received: number;
  acked: number;
  sent: number | null;
  clientEnded: boolean;
  socketPaused: boolean;
  vmPaused: boolean;
  /** Output bytes written to the client socket, and drained by it. */
  written: number;
  delivered: number;
  /** Credit the current link's VM has (open streams). */
  credit: number | null;
  closeAt: number | null;
}

export interface VmSwitchStatus {
  vm: string;
  generation: number | null;
  linkConnected: boolean;
  host: string | null;
  listening: number[];
  streamCount: number;
  streams: StreamStatus[];
}

export interface SwitchStatus {
  url: string;
  pid: number;
  services: { name: string; vm: string; vport: number; address: string }[];
  keptBytes: number;
  vms: VmSwitchStatus[];
}

export class Switch {
  readonly url: string;
  private readonly log: Logger;
  private readonly limits: SwitchLimits;
  private readonly token: string | null;
  private readonly services = new Map<string, Service>();
  private readonly vms = new Map<string, Vm>();
  private readonly links = new Set<Link>();
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: LINK_FRAME_BYTES_MAX, perMessageDeflate: false, clientTracking: false });
  /** Streams whose socket is paused because of a bound, to resume as ACKs free space. */
  private readonly pausedStreams = new Set<Stream>();
  private keptTotal = 0;
  private pendingLinks = 0;
  private nextStreamId = 1;
  private nextLinkId = 1;
  private refused = 0;
  private refusedLoggedAt = 0;
  private closing: Promise<void> | null = null;

  private constructor(
    options: SwitchOptions,
    private readonly http: Server,
    url: string,
  ) {
    this.url = url;
    this.log = options.log ?? SILENT_LOGGER;
    this.limits = { ...SWITCH_LIMITS, ...options.limits };
    this.token = options.token;
  }

  /** Binds the HTTP server and every service; rejects (USAGE) when an address is taken or a spec is wrong. */
  static async start(options: SwitchOptions): Promise<Switch> {
    if (!isLoopback(options.bind) && options.token === null) {
      throw new LockstepError("USAGE", `--bind ${options.bind} is not loopback: give a --token (or $LOCKSTEP_TOKEN)`);
    }
    checkServices(options.services);
    const http = createServer();
    http.maxConnections = HTTP_CONNECTIONS_MAX;
    const port = await listen(http, options.port, options.bind);
    const sw = new Switch(options, http, `http://${hostForUrl(options.bind)}:${port}`);
    http.on("request", (req, res) => sw.handle(req, res));
    http.on("upgrade", (req, socket, head) => sw.upgrade(req, socket, head));
    http.on("clientError", (_error, socket) => {
      if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
      else socket.destroy();
    });
    http.on("error", (error) => sw.log.error("switch server error", { detail: error.message }));
    try {
      for (const spec of options.services) await sw.addService(spec);
    } catch (error) {
      await sw.close();
      throw error;
    }
    sw.log.info("switch serving", { url: sw.url, services: sw.serviceAddresses(), token: sw.token !== null });
    return sw;
  }

  /** Service name → "host:port" where its clients connect. */
  serviceAddresses(): Record<string, string> {
    return Object.fromEntries([...this.services.values()].map((s) => [s.name, s.address]));
  }

  /** The link endpoint of `vm`. */
  linkUrl(vm: string): string {
    return `${this.url.replace(/^http/, "ws")}/link/${vm}`;
  }

  status(): SwitchStatus {
    return {
      url: this.url,
      pid: process.pid,
      services: [...this.services.values()].map((s) => ({ name: s.name, vm: s.vm, vport: s.vport, address: s.address })),
      keptBytes: this.keptTotal,
      vms: [...this.vms.values()].map((vm) => ({
        vm: vm.name,
        generation: vm.generation,
        linkConnected: vm.link !== null,
        host: vm.link?.host ?? null,
        listening: [...vm.listening].sort((a, b) => a - b),
        streamCount: vm.streams.size,
        streams: [...vm.streams.values()].map((s) => ({
          stream: s.id,
          service: s.service.name,
          vport: s.service.vport,
          remote: s.remote,
          state: s.state.kind,
          received: s.kept.end,
          acked: s.kept.base,
          sent: s.state.kind === "open" ? s.state.sent : null,
          clientEnded: s.clientEnded,
          socketPaused: s.socketPaused,
          vmPaused: s.state.kind === "open" && s.state.vmPaused,
          written: s.written,
          delivered: s.delivered,
          credit: s.state.kind === "open" ? s.state.credit : null,
          closeAt: s.state.kind === "closing" ? s.state.closeAt : null,
        })),
      })),
    };
  }

  /** Stops listening, closes every link (1001) and every client connection. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const closed = [...this.services.values()].map((s) => new Promise<void>((resolve) => s.server.close(() => resolve())));
    // Links get a close frame, and are cut off after CLOSE_GRACE_MS if the VM does not answer it.
    for (const link of this.links) {
      closed.push(link.closed);
      this.dropLink(link, CLOSE_GOING_AWAY, "the switch is shutting down", "info");
    }
    for (const vm of this.vms.values()) for (const stream of [...vm.streams.values()]) stream.socket.destroy();
    this.wss.close();
    closed.push(new Promise<void>((resolve) => this.http.close(() => resolve())));
    this.http.closeAllConnections();
    await Promise.all(closed);
    this.log.info("switch closed", { url: this.url });
  }

  // -------------------------------------------------------------------------------------------
  // HTTP: the status API and the link upgrade

  private handle(req: IncomingMessage, res: ServerResponse): void {
    try {
      checkToken(req, this.token);
      const path = pathOf(req);
      if (req.method === "GET" && path === "/api/status") return sendJson(res, 200, this.status());
      throw new ApiError("NOT_FOUND", `no route ${req.method} ${path}`);
    } catch (error) {
      if (error instanceof ApiError && error.code === "UNAUTHORIZED") this.log.warn("request rejected", { code: error.code, path: req.url });
      sendError(res, error);
    }
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const path = pathOf(req);
    const match = /^\/link\/([^/]+)$/.exec(path);
    const vm = match !== null && VM_NAME.test(match[1]!) ? this.vms.get(match[1]!) : undefined;
    const refuse = (status: string, reason: string) => {
      this.log.warn("link refused", { vm: vm?.name ?? null, generation: vm?.generation ?? null, path: path.slice(0, 100), reason, remote: req.socket.remoteAddress });
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-type: text/plain\r\n\r\n${reason}\n`);
    };
    if (vm === undefined) return refuse("404 Not Found", `no service of this switch names a VM at ${path.slice(0, 100)}`);
    if (this.closing !== null) return refuse("503 Service Unavailable", "the switch is shutting down");
    if (this.pendingLinks >= PENDING_LINKS_MAX) return refuse("503 Service Unavailable", `${PENDING_LINKS_MAX} links are waiting for their HELLO`);
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, vm, `${req.socket.remoteAddress}:${req.socket.remotePort}`));
  }

  // -------------------------------------------------------------------------------------------
  // Links

  private accept(ws: WebSocket, vm: Vm, remote: string): void {
    this.pendingLinks++;
    const closed = new Promise<void>((resolve) => ws.once("close", () => resolve()));
    const link: Link = { id: this.nextLinkId++, ws, vm, remote, phase: "hello", generation: null, host: null, helloTimer: null, closed };
    this.links.add(link);
    link.helloTimer = setTimeout(() => this.violation(link, `no HELLO within ${this.limits.helloTimeoutMs} ms`), this.limits.helloTimeoutMs);
    link.helloTimer.unref();
    ws.on("message", (data, isBinary) => this.receive(link, data, isBinary));
    ws.on("error", (error: Error & { code?: string }) => {
      // ws's own checks (a message over maxPayload, bad WebSocket framing): ws closes the
      // connection itself right after this event.
      this.log.warn("link protocol error", { ...this.linkFields(link), code: error.code ?? "WS_ERROR", reason: error.message });
    });
    ws.on("close", (code, reason) => {
      this.links.delete(link);
      // A clean close is a VM stopping; anything else (1006: no close frame) may be its host dying.
      const level = code === 1000 || code === CLOSE_GOING_AWAY ? "info" : "warn";
      this.dropLink(link, code, `closed by the VM (${code}${reason.length > 0 ? ` ${reason.toString("utf8").slice(0, 120)}` : ""})`, level);
    });
    this.log.debug("link connected", { vm: vm.name, generation: vm.generation, link: link.id, remote });
  }

  private linkFields(link: Link): Record<string, unknown> {
    return { vm: link.vm.name, generation: link.generation, link: link.id, host: link.host, remote: link.remote };
  }

  private receive(link: Link, data: RawData, isBinary: boolean): void {
    if (link.phase === "closed") return;
    if (!isBinary) return this.violation(link, "a text message: link frames are binary");
    // With the default binaryType, a message is one Buffer.
    assert(Buffer.isBuffer(data), "binary messages arrive as one Buffer");
    let frame: VmFrame;
    try {
      frame = decodeVmFrame(data);
    } catch (error) {
      if (!isLinkFrameError(error)) throw error;
      return this.violation(link, error.message, error.code);
    }
    if (link.phase === "hello") {
      if (frame.type !== LinkType.Hello) return this.violation(link, `expected HELLO first, got ${linkTypeName(frame.type)}`);
      return this.hello(link, frame.hello);
    }
    if (frame.type === LinkType.Hello) return this.violation(link, "a second HELLO on one link");
    this.step(link, frame);
  }

  /** A link peer broke the protocol: one log line, close 1008 with the reason. */
  private violation(link: Link, reason: string, code = "LINK_PROTOCOL"): void {
    this.log.warn("link protocol error", { ...this.linkFields(link), code, reason });
    this.dropLink(link, LINK_CLOSE_POLICY, reason, "warn");
  }

  /**
   * Ends a link: if it is its VM's current one, the VM has no link from now on and its open
   * streams are detached at once (no frame of this link counts any more). Idempotent.
   */
  private dropLink(link: Link, code: number, reason: string, level: "info" | "warn"): void {
    if (link.phase === "closed") return;
    if (link.phase === "hello") this.pendingLinks--;
    const vm = link.vm;
    const wasCurrent = vm.link === link;
    link.phase = "closed";
    if (link.helloTimer !== null) clearTimeout(link.helloTimer);
    if (wasCurrent) {
      vm.link = null;
      for (const stream of vm.streams.values()) if (stream.state.kind === "open") stream.state = DETACHED;
      this.log[level]("link down", { ...this.linkFields(link), event: "linkDown", reason, streams: vm.streams.size });
    }
    if (link.ws.readyState === WebSocket.OPEN || link.ws.readyState === WebSocket.CONNECTING) {
      link.ws.close(code, boundedReason(reason));
      setTimeout(() => link.ws.terminate(), CLOSE_GRACE_MS).unref();
    }
  }

  private send(link: Link, frame: SwitchFrame): void {
    if (link.ws.readyState === WebSocket.OPEN) link.ws.send(encodeLinkFrame(frame));
  }

  /**
   * A HELLO: refused if it is for another VM, lacks the token or is older than the VM's
   * generation; else this link becomes the VM's link (the previous one is closed) and every
   * stream of the VM is moved to it (`rejoin`).
   */
  private hello(link: Link, hello: Hello): void {
    const vm = link.vm;
    link.generation = hello.generation;
    link.host = hello.host;
    if (hello.vm !== vm.name) return this.violation(link, "the HELLO names another VM than the link's path", "WRONG_VM");
    if (this.token !== null && !sameSecret(hello.token, this.token)) return this.violation(link, "wrong token", "UNAUTHORIZED");
    if (vm.generation !== null && hello.generation < vm.generation) {
      this.log.warn("stale generation refused", { ...this.linkFields(link), code: "STALE_GENERATION", current: vm.generation });
      return this.dropLink(link, LINK_CLOSE_POLICY, `stale generation ${hello.generation}: the VM is at generation ${vm.generation}`, "warn");
    }
    this.pendingLinks--;
    link.phase = "up";
    if (link.helloTimer !== null) clearTimeout(link.helloTimer);
    link.helloTimer = null;
    const previous = vm.link;
    const previousGeneration = vm.generation;
    if (previous !== null) {
      const why = hello.generation > previous.generation! ? `superseded by generation ${hello.generation}` : "replaced by a reconnect of the same generation";
      this.dropLink(previous, LINK_CLOSE_POLICY, why, "info");
    }
    vm.link = link;
    vm.generation = hello.generation;
    vm.listening = new Set(hello.listening);
    this.send(link, { type: LinkType.Welcome, generation: hello.generation });
    this.log.info("link up", {
      ...this.linkFields(link),
      event: "linkUp",
      previousGeneration,
      reconnect: previousGeneration === hello.generation,
      listening: [...vm.listening],
      streams: vm.streams.size,
    });

    const named = new Map(hello.streams.map((entry) => [entry.stream, entry]));
    const counts: RejoinCounts = { moved: 0, opened: 0, waiting: 0, closing: 0, reset: 0, gone: 0, bytesResent: 0, bytesOpened: 0 };
    for (const stream of [...vm.streams.values()]) {
      const entry = named.get(stream.id);
      named.delete(stream.id);
      this.rejoin(link, stream, entry, counts);
    }
    // Streams the VM knows and the switch does not: their clients left meanwhile.
    for (const entry of named.values()) {
      this.send(link, { type: LinkType.Gone, stream: entry.stream });
      counts.gone++;
    }
    if (previousGeneration !== null && hello.generation > previousGeneration) {
      this.log.info("failover", {
        ...this.linkFields(link),
        event: "failover",
        previousGeneration,
        streamsMoved: counts.moved,
        bytesResent: counts.bytesResent,
        streamsOpened: counts.opened,
        bytesOpened: counts.bytesOpened,
        streamsWaiting: counts.waiting,
        streamsClosing: counts.closing,
        streamsReset: counts.reset,
        streamsGone: counts.gone,
      });
    }
  }

  /** Moves one stream to a newly accepted link; `entry` is what its HELLO says of it. */
  private rejoin(link: Link, stream: Stream, entry: HelloStream | undefined, counts: RejoinCounts): void {
    const state = stream.state;
    assert(state.kind !== "open", "streams are detached before a new link is taken");
    if (state.kind === "closing") {
      // The guest closed it (its CLOSE is in the log): the rest of its output, if any, comes
      // from a link that names it; one that does not will send none.
      counts.closing++;
      if (entry === undefined && stream.written < state.closeAt) {
        this.log.warn("stream output lost", { ...this.streamFields(stream), written: stream.written, closeAt: state.closeAt });
        this.endClient(stream);
      }
      return;
    }
    if (entry !== undefined) {
      const problem = inconsistency(stream, entry);
      if (problem !== null) {
        counts.reset++;
        return this.reset(stream, problem, true);
      }
      if (entry.tx > stream.written) {
        // Output the old primary sent on a link that died before the switch read it: the new
        // primary must send it again (rule 5), or the stream is reset at its next DATA.
        this.log.warn("stream output behind", { ...this.streamFields(stream), tx: entry.tx, written: stream.written });
      }
      counts.moved++;
      counts.bytesResent += this.attach(stream, link, entry);
      return;
    }
    if (stream.kept.base > 0 || stream.written > 0) {
      // ACKs and output come only from a VM whose log has the stream: a primary that does not
      // know it has lost it (a fresh start), and the client's bytes below `base` are gone.
      counts.reset++;
      return this.reset(stream, "the VM's HELLO does not name this stream, which had ACKs or output already", false);
    }
    if (link.vm.listening.has(stream.service.vport)) {
      counts.opened++;
      counts.bytesOpened += this.attach(stream, link, undefined);
    } else {
      counts.waiting++;
    }
  }

  /** One frame from an accepted link. */
  private step(link: Link, frame: Exclude<VmFrame, { type: LinkType.Hello }>): void {
    const vm = link.vm;
    if (frame.type === LinkType.Listen) {
      if (!vm.listening.has(frame.vport) && vm.listening.size >= LINK_VPORTS_MAX) {
        return this.violation(link, `LISTEN on more than ${LINK_VPORTS_MAX} virtual ports`);
      }
      vm.listening.add(frame.vport);
      for (const stream of [...vm.streams.values()]) {
        if (stream.state.kind === "detached" && stream.service.vport === frame.vport) this.attach(stream, link, undefined);
      }
      return;
    }
    const stream = vm.streams.get(frame.stream);
    if (stream === undefined || stream.state.kind === "detached") {
      // Its client left and GONE is on its way (a normal crossing), or a stream this link's VM
      // was never told of: nothing to do.
      this.log.debug("frame for no stream", { ...this.linkFields(link), type: linkTypeName(frame.type), stream: frame.stream });
      return;
    }
    const state = stream.state;
    switch (frame.type) {
      case LinkType.VmData:
        return this.output(link, stream, frame.offset, frame.bytes);
      case LinkType.Ack:
        if (state.kind !== "open") return;
        if (frame.offset > state.sent) return this.violation(link, `ACK of stream ${stream.id} at ${frame.offset}, past the ${state.sent} bytes sent`);
        return this.forget(stream, frame.offset);
      case LinkType.Close:
        if (state.kind !== "open") return;
        if (frame.offset < stream.written) {
          return this.reset(stream, `CLOSE after ${frame.offset} output bytes, but the client has ${stream.written}`, true);
        }
        return this.closeByGuest(stream, frame.offset);
      case LinkType.Pause:
        if (state.kind === "open") state.vmPaused = true;
        return;
      case LinkType.Resume:
        if (state.kind !== "open" || !state.vmPaused) return;
        state.vmPaused = false;
        this.pump(stream, state, link);
        return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Stream transitions and I/O

  /** Detached → Open on `link`: named by its HELLO (`entry`), or new to it (OPEN). Returns client bytes sent. */
  private attach(stream: Stream, link: Link, entry: HelloStream | undefined): number {
    assert(stream.state.kind === "detached", "only a detached stream attaches");
    const open: Open = { kind: "open", sent: entry?.rx ?? 0, credit: entry?.credit ?? 0, vmPaused: false, finSent: false };
    stream.state = open;
    if (entry === undefined) this.send(link, { type: LinkType.Open, stream: stream.id, vport: stream.service.vport });
    const sent = this.pump(stream, open, link);
    this.giveCredit(stream, open, link);
    return sent;
  }

  /** Sends the client bytes past `sent` (rule 2) and the FIN when due (rule 3); returns bytes sent. */
  private pump(stream: Stream, open: Open, link: Link): number {
    let total = 0;
    if (!open.vmPaused && open.sent < stream.kept.end) {
      for (const chunk of stream.kept.from(open.sent)) {
        for (let at = 0; at < chunk.length; at += LINK_DATA_BYTES_MAX) {
          const piece = chunk.subarray(at, at + LINK_DATA_BYTES_MAX);
          this.send(link, { type: LinkType.ClientData, stream: stream.id, offset: open.sent, bytes: piece });
          open.sent += piece.length;
          total += piece.length;
        }
      }
    }
    if (stream.clientEnded && !open.finSent && open.sent === stream.kept.end) {
      open.finSent = true;
      this.send(link, { type: LinkType.Fin, stream: stream.id, offset: stream.kept.end });
    }
    return total;
  }

  /** Rule 6: tell the VM of every byte drained beyond the credit it has. */
  private giveCredit(stream: Stream, open: Open, link: Link): void {
    let owed = stream.delivered - open.credit;
    while (owed > 0) {
      const bytes = Math.min(owed, 0xffff_ffff);
      this.send(link, { type: LinkType.Credit, stream: stream.id, bytes });
      open.credit += bytes;
      owed -= bytes;
    }
  }

  /** DATA from the VM: the part past `written` goes to the client (rule 5). */
  private output(link: Link, stream: Stream, offset: number, bytes: Uint8Array): void {
    const state = stream.state;
    const end = offset + bytes.length;
    if (state.kind === "closing" && end > state.closeAt) {
      return this.violation(link, `DATA of stream ${stream.id} up to ${end}, past its CLOSE at ${state.closeAt}`);
    }
    if (offset > stream.written) {
      return this.reset(stream, `output at offset ${offset}, but the client has ${stream.written} bytes: the bytes between are lost`, true);
    }
    if (end <= stream.written) return;
    if (end - stream.delivered > this.limits.undrainedBytesMax) {
      return this.violation(
        link,
        `stream ${stream.id}: ${end - stream.delivered} output bytes not drained, over ${this.limits.undrainedBytesMax}: DATA beyond credit`,
      );
    }
    const fresh = bytes.subarray(stream.written - offset);
    stream.written = end;
    stream.socket.write(fresh, (error) => {
      if (error === undefined || error === null) this.drained(stream, fresh.length);
    });
    if (state.kind === "closing" && stream.written === state.closeAt) this.endClient(stream);
  }

  private drained(stream: Stream, bytes: number): void {
    stream.delivered += bytes;
    const link = stream.vm.link;
    if (stream.state.kind === "open" && link !== null && stream.vm.streams.get(stream.id) === stream) this.giveCredit(stream, stream.state, link);
  }

  /** An ACK: client bytes below `offset` are in the backup's log (rule 4). */
  private forget(stream: Stream, offset: number): void {
    this.release(stream.kept.forget(offset), stream);
  }

  /** Kept bytes were freed: resume this stream, and every paused one if the switch-wide bound no longer holds them. */
  private release(charge: number, stream: Stream): void {
    if (charge === 0) return;
    const wasOverTotal = this.keptTotal >= this.limits.totalKeptBytesMax;
    this.keptTotal -= charge;
    if (wasOverTotal && this.keptTotal < this.limits.totalKeptBytesMax) {
      for (const paused of [...this.pausedStreams]) this.maybeResume(paused);
    } else {
      this.maybeResume(stream);
    }
  }

  private overBound(stream: Stream): boolean {
    return stream.kept.charge >= this.limits.unackedBytesMax || this.keptTotal >= this.limits.totalKeptBytesMax;
  }

  private maybeResume(stream: Stream): void {
    if (!stream.socketPaused || (stream.state.kind !== "closing" && this.overBound(stream))) return;
    stream.socketPaused = false;
    this.pausedStreams.delete(stream);
    stream.socket.resume();
    this.log.debug("client resumed", { ...this.streamFields(stream), kept: stream.kept.end - stream.kept.base });
  }

  /** Open → Closing. */
  private closeByGuest(stream: Stream, closeAt: number): void {
    stream.state = { kind: "closing", closeAt };
    // The guest reads no more: the client's bytes are dropped, and its socket read to its end.
    this.release(stream.kept.clear(), stream);
    this.maybeResume(stream);
    if (stream.written === closeAt) this.endClient(stream);
  }

  /** Rule 7 is met: end the client's socket, and cut it off if it does not end its side in time. */
  private endClient(stream: Stream): void {
    if (stream.lingerTimer !== null) return;
    stream.socket.end();
    stream.lingerTimer = setTimeout(() => stream.socket.destroy(), CLOSE_LINGER_MS);
    stream.lingerTimer.unref();
  }

  /**
   * The stream cannot go on exactly (bytes lost, or a VM that contradicts what the client
   * has): the client gets a reset rather than a stream with a hole, the VM a GONE if it knows
   * the stream.
   */
  private reset(stream: Stream, reason: string, vmKnows: boolean): void {
    this.log.warn("stream reset", { ...this.streamFields(stream), code: "STREAM_RESET", reason });
    this.remove(stream, vmKnows);
    stream.socket.resetAndDestroy();
  }

  /** → removed. GONE (rule 8) to the current link if asked and it can have the stream. */
  private remove(stream: Stream, gone: boolean): void {
    const vm = stream.vm;
    if (vm.streams.get(stream.id) !== stream) return;
    vm.streams.delete(stream.id);
    this.pausedStreams.delete(stream);
    if (stream.lingerTimer !== null) clearTimeout(stream.lingerTimer);
    if (gone && vm.link !== null) this.send(vm.link, { type: LinkType.Gone, stream: stream.id });
    this.release(stream.kept.clear(), stream);
  }

  private streamFields(stream: Stream): Record<string, unknown> {
    return { vm: stream.vm.name, generation: stream.vm.generation, stream: stream.id, service: stream.service.name, remote: stream.remote };
  }

  // -------------------------------------------------------------------------------------------
  // Services and their clients

  private async addService(spec: ServiceSpec): Promise<void> {
    let vm = this.vms.get(spec.vm);
    if (vm === undefined) {
      vm = { name: spec.vm, generation: null, link: null, listening: new Set(), streams: new Map() };
      this.vms.set(spec.vm, vm);
    }
    const server = net.createServer({ allowHalfOpen: true, noDelay: true });
    const service: Service = { ...spec, server, address: "" };
    server.on("connection", (socket) => this.connect(service, vm, socket));
    const port = await listen(server, spec.port, spec.host);
    service.address = `${hostForUrl(spec.host)}:${port}`;
    server.on("error", (error) => this.log.error("service error", { vm: spec.vm, service: spec.name, detail: error.message }));
    this.services.set(spec.name, service);
  }

  private connect(service: Service, vm: Vm, socket: net.Socket): void {
    socket.on("error", (error: NodeJS.ErrnoException) => {
      this.log.debug("client socket error", { vm: vm.name, generation: vm.generation, service: service.name, code: error.code ?? null });
    });
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.closing !== null || vm.streams.size >= this.limits.streamsPerVmMax || this.nextStreamId > STREAM_ID_MAX) {
      this.refuse(service, vm, remote);
      socket.destroy();
      return;
    }
    const stream: Stream = {
      id: this.nextStreamId++,
      vm,
      service,
      socket,
      remote,
      state: DETACHED,
      kept: new KeptBytes(),
      clientEnded: false,
      socketPaused: false,
      written: 0,
      delivered: 0,
      lingerTimer: null,
    };
    vm.streams.set(stream.id, stream);
    socket.on("data", (chunk: Buffer) => this.clientData(stream, chunk));
    socket.on("end", () => this.clientEnd(stream));
    socket.on("close", () => this.clientClosed(stream));
    this.log.debug("client connected", { ...this.streamFields(stream), linked: vm.link !== null });
    if (vm.link !== null && vm.listening.has(service.vport)) this.attach(stream, vm.link, undefined);
  }

  private refuse(service: Service, vm: Vm, remote: string): void {
    this.refused++;
    const now = Date.now();
    if (now - this.refusedLoggedAt < REFUSAL_LOG_MS) return;
    this.refusedLoggedAt = now;
    this.log.warn("clients refused", {
      vm: vm.name,
      generation: vm.generation,
      service: service.name,
      remote,
      refused: this.refused,
      streams: vm.streams.size,
      reason: this.closing !== null ? "shutting down" : `${this.limits.streamsPerVmMax} streams per VM at most`,
    });
    this.refused = 0;
  }

  private clientData(stream: Stream, chunk: Buffer): void {
    const state = stream.state;
    if (state.kind === "closing" || stream.vm.streams.get(stream.id) !== stream) return;
    this.keptTotal += stream.kept.push(chunk);
    if (state.kind === "open") this.pump(stream, state, stream.vm.link!);
    if (!stream.socketPaused && this.overBound(stream)) {
      stream.socketPaused = true;
      this.pausedStreams.add(stream);
      stream.socket.pause();
      this.log.debug("client paused", { ...this.streamFields(stream), kept: stream.kept.end - stream.kept.base, keptTotal: this.keptTotal });
    }
  }

  private clientEnd(stream: Stream): void {
    stream.clientEnded = true;
    const state = stream.state;
    if (state.kind === "open" && stream.vm.streams.get(stream.id) === stream) this.pump(stream, state, stream.vm.link!);
  }

  private clientClosed(stream: Stream): void {
    if (stream.vm.streams.get(stream.id) !== stream) return;
    this.log.debug("client left", { ...this.streamFields(stream), state: stream.state.kind, received: stream.kept.end, written: stream.written });
    // A detached stream's VM learns it from the next HELLO (GONE for the streams it names).
    this.remove(stream, stream.state.kind === "open");
  }
}

/** Why a stream named by a HELLO cannot be resumed where the VM says it stands, or null. */
function inconsistency(stream: Stream, entry: HelloStream): string | null {
  const kept = stream.kept;
  if (entry.rx < kept.base) return `the VM has ${entry.rx} client bytes, but bytes below ${kept.base} were ACKed and forgotten`;
  if (entry.rx > kept.end) return `the VM has ${entry.rx} client bytes, more than the ${kept.end} the client sent`;
  if (entry.credit > stream.delivered) return `the VM has credit for ${entry.credit} bytes, more than the ${stream.delivered} the client took`;
  return null;
}

function checkServices(services: ServiceSpec[]): void {
  if (services.length === 0) throw new LockstepError("USAGE", "at least one --service is required");
  if (services.length > SERVICES_MAX) throw new LockstepError("USAGE", `at most ${SERVICES_MAX} services`);
  const names = new Set<string>();
  for (const spec of services) {
    if (!SERVICE_NAME.test(spec.name)) throw new LockstepError("USAGE", `service name "${spec.name}": letters, digits, '.', '_' and '-'`);
    if (!VM_NAME.test(spec.vm)) throw new LockstepError("USAGE", `VM name "${spec.vm}": lowercase letters, digits and '-', at most 63`);
    if (!Number.isInteger(spec.vport) || spec.vport < 0 || spec.vport > 0xffff) throw new LockstepError("USAGE", `service ${spec.name}: vport from 0 to 65535`);
    if (names.has(spec.name)) throw new LockstepError("USAGE", `service "${spec.name}" is given twice`);
    names.add(spec.name);
  }
}

function listen(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException) => reject(new LockstepError("USAGE", `cannot listen on ${host}:${port}: ${error.code ?? error.message}`));
    server.once("error", failed);
    server.listen(port, host, () => {
      server.off("error", failed);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** The request's path; "" for a target that is no URL at all (never an exception). */
function pathOf(req: IncomingMessage): string {
  try {
    return new URL(req.url ?? "/", "http://switch").pathname;
  } catch {
    return "";
  }
}

function hostForUrl(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

function boundedReason(reason: string): string {
  let text = reason.replace(/[\r\n]+/g, " ");
  while (Buffer.byteLength(text) > CLOSE_REASON_BYTES_MAX) text = text.slice(0, -1);
  return text;
}
