// The VM's end of a switch link (docs/switch.md): one WebSocket to ws://SWITCH/link/VM that
// says HELLO on connecting, then hands each frame of the switch to a typed callback and sends
// the VM's frames. It knows nothing of VMs: the NIC device owns the streams and their offsets,
// and reconnecting (a new SwitchLink with a fresh HELLO) is its caller's choice.
//
// Sends made before the WebSocket is open wait for it, in order, behind the HELLO; sends after
// it closed are dropped (onClose has said so). Garbage from the switch closes the link (1008).

import { WebSocket, type RawData } from "ws";
import {
  decodeSwitchFrame,
  encodeLinkFrame,
  type HelloStream,
  isLinkFrameError,
  LINK_DATA_BYTES_MAX,
  LINK_FRAME_BYTES_MAX,
  LinkType,
  type VmFrame,
  LINK_CLOSE_POLICY,
} from "./link-frames.js";

/** A stream as a HELLO names it: client bytes received (`rx`), output produced (`tx`), credit given. */
export type LinkStream = HelloStream;

export interface SwitchLinkOptions {
  /** The switch: ws://HOST:PORT (or its http:// URL, as its READY line says); the link is at /link/VM. */
  url: string;
  vm: string;
  generation: number;
  /** Who runs this side (a host id), for the switch's logs and status. */
  host: string;
  token?: string | null;
  /** Virtual ports the guest listens on already. */
  listening?: number[];
  /** Streams the VM knows (a backup gone live names every one); a fresh primary names none. */
  streams?: LinkStream[];
}

const noop = () => undefined;

/** ws://HOST:PORT/link/VM for a switch URL (ws:// or http://, with or without a trailing slash). */
export function linkUrl(switchUrl: string, vm: string): string {
  return `${switchUrl.replace(/^http/, "ws").replace(/\/+$/, "")}/link/${encodeURIComponent(vm)}`;
}

export class SwitchLink {
  /** The switch accepted the HELLO: this link is the VM's primary link now. */
  onWelcome: (generation: number) => void = noop;
  /** A new client connection on `vport`. */
  onOpen: (stream: number, vport: number) => void = noop;
  /** Client bytes at `offset`: a view into the received message (which nothing else reuses). */
  onData: (stream: number, offset: number, bytes: Uint8Array) => void = noop;
  /** The client ended its side after `offset` bytes. */
  onFin: (stream: number, offset: number) => void = noop;
  /** The client's socket took `bytes` more output bytes. */
  onCredit: (stream: number, bytes: number) => void = noop;
  /** The stream no longer exists at the switch. */
  onGone: (stream: number) => void = noop;
  /** The link is closed (by either side, or it never opened); called once. */
  onClose: (reason: string, code: number) => void = noop;

  /** Resolves with the generation of the WELCOME; rejects if the link closes before one. */
  readonly welcomed: Promise<number>;
  private readonly ws: WebSocket;
  private readonly queued: Buffer[] = [];
  private welcome: { resolve: (generation: number) => void; reject: (error: Error) => void } | null = null;
  private lastError: string | null = null;
  /** Why this side closed the link (a bad frame from the switch). */
  private failure: string | null = null;
  private closed = false;

  constructor(readonly options: SwitchLinkOptions) {
    this.welcomed = new Promise((resolve, reject) => (this.welcome = { resolve, reject }));
    this.welcomed.catch(noop);
    this.ws = new WebSocket(linkUrl(options.url, options.vm), { maxPayload: LINK_FRAME_BYTES_MAX, perMessageDeflate: false });
    this.ws.on("open", () => {
      this.ws.send(
        encodeLinkFrame({
          type: LinkType.Hello,
          hello: {
            vm: options.vm,
            generation: options.generation,
            host: options.host,
            ...(options.token ? { token: options.token } : {}),
            listening: options.listening ?? [],
            streams: options.streams ?? [],
          },
        }),
      );
      for (const frame of this.queued.splice(0)) this.ws.send(frame);
    });
    this.ws.on("message", (data, isBinary) => this.receive(data, isBinary));
    this.ws.on("unexpected-response", (_req, res) => {
      this.lastError = `the switch answered HTTP ${res.statusCode}`;
      res.resume();
      this.ws.terminate();
    });
    this.ws.on("error", (error) => (this.lastError ??= error.message));
    this.ws.on("close", (code, reason) => {
      const text = this.failure ?? (reason.toString("utf8") || this.lastError || "closed");
      this.closed = true;
      this.queued.length = 0;
      this.welcome?.reject(new Error(`link closed before WELCOME: ${text} (${code})`));
      this.welcome = null;
      this.onClose(text, code);
    });
  }

  /** The WebSocket is open and the switch welcomed this link. */
  get connected(): boolean {
    return this.welcome === null && !this.closed;
  }

  /** Bytes sent but not yet handed to the kernel (for backpressure). */
  get bufferedAmount(): number {
    return this.ws.bufferedAmount + this.queued.reduce((sum, frame) => sum + frame.length, 0);
  }

  listen(vport: number): void {
    this.send({ type: LinkType.Listen, vport });
  }

  /** Output bytes at `offset`; split into frames of at most LINK_DATA_BYTES_MAX. */
  data(stream: number, offset: number, bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    for (let at = 0; at < bytes.length; at += LINK_DATA_BYTES_MAX) {
      this.send({ type: LinkType.VmData, stream, offset: offset + at, bytes: bytes.subarray(at, at + LINK_DATA_BYTES_MAX) });
    }
  }

  /** Client bytes below `offset` are in the backup's log: the switch may forget them. */
  ack(stream: number, offset: number): void {
    this.send({ type: LinkType.Ack, stream, offset });
  }

  /** The guest closed the stream after `offset` output bytes. */
  close(stream: number, offset: number): void {
    this.send({ type: LinkType.Close, stream, offset });
  }

  pause(stream: number): void {
    this.send({ type: LinkType.Pause, stream });
  }

  resume(stream: number): void {
    this.send({ type: LinkType.Resume, stream });
  }

  /** Closes the link with a closing handshake. */
  end(code = 1000, reason = ""): void {
    if (this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
    else this.ws.close(code, reason);
  }

  /** Drops the connection at once, as a crash would (no closing handshake). */
  terminate(): void {
    this.ws.terminate();
  }

  private send(frame: Exclude<VmFrame, { type: LinkType.Hello }>): void {
    if (this.closed) return;
    const bytes = encodeLinkFrame(frame);
    if (this.ws.readyState === WebSocket.CONNECTING) this.queued.push(bytes);
    else if (this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  private receive(data: RawData, isBinary: boolean): void {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return;
    if (!isBinary || !Buffer.isBuffer(data)) return this.fail("a text message: link frames are binary");
    let frame;
    try {
      frame = decodeSwitchFrame(data);
    } catch (error) {
      if (!isLinkFrameError(error)) throw error;
      return this.fail(error.message);
    }
    if (this.welcome !== null && frame.type !== LinkType.Welcome) return this.fail("expected WELCOME first");
    switch (frame.type) {
      case LinkType.Welcome: {
        if (this.welcome === null) return this.fail("a second WELCOME");
        const welcome = this.welcome;
        this.welcome = null;
        welcome.resolve(frame.generation);
        return this.onWelcome(frame.generation);
      }
      case LinkType.Open:
        return this.onOpen(frame.stream, frame.vport);
      case LinkType.ClientData:
        return this.onData(frame.stream, frame.offset, frame.bytes);
      case LinkType.Fin:
        return this.onFin(frame.stream, frame.offset);
      case LinkType.Credit:
        return this.onCredit(frame.stream, frame.bytes);
      case LinkType.Gone:
        return this.onGone(frame.stream);
    }
  }

  private fail(reason: string): void {
    this.failure ??= reason;
    this.ws.close(LINK_CLOSE_POLICY, reason.slice(0, 120));
  }
}
