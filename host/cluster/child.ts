// A `lockstep` daemon run as a child process of `lockstep up`: started with the same Node and
// entry script as the parent, READY line awaited on stdout, JSON log lines read from stderr.
//
// The child's stdin is a lifeline: when the parent dies, even by SIGKILL, the pipe closes and
// the child stops itself (main.ts, LOCKSTEP_LIFELINE), so no daemon outlives its cluster.

import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { LockstepError } from "../errors.js";

/** A daemon that has not said READY by then is reported as failed to start. */
const READY_TIMEOUT_MS = 30_000;
/** A log line longer than this is cut: a child must not make its parent buffer without bound. */
const LOG_LINE_CHARS_MAX = 64 * 1024;

export interface ChildOptions {
  name: string;
  args: string[];
  env?: Record<string, string>;
  /** Each stderr line, parsed when it is JSON (else { msg: line }). */
  onLog: (line: Record<string, unknown>) => void;
  onExit: (code: number | null, signal: NodeJS.Signals | null) => void;
}

export class Child {
  readonly process: ChildProcess;
  private exitedNow = false;
  readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    child: ChildProcess,
  ) {
    this.process = child;
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  get pid(): number {
    return this.process.pid ?? -1;
  }

  get alive(): boolean {
    return !this.exitedNow;
  }

  /** Starts the child and resolves with it and the JSON of its READY line. */
  static start(options: ChildOptions): Promise<{ child: Child; ready: Record<string, unknown> }> {
    const entry = process.argv[1];
    if (entry === undefined) throw new LockstepError("USAGE", "cannot tell which script runs lockstep");
    const proc = spawn(process.execPath, [...process.execArgv, entry, ...options.args], {
      stdio: ["pipe", "pipe", "pipe"],
      // Its own process group: a Ctrl-C at the terminal reaches `lockstep up` alone, which then
      // stops the hosts in order.
      detached: true,
      env: { ...process.env, ...options.env, LOCKSTEP_LIFELINE: "1" },
    });
    const child = new Child(options.name, proc);
    // Errors on the lifeline pipe (the child died first) are expected and not ours to report.
    proc.stdin!.on("error", () => undefined);
    createInterface({ input: proc.stderr!, crlfDelay: Infinity }).on("line", (line) => options.onLog(parseLogLine(line)));
    return new Promise((resolve, reject) => {
      let ready = false;
      const fail = (why: string) => {
        clearTimeout(timer);
        proc.kill("SIGKILL");
        reject(new LockstepError("USAGE", `${options.name} failed to start: ${why}`));
      };
      const timer = setTimeout(() => fail(`did not say READY within ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
      proc.once("exit", (code, signal) => {
        child.exitedNow = true;
        if (ready) options.onExit(code, signal);
        else fail(`exited (${signal ?? code}) before READY`);
      });
      createInterface({ input: proc.stdout!, crlfDelay: Infinity }).on("line", (line) => {
        if (ready || !line.startsWith("READY ")) return;
        clearTimeout(timer);
        try {
          const json = JSON.parse(line.slice("READY ".length)) as Record<string, unknown>;
          ready = true;
          resolve({ child, ready: json });
        } catch {
          fail(`READY line is not JSON: ${line.slice(0, 200)}`);
        }
      });
    });
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    if (!this.alive) return;
    this.process.kill("SIGTERM");
    const timer = setTimeout(() => this.process.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

function parseLogLine(line: string): Record<string, unknown> {
  const text = line.length > LOG_LINE_CHARS_MAX ? line.slice(0, LOG_LINE_CHARS_MAX) : line;
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch {
    // Not JSON: a Node warning or a crash trace. Keep it as a message.
  }
  return { level: "warn", msg: text };
}
