// Test helpers for the switch: a switch in this process with its log lines captured, fake VMs
// built on SwitchLink, and TCP clients; every wait is on an event (a frame, bytes, a log line,
// a status answer), each with a deadline that fails the test rather than hangs it.

import net from "node:net";
import { createLogger } from "../../host/log.js";
import { type LinkStream, SwitchLink } from "../../host/switch/link-client.js";
import { Switch, type ServiceSpec, type SwitchLimits, type SwitchStatus } from "../../host/switch/switch.js";

const WAIT_MS = 20_000;

/** Everything observable calls `changed()`; `until` re-checks its condition on each change. */
const waiters = new Set<() => void>();

export function changed(): void {
  for (const waiter of [...waiters]) waiter();
}

export function until<T>(check: () => T | undefined | null | false, what: string, timeoutMs = WAIT_MS): Promise<T> {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      let value: T | undefined | null | false;
      try {
        value = check();
      } catch (error) {
        done();
        reject(error as Error);
        return;
      }
      if (value !== undefined && value !== null && value !== false) {
        done();
        resolve(value);
      }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      waiters.delete(attempt);
    };
    waiters.add(attempt);
    attempt();
  });
}

export type LogLine = Record<string, unknown> & { msg: string; level: string; vm: string | null; generation: number | null };

export interface TestSwitch {
  sw: Switch;
  lines: LogLine[];
  /** Resolves with the first log line (past or future) that `test` accepts. */
  logLine(test: (line: LogLine) => boolean, what: string): Promise<LogLine>;
  /** GET /api/status over HTTP, until `test` accepts an answer (each check awaits one). */
  statusUntil<T>(test: (status: SwitchStatus) => T | undefined | null | false, what: string): Promise<T>;
  address(service: string): { host: string; port: number };
}

export async function startSwitch(
  options: { services?: ServiceSpec[]; token?: string | null; limits?: Partial<SwitchLimits> } = {},
): Promise<TestSwitch> {
  const lines: LogLine[] = [];
  const log = createLogger("debug", (line) => {
    lines.push(JSON.parse(line) as LogLine);
    changed();
  });
  const sw = await Switch.start({
    bind: "127.0.0.1",
    port: 0,
    token: options.token ?? null,
    services: options.services ?? [{ name: "echo", vm: "vm1", vport: 7, host: "127.0.0.1", port: 0 }],
    log,
    limits: options.limits,
  });
  const token = options.token ?? null;
  return {
    sw,
    lines,
    logLine: (test, what) => until(() => lines.find(test), what),
    async statusUntil(test, what) {
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        const response = await fetch(`${sw.url}/api/status`, { headers: token === null ? {} : { authorization: `Bearer ${token}` } });
        const status = (await response.json()) as SwitchStatus;
        const value = test(status);
        if (value !== undefined && value !== null && value !== false) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(status.vms)}`);
      }
    },
    address(service) {
      const [host, port] = sw.serviceAddresses()[service]!.split(/:(?=\d+$)/);
      return { host: host!, port: Number(port) };
    },
  };
}

export interface FakeStream {
  id: number;
  vport: number;
  /** Client bytes received (the next expected offset), output produced, credit got. */
  rx: number;
  tx: number;
  credit: number;
  received: Buffer[];
  fin: number | null;
  gone: boolean;
  gaps: string[];
}

export interface FakeVmOptions {
  vm?: string;
  generation: number;
  token?: string;
  listening?: number[];
  /** Streams it knows already (a backup gone live), with their offsets. */
  streams?: LinkStream[];
  /** Echo client bytes upper-cased (default true), and CLOSE after a FIN. */
  echo?: boolean;
  /** How far to ACK after receiving: everything (default), nothing, or a function of the stream. */
  ack?: "all" | "none" | ((stream: FakeStream) => number);
}

/** A VM's primary as the switch sees it: a SwitchLink and per-stream offsets. */
export class FakeVm {
  readonly link: SwitchLink;
  readonly streams = new Map<number, FakeStream>();
  /** Every frame from the switch, as "TYPE stream" (for ordering checks). */
  readonly events: string[] = [];
  closed: { reason: string; code: number } | null = null;

  constructor(
    switchUrl: string,
    readonly options: FakeVmOptions,
  ) {
    for (const s of options.streams ?? []) this.streams.set(s.stream, newStream(s.stream, 0, s));
    this.link = new SwitchLink({
      url: switchUrl,
      vm: options.vm ?? "vm1",
      generation: options.generation,
      host: `fake-${options.generation}`,
      token: options.token,
      listening: options.listening ?? [7],
      streams: options.streams ?? [],
    });
    this.link.onWelcome = () => this.event("WELCOME");
    this.link.onOpen = (id, vport) => {
      this.streams.set(id, newStream(id, vport));
      this.event(`OPEN ${id}`);
    };
    this.link.onData = (id, offset, bytes) => {
      const stream = this.streams.get(id);
      if (stream !== undefined) this.receive(stream, offset, bytes);
      this.event(`DATA ${id}`);
    };
    this.link.onFin = (id, offset) => {
      const stream = this.streams.get(id);
      if (stream !== undefined) {
        stream.fin = offset;
        if (this.options.echo !== false) this.link.close(id, stream.tx);
      }
      this.event(`FIN ${id}`);
    };
    this.link.onCredit = (id, bytes) => {
      const stream = this.streams.get(id);
      if (stream !== undefined) stream.credit += bytes;
      this.event(`CREDIT ${id}`);
    };
    this.link.onGone = (id) => {
      const stream = this.streams.get(id);
      if (stream !== undefined) stream.gone = true;
      this.event(`GONE ${id}`);
    };
    this.link.onClose = (reason, code) => {
      this.closed = { reason, code };
      this.event("CLOSED");
    };
  }

  stream(id: number): FakeStream {
    const stream = this.streams.get(id);
    if (stream === undefined) throw new Error(`no stream ${id} at the fake VM`);
    return stream;
  }

  text(id: number): string {
    return Buffer.concat(this.stream(id).received).toString("latin1");
  }

  /** Output bytes from the guest, at the stream's own offset. */
  write(id: number, bytes: Uint8Array): void {
    const stream = this.stream(id);
    this.link.data(id, stream.tx, bytes);
    stream.tx += bytes.length;
  }

  /** Waits until the fake VM knows a stream that `test` accepts (an OPEN after `after` events, say). */
  untilStream(test: (stream: FakeStream) => boolean, what: string): Promise<FakeStream> {
    return until(() => [...this.streams.values()].find(test), what);
  }

  private receive(stream: FakeStream, offset: number, bytes: Uint8Array): void {
    if (offset > stream.rx) {
      stream.gaps.push(`DATA at ${offset}, expected ${stream.rx}`);
      return;
    }
    const fresh = Buffer.from(bytes.subarray(Math.min(bytes.length, stream.rx - offset)));
    if (fresh.length === 0) return;
    stream.rx += fresh.length;
    stream.received.push(fresh);
    if (this.options.echo !== false) this.write(stream.id, Buffer.from(fresh.toString("latin1").toUpperCase(), "latin1"));
    const ack = this.options.ack ?? "all";
    if (ack === "all") this.link.ack(stream.id, stream.rx);
    else if (ack !== "none") this.link.ack(stream.id, ack(stream));
  }

  private event(text: string): void {
    this.events.push(text);
    changed();
  }
}

function newStream(id: number, vport: number, at?: LinkStream): FakeStream {
  return { id, vport, rx: at?.rx ?? 0, tx: at?.tx ?? 0, credit: at?.credit ?? 0, received: [], fin: null, gone: false, gaps: [] };
}

/** A TCP client of a service: what it received, whether the switch ended or reset it. */
export class Client {
  readonly socket: net.Socket;
  readonly chunks: Buffer[] = [];
  bytes = 0;
  ended = false;
  closed = false;
  error: string | null = null;
  readonly connected: Promise<void>;

  constructor(address: { host: string; port: number }) {
    this.socket = net.connect({ host: address.host, port: address.port, allowHalfOpen: true });
    this.connected = new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("error", reject);
    });
    this.connected.catch(() => undefined);
    this.socket.on("data", (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
      changed();
    });
    this.socket.on("end", () => {
      this.ended = true;
      changed();
    });
    this.socket.on("error", (error: NodeJS.ErrnoException) => {
      this.error = error.code ?? error.message;
      changed();
    });
    this.socket.on("close", () => {
      this.closed = true;
      changed();
    });
  }

  text(): string {
    return Buffer.concat(this.chunks).toString("latin1");
  }

  untilBytes(count: number): Promise<string> {
    return until(() => (this.bytes >= count ? this.text() : undefined), `${count} bytes at the client (has ${this.bytes})`);
  }

  untilEnded(): Promise<string> {
    return until(() => (this.ended ? this.text() : undefined), "the client's end of stream");
  }
}
