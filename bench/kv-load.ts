// What the kv benchmarks share: the baseline every kv figure is a ratio to (`lockstep run kv`,
// the guest on a TCP port of its own, with a local disk, no FT and no switch, as a separate
// process like the others), the redis-benchmark runner, and percentiles.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { PROJECT_ROOT } from "../host/vm/guest.js";

export interface BenchmarkFigures {
  /** Requests per second, the mean over the tests run. */
  rps: number;
  /** The worst test's p50 and p99 latency. */
  p50Ms: number;
  p99Ms: number;
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

/** redis-benchmark --csv against `address` with `args` (tests, counts, clients...). */
export function redisBenchmark(address: string, args: string[]): Promise<BenchmarkFigures> {
  const port = address.slice(address.lastIndexOf(":") + 1);
  return new Promise((resolve, reject) => {
    const child = spawn("redis-benchmark", ["-p", port, "--csv", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout!.on("data", (c: Buffer) => (out += c.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
      const rows = out
        .split("\n")
        .filter((line) => /^"[A-Z]/.test(line))
        .map((line) => line.split(",").map((cell) => Number(cell.replaceAll('"', ""))));
      if (code !== 0 || rows.length === 0) return reject(new Error(`redis-benchmark failed (${code}): ${out}`));
      resolve({
        rps: rows.reduce((sum, row) => sum + row[1]!, 0) / rows.length,
        p50Ms: Math.max(...rows.map((row) => row[4]!)),
        p99Ms: Math.max(...rows.map((row) => row[6]!)),
      });
    });
  });
}

export async function withKvDirect<T>(body: (address: string) => Promise<T>): Promise<T> {
  const disk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-")), "kv.img");
  const args = ["run", "kv", "--listen", "6379=127.0.0.1:0", "--disk", disk];
  const child = spawn(process.execPath, ["--no-liftoff", path.join(PROJECT_ROOT, "dist/host/cli/main.js"), ...args], {
    cwd: PROJECT_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    const address = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stderr! }).on("line", (line) => {
        const match = /listening on ([\d.]+:\d+)/.exec(line);
        if (match) resolve(match[1]!);
      });
      child.once("exit", (code) => reject(new Error(`lockstep run kv exited (${code})`)));
    });
    return await body(address);
  } finally {
    child.kill("SIGINT");
    fs.rmSync(path.dirname(disk), { recursive: true, force: true });
  }
}
