// A minimal Redis client for the history tests and the benchmarks, which must record each
// operation's outcome and latency themselves: one TCP connection, commands answered in order,
// and a clear difference between an error reply (the command failed) and a lost connection (its
// outcome is unknown).

import net from "node:net";

export type Reply = string | number | null | Reply[];

export class ReplyError extends Error {}
/** The connection ended with this command unanswered: it may or may not have taken effect. */
export class ConnectionLost extends Error {}

/** Replies kept unread at most: a test client reads what it asks for. */
const BUFFER_BYTES_MAX = 16 * 1024 * 1024;

export class RespClient {
  private readonly socket: net.Socket;
  private readonly waiting: { resolve: (reply: Reply) => void; reject: (error: Error) => void }[] = [];
  private buffer: Buffer = Buffer.alloc(0);
  private lost: Error | null = null;
  readonly connected: Promise<void>;

  constructor(address: string) {
    const port = Number(address.slice(address.lastIndexOf(":") + 1));
    this.socket = net.connect(port, address.slice(0, address.lastIndexOf(":")));
    this.socket.setNoDelay(true);
    this.connected = new Promise((resolve, reject) => {
      this.socket.once("connect", resolve);
      this.socket.once("error", reject);
    });
    this.socket.on("data", (chunk: Buffer) => this.received(chunk));
    this.socket.on("error", (error) => this.fail(new ConnectionLost(error.message)));
    this.socket.on("close", () => this.fail(new ConnectionLost("connection closed")));
  }

  command(...args: (string | number)[]): Promise<Reply> {
    if (this.lost !== null) return Promise.reject(this.lost);
    const parts = args.map(String);
    this.socket.write(`*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join(""));
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(error: Error): void {
    if (this.lost !== null) return;
    this.lost = error;
    for (const waiter of this.waiting.splice(0)) waiter.reject(error);
  }

  private received(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length > BUFFER_BYTES_MAX) return this.fail(new ConnectionLost("reply buffer overflow"));
    for (;;) {
      let parsed;
      try {
        parsed = parse(this.buffer, 0);
      } catch (error) {
        this.socket.destroy();
        return this.fail(new ConnectionLost((error as Error).message));
      }
      if (parsed === null) return;
      this.buffer = this.buffer.subarray(parsed.end);
      const waiter = this.waiting.shift();
      if (waiter === undefined) return this.fail(new ConnectionLost("a reply nobody asked for"));
      if (parsed.error !== undefined) waiter.reject(new ReplyError(parsed.error));
      else waiter.resolve(parsed.reply);
    }
  }
}

/** One RESP value at `at`, or null when the buffer does not hold all of it yet. */
function parse(buffer: Buffer, at: number): { reply: Reply; error?: string; end: number } | null {
  const lineEnd = buffer.indexOf("\r\n", at);
  if (lineEnd < 0) return null;
  const line = buffer.toString("utf8", at + 1, lineEnd);
  const next = lineEnd + 2;
  switch (String.fromCharCode(buffer[at]!)) {
    case "+":
      return { reply: line, end: next };
    case "-":
      return { reply: null, error: line, end: next };
    case ":":
      return { reply: Number(line), end: next };
    case "$": {
      const length = Number(line);
      if (length < 0) return { reply: null, end: next };
      if (buffer.length < next + length + 2) return null;
      return { reply: buffer.toString("utf8", next, next + length), end: next + length + 2 };
    }
    case "*": {
      const count = Number(line);
      if (count < 0) return { reply: null, end: next };
      const items: Reply[] = [];
      let end = next;
      for (let i = 0; i < count; i++) {
        const item = parse(buffer, end);
        if (item === null) return null;
        items.push(item.reply);
        end = item.end;
      }
      return { reply: items, end };
    }
    default:
      throw new Error(`not RESP: ${JSON.stringify(line.slice(0, 40))}`);
  }
}
