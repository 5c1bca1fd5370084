// A `lockstep up` run from a program (the tests, the benchmarks): spawns the compiled command
// as a user would, and waits on what it says: its READY line on stdout, and the hosts' JSON
// log lines on stderr (events, console output). Waiting is always on a line, never on time.

import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { PROJECT_ROOT } from "../vm/guest.js";

const CLI = path.join(PROJECT_ROOT, "dist", "host", "cli", "main.js");
/** A wait for a log line gives up after this long (a diagnosis, not a speed requirement). */
const WAIT_DEADLINE_MS = 90_000;
/** Log lines kept; a long benchmark drops the oldest (indexes passed to `event` stay valid). */
const LINES_MAX = 200_000;

export interface Ready {
  url: string;
  status: string;
  pid: number;
  storage: { url: string; pid: number };
  /** Present unless --no-switch: the switch and its client-facing services (name → address). */
  switch?: { url: string; pid: number };
  services?: Record<string, string>;
  hosts: { id: string; pid: number; url: string }[];
  /** `backup` is the first of `backups` (`--backups N`; one by default). */
  vms: { vm: string; guest: string; generation: number; primary: string; backup: string; backups: string[]; ports: Record<string, string> }[];
}

export interface LogLine {
  host: string;
  msg: string;
  vm?: string | null;
  generation?: number | null;
  event?: string;
  text?: string;
  [field: string]: unknown;
}

export interface Tick {
  host: string;
  generation: number | null;
  tick: number;
  missed: number;
}

export class UpProcess {
  readonly child: ChildProcess;
  readonly ready: Promise<Ready>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last LINES_MAX log lines; `seen` counts every line ever received. */
  readonly lines: LogLine[] = [];
  private dropped = 0;
  private readonly waiters = new Set<() => void>();

  /** `env`: added to this process's environment (e.g. LOCKSTEP_FAILPOINTS for every host). */
  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = spawn(process.execPath, [CLI, "up", "--port", "0", ...args], {
      cwd: PROJECT_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    this.ready = new Promise((resolve, reject) => {
      let stdout = "";
      createInterface({ input: this.child.stdout! }).on("line", (line) => {
        stdout += line + "\n";
        if (line.startsWith("READY ")) resolve(JSON.parse(line.slice("READY ".length)) as Ready);
      });
      void this.exited.then(({ code, signal }) =>
        reject(new Error(`lockstep up exited (${signal ?? code}) before READY\nstdout: ${stdout}\nstderr tail: ${this.tail()}`)),
      );
    });
    createInterface({ input: this.child.stderr! }).on("line", (line) => {
      try {
        this.lines.push(JSON.parse(line) as LogLine);
      } catch {
        this.lines.push({ host: "?", msg: line });
      }
      if (this.lines.length > LINES_MAX) {
        this.lines.splice(0, LINES_MAX / 2);
        this.dropped += LINES_MAX / 2;
      }
      for (const waiter of [...this.waiters]) waiter();
    });
  }

  /**
   * Resolves once `check` returns something other than undefined, re-checked on every log
   * line. Gives up after `deadlineMs` with the cluster's last log lines, so that a wait that
   * never ends says what the cluster was doing rather than hitting a bare test timeout.
   */
  until<T>(check: () => T | undefined, what: string, deadlineMs = WAIT_DEADLINE_MS): Promise<T> {
    const first = check();
    if (first !== undefined) return Promise.resolve(first);
    return new Promise((resolve, reject) => {
      const giveUp = (why: string) => {
        if (!this.waiters.has(waiter)) return;
        this.waiters.delete(waiter);
        clearTimeout(deadline);
        reject(new Error(`${why} while waiting for ${what}\n${this.tail(80)}`));
      };
      const waiter = () => {
        const value = check();
        if (value !== undefined) {
          this.waiters.delete(waiter);
          clearTimeout(deadline);
          resolve(value);
        }
      };
      const deadline = setTimeout(() => giveUp(`nothing after ${deadlineMs} ms`), deadlineMs);
      this.waiters.add(waiter);
      void this.exited.then(() => giveUp("lockstep up exited"));
    });
  }

  /** Lines received so far: pass it to `event` to wait only for what comes next. */
  get seen(): number {
    return this.dropped + this.lines.length;
  }

  /** The lines received since `from` (a value of `seen`). */
  since(from: number): LogLine[] {
    return this.lines.slice(Math.max(0, from - this.dropped));
  }

  /** The first log line (the `from`-th line received or later) that matches. */
  event(matches: (line: LogLine) => boolean, what: string, from = 0): Promise<LogLine> {
    return this.until(() => this.since(from).find(matches), what);
  }

  /** Every console line of the counter guest, in the order the cluster printed them. */
  ticks(): Tick[] {
    const ticks: Tick[] = [];
    for (const line of this.lines) {
      if (line.msg !== "console" || typeof line.text !== "string") continue;
      const match = /^tick (\d+) .*?(?: missed=(\d+))?$/.exec(line.text);
      if (match === null) continue;
      ticks.push({ host: line.host, generation: line.generation ?? null, tick: Number(match[1]), missed: Number(match[2] ?? 0) });
    }
    return ticks;
  }

  async status(): Promise<ClusterStatus> {
    const ready = await this.ready;
    const response = await fetch(ready.status);
    return (await response.json()) as ClusterStatus;
  }

  async control(vm: string, body: Record<string, unknown>): Promise<Response> {
    const ready = await this.ready;
    return fetch(`${ready.url}/api/vms/${vm}/control`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  }

  /** Cuts a host off from its peers (connected false), or joins it again. */
  async network(host: string, connected: boolean): Promise<Response> {
    const ready = await this.ready;
    return fetch(`${ready.url}/api/hosts/${host}/network`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ connected }) });
  }

  /** Ctrl-C, as a user stops it. */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGINT");
    return this.exited;
  }

  tail(lines = 40): string {
    return this.lines
      .slice(-lines)
      .map((l) => JSON.stringify(l))
      .join("\n");
  }
}

export interface SideStatus {
  host: string;
  pid: number;
  role: "primary" | "backup";
  state: string;
  generation: number;
  icount: string;
  ports: Record<string, string>;
  [field: string]: unknown;
}

export interface ClusterStatus {
  storage: { url: string; pid: number; state: string } | null;
  hosts: { id: string; pid: number; state: string; storageReachable: boolean | null; connected: boolean | null; vms: { vm: string; role: string; state: string }[] }[];
  /** `backup` is the first of `backups`; `backupsWanted` is `--backups`. */
  vms: { vm: string; generation: number | null; state: string; backupsWanted: number; primary: SideStatus | null; backup: SideStatus | null; backups: SideStatus[] }[];
  events: { host: string; event: string; vm: string | null; generation: number | null; msg: string }[];
}

