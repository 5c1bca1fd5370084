// VM benchmarks: record vs live, replay vs record, and log bandwidth.
//
// Every figure is a ratio against a baseline measured in this same process, alternating
// rounds so that a noisy neighbour hits both sides alike; medians are reported.

import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { encodedRecordBytes } from "../protocol/codec.js";
import type { LogRecord } from "../protocol/records.js";
import { loadGuest } from "../host/vm/guest.js";
import { Machine, recordsSource } from "../host/vm/machine.js";
import type { VmMode } from "../host/vm/messages.js";

const ROUNDS = 5;

export interface VmBenchResult {
  cpuRecordOverLive: number;
  cpuReplayOverRecord: number;
  kvRecordOverLive: number;
  kvReplaySpeedup: number;
  counterLogBytesPerSecond: number;
  kvLogBytesPerSecond: number;
  kvRequestsPerSecondLive: number;
  kvRequestsPerSecondRecord: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}


async function timeRun(
  guest: string,
  mode: VmMode,
  extra: Partial<ConstructorParameters<typeof Machine>[0]> = {},
): Promise<{ ms: number; records: LogRecord[] }> {
  const loaded = loadGuest(guest);
  const records: LogRecord[] = [];
  const start = performance.now();
  const result = await new Machine({
    mode,
    module: loaded.module,
    onRecords: (batch) => records.push(...batch),
    ...extra,
  }).done;
  const ms = performance.now() - start;
  if (result.stop === "error" || result.stop === "divergence" || result.stop === "trap") {
    throw new Error(`${guest} ${mode}: ${result.message}`);
  }
  return { ms, records };
}

async function cpuRatios(): Promise<{ recordOverLive: number; replayOverRecord: number }> {
  const recordOverLive: number[] = [];
  const replayOverRecord: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const live = await timeRun("cpu", "live");
    const record = await timeRun("cpu", "record");
    const replay = await timeRun("cpu", "replay", { replay: recordsSource(record.records) });
    // Throughput ratios: above 1 means the second is faster.
    recordOverLive.push(live.ms / record.ms);
    replayOverRecord.push(record.ms / replay.ms);
  }
  return { recordOverLive: median(recordOverLive), replayOverRecord: median(replayOverRecord) };
}

/**
 * redis-benchmark against a kv VM in `mode`; returns requests/s, log bytes and records, and the
 * sizes of the batches the vCPU posted them in (what a primary sends as one entries frame).
 */
export async function kvUnderLoad(
  mode: "live" | "record",
  load = ["-t", "set,get,incr", "-n", "20000", "-c", "8"],
): Promise<{ rps: number; logBytes: number; seconds: number; records: LogRecord[]; batchSizes: number[] }> {
  const loaded = loadGuest("kv");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-kv-"));
  const records: LogRecord[] = [];
  const batchSizes: number[] = [];
  let logBytes = 0;
  let resolvePort: (port: number) => void;
  const portKnown = new Promise<number>((resolve) => (resolvePort = resolve));
  const machine = new Machine({
    mode,
    module: loaded.module,
    diskFile: path.join(dir, "kv.img"),
    diskBlocks: 4096,
    listen: () => ({ host: "127.0.0.1", port: 0 }),
    onListening: (_virtual, address) => resolvePort(address.port),
    onRecords: (batch) => {
      for (const record of batch) logBytes += encodedRecordBytes(record);
      records.push(...batch);
      batchSizes.push(batch.length);
    },
  });
  const port = await portKnown;
  const start = performance.now();
  const bench = spawn("redis-benchmark", ["-p", String(port), ...load, "-q", "--csv"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let csv = "";
  bench.stdout.setEncoding("utf8").on("data", (c: string) => (csv += c));
  await once(bench, "close");
  const seconds = (performance.now() - start) / 1000;
  machine.stop();
  await machine.done;
  fs.rmSync(dir, { recursive: true, force: true });
  const rates = [...csv.matchAll(/^"(SET|GET|INCR)","([\d.]+)"/gm)].map((m) => Number(m[2]));
  if (rates.length === 0) throw new Error(`redis-benchmark printed no rates:\n${csv}`);
  return { rps: rates.reduce((a, b) => a + b, 0) / rates.length, logBytes, seconds, records, batchSizes };
}

async function kvRatios(): Promise<{ recordOverLive: number; replaySpeedup: number; logBytesPerSecond: number; live: number; record: number }> {
  const recordOverLive: number[] = [];
  const replaySpeedup: number[] = [];
  const bandwidth: number[] = [];
  const liveRates: number[] = [];
  const recordRates: number[] = [];
  for (let round = 0; round < 3; round++) {
    const live = await kvUnderLoad("live");
    const record = await kvUnderLoad("record");
    const replay = await timeRun("kv", "replay", { replay: recordsSource(record.records), diskBlocks: 4096 });
    liveRates.push(live.rps);
    recordRates.push(record.rps);
    recordOverLive.push(record.rps / live.rps);
    replaySpeedup.push((record.seconds * 1000) / replay.ms);
    bandwidth.push(record.logBytes / record.seconds);
  }
  return {
    recordOverLive: median(recordOverLive),
    replaySpeedup: median(replaySpeedup),
    logBytesPerSecond: median(bandwidth),
    live: median(liveRates),
    record: median(recordRates),
  };
}

async function counterBandwidth(): Promise<number> {
  const seconds = 3;
  const loaded = loadGuest("counter");
  let bytes = 0;
  const machine = new Machine({
    mode: "record",
    module: loaded.module,
    onRecords: (batch) => {
      for (const record of batch) bytes += encodedRecordBytes(record);
    },
  });
  const timer = setTimeout(() => machine.stop(), seconds * 1000);
  await machine.done;
  clearTimeout(timer);
  return bytes / seconds;
}

export async function runVmBench(): Promise<VmBenchResult> {
  const cpu = await cpuRatios();
  const kv = await kvRatios();
  const counter = await counterBandwidth();
  return {
    cpuRecordOverLive: cpu.recordOverLive,
    cpuReplayOverRecord: cpu.replayOverRecord,
    kvRecordOverLive: kv.recordOverLive,
    kvReplaySpeedup: kv.replaySpeedup,
    counterLogBytesPerSecond: counter,
    kvLogBytesPerSecond: kv.logBytesPerSecond,
    kvRequestsPerSecondLive: kv.live,
    kvRequestsPerSecondRecord: kv.record,
  };
}

export function printVmBench(r: VmBenchResult): void {
  const rows = [
    ["cpu: record throughput / live", r.cpuRecordOverLive.toFixed(3), "target >= 0.95"],
    ["cpu: replay throughput / record", r.cpuReplayOverRecord.toFixed(3), "target >= 1.0"],
    ["kv: record requests/s / live (redis-benchmark)", r.kvRecordOverLive.toFixed(3), "target >= 0.95"],
    ["kv: replay speed / record (wall time of the load)", r.kvReplaySpeedup.toFixed(1), "target >= 1.0"],
    ["counter (100 Hz, idle): log bytes/s", r.counterLogBytesPerSecond.toFixed(0), ""],
    ["kv under redis-benchmark: log bytes/s", r.kvLogBytesPerSecond.toFixed(0), ""],
    ["kv requests/s live / record (absolute, for scale)", `${r.kvRequestsPerSecondLive.toFixed(0)} / ${r.kvRequestsPerSecondRecord.toFixed(0)}`, ""],
  ];
  for (const [what, value, target] of rows) console.log(`${what!.padEnd(52)} ${value!.padStart(14)}  ${target}`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  printVmBench(await runVmBench());
}
