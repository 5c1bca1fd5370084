// Runs the real `lockstep` command (the compiled one in dist/, as a user runs it) in a child
// process, and waits on what it prints rather than on time.

import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const CLI = path.join(ROOT, "dist", "host", "cli", "main.js");

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ResultLine {
  icount: number;
  digest: string;
  entries: number;
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-${prefix}-`));
}

/** A running `lockstep` process. */
export class LockstepProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<CliResult>;
  stdout = "";
  stderr = "";
  private readonly lineWaiters: { pattern: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  /**
   * `wrap`: a command that runs node, e.g. ["ip", "netns", "exec", NS] to start it in a
   * network namespace (it execs node, so the pid is node's). `env`: added to this process's.
   */
  constructor(args: string[], options: { nodeFlags?: string[]; cwd?: string; wrap?: string[]; env?: Record<string, string> } = {}) {
    const command = [...(options.wrap ?? []), process.execPath, ...(options.nodeFlags ?? []), CLI, ...args];
    this.child = spawn(command[0]!, command.slice(1), {
      cwd: options.cwd ?? ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...options.env },
    });
    this.child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      this.stdout += chunk;
    });
    this.child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
      this.checkWaiters();
    });
    this.exited = new Promise((resolve) => {
      this.child.on("close", (code, signal) => {
        for (const waiter of this.lineWaiters.splice(0)) {
          waiter.resolve(null as unknown as RegExpMatchArray);
        }
        resolve({ code, signal, stdout: this.stdout, stderr: this.stderr });
      });
    });
  }

  /** Resolves with the first stderr match of `pattern`; rejects if the process ends first. */
  async waitForStderr(pattern: RegExp): Promise<RegExpMatchArray> {
    const found = this.stderr.match(pattern);
    if (found) return found;
    const match = await new Promise<RegExpMatchArray>((resolve) => this.lineWaiters.push({ pattern, resolve }));
    if (match === null) throw new Error(`process ended before printing ${pattern}:\n${this.stderr}`);
    return match;
  }

  /** The JSON of the READY line a daemon prints on stdout once it serves; rejects if it exits first. */
  async ready(): Promise<Record<string, unknown>> {
    while (!/^READY /m.test(this.stdout)) {
      const more = await Promise.race([
        new Promise<boolean>((resolve) => this.child.stdout!.once("data", () => resolve(true))),
        this.exited.then(() => false),
      ]);
      if (!more) throw new Error(`exited before READY:\n${this.stderr.slice(-3000)}`);
    }
    return JSON.parse(/^READY (.*)$/m.exec(this.stdout)![1]!) as Record<string, unknown>;
  }

  /** The address the guest's virtual port is served on, once it listens. */
  async listening(): Promise<{ host: string; port: number }> {
    const match = await this.waitForStderr(/listening on ([\d.]+):(\d+)/);
    return { host: match[1]!, port: Number(match[2]) };
  }

  private checkWaiters(): void {
    for (let i = this.lineWaiters.length - 1; i >= 0; i--) {
      const match = this.stderr.match(this.lineWaiters[i]!.pattern);
      if (match) this.lineWaiters.splice(i, 1)[0]!.resolve(match);
    }
  }
}

export function lockstep(args: string[], options: { nodeFlags?: string[]; cwd?: string } = {}): Promise<CliResult> {
  return new LockstepProcess(args, options).exited;
}

/** The one JSON line that record and replay end with. */
export function resultLine(result: CliResult): ResultLine {
  const lines = result.stdout.trim().split("\n");
  const last = lines[lines.length - 1] ?? "";
  try {
    return JSON.parse(last) as ResultLine;
  } catch {
    throw new Error(`no result line (exit ${result.code}):\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
  }
}

/** Runs a real client program to completion. */
export function run(command: string, args: string[], input?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
    // A program that never reads its input (curl) may exit before the pipe is closed: the
    // EPIPE that follows says nothing about the program, whose exit status and output do.
    child.stdin.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code !== "EPIPE") reject(error);
    });
    child.stdin.end(input ?? "");
  });
}
