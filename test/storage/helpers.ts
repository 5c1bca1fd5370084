// Real storage servers in child processes, and raw WebSocket peers to feed them bytes.
// Everything waits on what the processes print or send, never on time.

import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { WebSocket } from "ws";
import { expect } from "vitest";
import { decodeFrame, encodeFrame, type Frame, FrameType, type HelloFrame } from "../../protocol/storage-frames.js";
import { StorageClient, type StorageClientOptions, type StorageState } from "../../host/storage/client.js";
import { ROOT } from "../helpers/cli.js";

export const ENTRY = path.join(ROOT, "test", "storage", "server-entry.ts");
export const CLI_SOURCE = path.join(ROOT, "host", "cli", "main.ts");

export interface LogLine {
  ts: string;
  level: "debug" | "info" | "warn" | "error";
  msg: string;
  vm: string | null;
  generation: number | null;
  [field: string]: unknown;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const tempDirs: string[] = [];

export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-storage-${prefix}-`));
  tempDirs.push(dir);
  return dir;
}

const running = new Set<StorageProcess>();

/** Kills every server a test file started, then removes its directories (afterAll). */
export async function killAll(): Promise<void> {
  await Promise.all([...running].map((server) => server.kill("SIGKILL")));
  for (const dir of tempDirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

export interface StartOptions {
  dir: string;
  port?: number;
  token?: string;
  args?: string[];
  /** RLIMIT_FSIZE in 512-byte blocks (sh `ulimit -f`): writes past it fail with EFBIG. */
  fileSizeLimitBlocks?: number;
  /** Run the real CLI (host/cli/main.ts) rather than the lean entry. */
  realCli?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** A `lockstep storage` process. */
export class StorageProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<Exit>;
  readonly ready: Promise<{ url: string; pid: number }>;
  stdout = "";
  stderr = "";
  readonly logs: LogLine[] = [];
  /** stderr lines that are not JSON (the CLI's one-line errors). */
  readonly plainLines: string[] = [];
  private stderrRest = "";
  private readonly waiters: { test: (line: LogLine) => boolean; resolve: (line: LogLine) => void; reject: (error: Error) => void }[] = [];
  private hasExited = false;

  constructor(readonly options: StartOptions) {
    const args = [
      "--import",
      "tsx",
      options.realCli ? CLI_SOURCE : ENTRY,
      ...(options.realCli ? ["storage"] : []),
      "--port",
      String(options.port ?? 0),
      "--dir",
      options.dir,
      "--log-level",
      "debug",
      ...(options.token === undefined ? [] : ["--token", options.token]),
      ...(options.args ?? []),
    ];
    const [command, argv] =
      options.fileSizeLimitBlocks === undefined
        ? [process.execPath, args]
        : ["/bin/sh", ["-c", `ulimit -f ${options.fileSizeLimitBlocks} && exec "$0" "$@"`, process.execPath, ...args]];
    this.child = spawn(command, argv as string[], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...options.env },
    });
    running.add(this);
    this.child.stderr!.setEncoding("utf8").on("data", (chunk: string) => this.onStderr(chunk));
    this.ready = new Promise((resolve, reject) => {
      this.child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
        this.stdout += chunk;
        const match = /^READY (\{.*\})$/m.exec(this.stdout);
        if (match) resolve(JSON.parse(match[1]!) as { url: string; pid: number });
      });
      this.child.on("close", () => reject(new Error(`server exited before READY:\n${this.stderr}`)));
    });
    this.ready.catch(() => undefined);
    this.exited = new Promise((resolve) => {
      this.child.on("close", (code, signal) => {
        this.hasExited = true;
        running.delete(this);
        for (const waiter of this.waiters.splice(0)) waiter.reject(new Error(`server exited before the log line:\n${this.stderr}`));
        resolve({ code, signal });
      });
    });
  }

  static async start(options: StartOptions): Promise<{ server: StorageProcess; url: string; port: number }> {
    const server = new StorageProcess(options);
    const { url } = await server.ready;
    return { server, url, port: Number(new URL(url).port) };
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The first log line, printed or to come, for which `test` holds. */
  waitForLog(test: (line: LogLine) => boolean): Promise<LogLine> {
    const found = this.logs.find(test);
    if (found) return Promise.resolve(found);
    if (this.hasExited) return Promise.reject(new Error(`server exited before the log line:\n${this.stderr}`));
    return new Promise((resolve, reject) => this.waiters.push({ test, resolve, reject }));
  }

  waitForMsg(msg: string, fields: Record<string, unknown> = {}): Promise<LogLine> {
    return this.waitForLog((line) => line.msg === msg && Object.entries(fields).every(([key, value]) => line[key] === value));
  }

  /** Sends `signal` and waits for the exit. */
  async kill(signal: NodeJS.Signals): Promise<Exit> {
    if (!this.hasExited) this.child.kill(signal);
    return this.exited;
  }

  private onStderr(chunk: string): void {
    this.stderr += chunk;
    const lines = (this.stderrRest + chunk).split("\n");
    this.stderrRest = lines.pop()!;
    for (const text of lines) {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        this.plainLines.push(text);
        continue;
      }
      this.logs.push(line);
      for (let index = this.waiters.length - 1; index >= 0; index--) {
        if (this.waiters[index]!.test(line)) this.waiters.splice(index, 1)[0]!.resolve(line);
      }
    }
  }
}

/** Every stderr line of a server is a structured log line with the common fields. */
export function expectStructuredLogs(server: StorageProcess): void {
  expect(server.plainLines, server.stderr).toEqual([]);
  for (const line of server.logs) {
    expect(Object.keys(line).slice(0, 5)).toEqual(["ts", "level", "msg", "vm", "generation"]);
    expect(Number.isNaN(Date.parse(line.ts))).toBe(false);
    expect(["debug", "info", "warn", "error"]).toContain(line.level);
  }
}

export async function client(url: string, options: Partial<StorageClientOptions> = {}): Promise<StorageClient> {
  return StorageClient.connect(url, { clientId: "test", ...options });
}

/** Resolves on the client's next change to `state`. */
export function nextState(storage: StorageClient, state: StorageState): Promise<string> {
  return new Promise((resolve) => {
    const off = storage.onState((now, reason) => {
      if (now === state) {
        off();
        resolve(reason);
      }
    });
  });
}

export function pattern(seed: number, blocks = 1): Uint8Array {
  const data = new Uint8Array(blocks * 4096);
  for (let index = 0; index < data.length; index++) data[index] = (seed * 131 + index * 7 + (index >> 12)) & 0xff;
  return data;
}

// ---------------------------------------------------------------------------------------------
// A raw peer: bytes in, frames and the close out.

export class RawPeer {
  readonly messages: Buffer[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private readonly waiters: ((message: Buffer) => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => {
      const message = data as Buffer;
      const waiter = this.waiters.shift();
      if (waiter) waiter(message);
      else this.messages.push(message);
    });
    ws.on("error", () => undefined);
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  static async connect(url: string): Promise<RawPeer> {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    const peer = new RawPeer(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return peer;
  }

  /** Connects and says hello; resolves once welcomed. */
  static async hello(url: string, hello: Partial<HelloFrame> = {}): Promise<RawPeer> {
    const peer = await RawPeer.connect(url);
    peer.send(encodeFrame({ type: FrameType.Hello, clientId: "raw", instance: 1, session: 1, token: "", ...hello }));
    const welcome = await peer.frame();
    expect(welcome.type).toBe(FrameType.Welcome);
    return peer;
  }

  send(bytes: Uint8Array | string): void {
    this.ws.send(bytes);
  }

  /** The next message; rejects if the connection closes first. */
  message(): Promise<Buffer> {
    const queued = this.messages.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      this.waiters.push(resolve);
      void this.closed.then(() => reject(new Error("closed before the next message")));
    });
  }

  async frame(): Promise<Frame> {
    return decodeFrame(await this.message());
  }
}
