// Clients through the switch (issue 4): redis-benchmark against the kv guest with FT (the
// embedded cluster, through its switch), without FT through a switch, and directly without
// one; beside them what a user would otherwise pick, redis-server, alone and with a replica
// where each write waits for it (WAIT 1 0). Every row is a ratio to the direct non-FT run of
// this same process. Then failover as a client sees it: the longest gap between two replies
// while the primary's host is killed, over repeated runs.

import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { RespClient } from "../host/checker/resp-client.js";
import { UpProcess } from "../host/cluster/up-process.js";
import { SwitchNic } from "../host/devices/switch-nic.js";
import { SILENT_LOGGER } from "../host/log.js";
import { Switch } from "../host/switch/switch.js";
import { loadGuest } from "../host/vm/guest.js";
import { Machine } from "../host/vm/machine.js";
import { type BenchmarkFigures as Figures, percentile, redisBenchmark, withKvDirect } from "./kv-load.js";

const REQUESTS = 20_000;
const CLIENTS = 50;
const PIPELINE = 16;
const KV_LOAD = ["-t", "set,get,incr", "-n", String(REQUESTS), "-c", String(CLIENTS)];
const WRITE_WAIT_OPS = 3_000;
const WRITE_WAIT_CLIENTS = 8;
const FAILOVER_RUNS = 3;
/** A user's shorter failure timeout, to show what the gap is made of. */
const FAST_TIMEOUT_MS = 500;


export interface SwitchBenchRow {
  target: string;
  plain: Figures;
  pipelined: Figures;
  /** SET then (redis) WAIT 1 0, 8 clients one request at a time: what a durable write costs. */
  durableWrite: Figures | null;
}

/** Table 2 of the paper: what the logging channel carries for what the clients move. */
export interface BandwidthRow {
  workload: string;
  clientMbitPerSecond: number;
  logMbitPerSecond: number;
}

export interface SwitchBenchResult {
  rows: SwitchBenchRow[];
  bandwidth: BandwidthRow[];
  failoverGapMs: number[];
  /** The same with --timeout-ms FAST_TIMEOUT_MS. */
  failoverGapFastMs: number[];
}

/** WRITE_WAIT_CLIENTS clients doing SET (then WAIT 1 0 when `wait`), one at a time. */
async function durableWrites(address: string, wait: boolean): Promise<Figures> {
  const latencies: number[] = [];
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: WRITE_WAIT_CLIENTS }, async (_, id) => {
      const client = new RespClient(address);
      await client.connected;
      while (next < WRITE_WAIT_OPS) {
        const n = next++;
        const t0 = performance.now();
        await client.command("SET", `durable:${id}:${n % 100}`, `v${n}`);
        if (wait) await client.command("WAIT", 1, 0);
        latencies.push(performance.now() - t0);
      }
      client.close();
    }),
  );
  return { rps: WRITE_WAIT_OPS / ((performance.now() - started) / 1000), p50Ms: percentile(latencies, 0.5), p99Ms: percentile(latencies, 0.99) };
}

async function measure(target: string, address: string, durable: "plain" | "wait" | null): Promise<SwitchBenchRow> {
  return {
    target,
    plain: await redisBenchmark(address, KV_LOAD),
    pipelined: await redisBenchmark(address, [...KV_LOAD, "-P", String(PIPELINE)]),
    durableWrite: durable === null ? null : await durableWrites(address, durable === "wait"),
  };
}

const VALUE_BYTES = 16 * 1024;
const BANDWIDTH_REQUESTS = 4_000;

/**
 * Logging bandwidth against client bandwidth for one redis-benchmark workload of 16 KiB values:
 * received bytes are logged (inputs), transmitted ones are not (outputs replay by themselves).
 */
async function logBandwidth(up: UpProcess, address: string, workload: string, test: string[]): Promise<BandwidthRow> {
  const port = address.slice(address.lastIndexOf(":") + 1);
  const logBytes = async () => Number((await up.status()).vms[0]!.primary!.logBytesSent);
  const before = await logBytes();
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn("redis-benchmark", ["-p", port, ...test, "-d", String(VALUE_BYTES), "-n", String(BANDWIDTH_REQUESTS), "-c", "8", "-q"], { stdio: "ignore" });
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve() : reject(new Error(`redis-benchmark ${test.join(" ")} failed (${code})`))));
  });
  const seconds = (performance.now() - started) / 1000;
  const logged = (await logBytes()) - before;
  return { workload, clientMbitPerSecond: (BANDWIDTH_REQUESTS * VALUE_BYTES * 8) / seconds / 1e6, logMbitPerSecond: (logged * 8) / seconds / 1e6 };
}

/** No FT through a switch: the switch and the kv guest's machine in this process. */
async function throughSwitch<T>(body: (address: string) => Promise<T>): Promise<T> {
  const sw = await Switch.start({ bind: "127.0.0.1", port: 0, token: null, services: [{ name: "kv", vm: "kv", vport: 6379, host: "127.0.0.1", port: 0 }], log: SILENT_LOGGER });
  const disk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-")), "kv.img");
  let listening: () => void;
  const listened = new Promise<void>((resolve) => (listening = resolve));
  const machine = new Machine({
    mode: "live",
    module: loadGuest("kv").module,
    diskFile: disk,
    diskBlocks: 4096,
    nic: (deliver) =>
      new SwitchNic({ url: sw.linkUrl("kv").replace(/\/link\/kv$/, ""), vm: "kv", host: "bench", generation: () => 1, onError: () => undefined, onListening: () => listening() }, deliver),
  });
  try {
    await listened;
    return await body(sw.serviceAddresses().kv!);
  } finally {
    machine.stop();
    await machine.done;
    await sw.close();
  }
}

/** redis-server on a free port, optionally with a replica of it; both gone after `body`. */
async function redisServer<T>(withReplica: boolean, body: (address: string) => Promise<T>): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-redis-"));
  const children: ChildProcess[] = [];
  const start = async (port: number, args: string[]) => {
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on("line", (line) => line.includes("Ready to accept connections") && resolve());
      child.once("exit", (code) => reject(new Error(`redis-server exited (${code})`)));
    });
  };
  const port = 16379 + Math.floor(Math.random() * 1000);
  try {
    await start(port, []);
    if (withReplica) {
      await start(port + 1, ["--replicaof", "127.0.0.1", String(port)]);
      const client = new RespClient(`127.0.0.1:${port}`);
      await client.connected;
      // Wait until the replica is attached: WAIT answers how many replicas acknowledged.
      while (Number(await client.command("WAIT", 1, 100)) < 1) await client.command("SET", "warmup", "1");
      client.close();
    }
    return await body(`127.0.0.1:${port}`);
  } finally {
    for (const child of children) child.kill("SIGKILL");
  }
}

/** The longest gap between two replies one client sees while the kv primary's host is killed. */
export async function failoverGap(timeoutMs = 1000): Promise<number> {
  const up = new UpProcess(["--guest", "kv", "--timeout-ms", String(timeoutMs)]);
  try {
    const ready = await up.ready;
    const client = new RespClient(ready.services!.kv!);
    await client.connected;
    let last = performance.now();
    let gap = 0;
    let stop = false;
    const loop = (async () => {
      for (let n = 0; !stop; n++) {
        await client.command("INCR", "gap");
        const now = performance.now();
        gap = Math.max(gap, now - last);
        last = now;
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 500)); // a steady state first: not a synchronization
    gap = 0;
    const from = up.seen;
    const vm = ready.vms[0]!;
    process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
    await up.event((l) => l.event === "wentLive" && l.host === vm.backup, "go-live", from);
    const repliesAfter = (async () => {
      for (let i = 0; i < 100; i++) await client.command("GET", "gap");
    })();
    await repliesAfter;
    stop = true;
    await loop;
    client.close();
    return gap;
  } finally {
    await up.stop();
  }
}

export async function runSwitchBench(): Promise<SwitchBenchResult> {
  const rows: SwitchBenchRow[] = [];
  rows.push(await withKvDirect((address) => measure("kv, no FT, direct (baseline)", address, "plain")));
  rows.push(await throughSwitch((address) => measure("kv, no FT, through the switch", address, "plain")));
  const up = new UpProcess(["--guest", "kv"]);
  const bandwidth: BandwidthRow[] = [];
  try {
    const address = (await up.ready).services!.kv!;
    rows.push(await measure("kv with FT, through the switch", address, "plain"));
    bandwidth.push(await logBandwidth(up, address, "receive-heavy: SET of 16 KiB values", ["-t", "set"]));
    bandwidth.push(await logBandwidth(up, address, "transmit-heavy: GET of 16 KiB values", ["-t", "get"]));
  } finally {
    await up.stop();
  }
  rows.push(await redisServer(false, (address) => measure("redis-server alone", address, "plain")));
  rows.push(await redisServer(true, (address) => measure("redis-server + replica, WAIT 1 0 per write", address, "wait")));
  const failoverGapMs: number[] = [];
  const failoverGapFastMs: number[] = [];
  for (let i = 0; i < FAILOVER_RUNS; i++) {
    failoverGapMs.push(await failoverGap());
    failoverGapFastMs.push(await failoverGap(FAST_TIMEOUT_MS));
  }
  return { rows, bandwidth, failoverGapMs, failoverGapFastMs };
}

export function printSwitchBench(r: SwitchBenchResult): void {
  const base = r.rows[0]!;
  const cell = (f: Figures, b: Figures) => `${(f.rps / b.rps).toFixed(3)} (${Math.round(f.rps)}/s, p50 ${f.p50Ms.toFixed(2)} p99 ${f.p99Ms.toFixed(2)} ms)`;
  console.log(`requests/s as a ratio to the first row; redis-benchmark SET/GET/INCR, ${CLIENTS} clients; durable write: SET (+WAIT 1 0), ${WRITE_WAIT_CLIENTS} clients`);
  for (const row of r.rows) {
    console.log(`${row.target}`);
    console.log(`  plain      ${cell(row.plain, base.plain)}`);
    console.log(`  pipelined  ${cell(row.pipelined, base.pipelined)}  (-P ${PIPELINE})`);
    if (row.durableWrite !== null && base.durableWrite !== null) console.log(`  durable    ${cell(row.durableWrite, base.durableWrite)}`);
  }
  for (const b of r.bandwidth) {
    console.log(`logging bandwidth, ${b.workload}: ${b.logMbitPerSecond.toFixed(1)} Mbit/s of log for ${b.clientMbitPerSecond.toFixed(1)} Mbit/s of client values`);
  }
  console.log(
    `failover as a client sees it, longest gap between replies: p50 ${Math.round(percentile(r.failoverGapMs, 0.5))} ms (runs: ${r.failoverGapMs.map(Math.round).join(", ")})`,
  );
  console.log(
    `  the same with --timeout-ms ${FAST_TIMEOUT_MS}: p50 ${Math.round(percentile(r.failoverGapFastMs, 0.5))} ms (runs: ${r.failoverGapFastMs.map(Math.round).join(", ")})`,
  );
}

if (import.meta.url === `file://${process.argv[1]}`) printSwitchBench(await runSwitchBench());
