// FT benchmarks, a primary and a backup in one process over a real WebSocket channel with the
// storage server as arbiter: FT vs non-FT throughput, what the Output Rule adds to an output,
// logging bandwidth, and the time from a primary's death to the backup live.

import os from "node:os";
import fs from "node:fs";
import path from "node:path";
import { encodedRecordBytes } from "../protocol/codec.js";
import { storageArbiter } from "../host/ft/arbiter.js";
import { BackupDriver } from "../host/ft/backup-driver.js";
import { PrimaryDriver } from "../host/ft/primary-driver.js";
import { StorageClient } from "../host/storage/client.js";
import { startStorageServer, type StorageServer } from "../host/storage/server.js";
import { loadGuest } from "../host/vm/guest.js";
import { Machine } from "../host/vm/machine.js";
import { percentile } from "./kv-load.js";

export interface FtBenchResult {
  cpuFtOverNonFt: number;
  outputRuleMsP50: number;
  outputRuleMsP99: number;
  counterLogBitsPerSecond: number;
  failoverMsP50: number;
  failoverRuns: number;
}


interface Pair {
  primary: PrimaryDriver;
  backup: BackupDriver;
  close(): Promise<void>;
}

let run = 0;
async function pair(
  storage: StorageServer,
  guest: string,
  hooks: { onRelease?: (seq: number, heldMs: number) => void; onLive?: () => void },
): Promise<Pair> {
  const vmId = `${guest}-${++run}`;
  const clientA = await StorageClient.connect(storage.url, { clientId: `a-${run}` });
  const clientB = await StorageClient.connect(storage.url, { clientId: `b-${run}` });
  const module = loadGuest(guest).module;
  const backup = new BackupDriver({ vmId, hostId: "b", module, arbiter: storageArbiter(clientB), onLive: hooks.onLive });
  const port = await backup.listening;
  const primary = new PrimaryDriver({
    vmId,
    hostId: "a",
    module,
    backupUrl: `ws://127.0.0.1:${port}`,
    arbiter: storageArbiter(clientA),
    onRelease: hooks.onRelease,
  });
  return {
    primary,
    backup,
    async close() {
      await clientA.close();
      await clientB.close();
    },
  };
}

async function cpuRatio(storage: StorageServer): Promise<number> {
  const ratios: number[] = [];
  const module = loadGuest("cpu").module;
  for (let round = 0; round < 3; round++) {
    let start = performance.now();
    await new Machine({ mode: "live", module }).done;
    const plainMs = performance.now() - start;
    start = performance.now();
    const ft = await pair(storage, "cpu", {});
    await ft.primary.done;
    const ftMs = performance.now() - start;
    ft.backup.stop();
    ft.backup.machine.kill();
    await ft.close();
    ratios.push(plainMs / ftMs);
  }
  return percentile(ratios, 0.5);
}

async function counterUnderFt(storage: StorageServer): Promise<{ heldMs: number[]; bitsPerSecond: number }> {
  const heldMs: number[] = [];
  const ft = await pair(storage, "counter", { onRelease: (_seq, ms) => heldMs.push(ms) });
  let bytes = 0;
  const start = performance.now();
  const originalAppend = ft.primary.core.append.bind(ft.primary.core);
  ft.primary.core.append = (records) => {
    for (const record of records) bytes += encodedRecordBytes(record);
    originalAppend(records);
  };
  while (heldMs.length < 300) await new Promise((resolve) => setTimeout(resolve, 50));
  const seconds = (performance.now() - start) / 1000;
  ft.primary.crash();
  ft.backup.machine.kill();
  await ft.close();
  return { heldMs, bitsPerSecond: (bytes * 8) / seconds };
}

async function failover(storage: StorageServer): Promise<number[]> {
  const times: number[] = [];
  for (let round = 0; round < 5; round++) {
    let released = 0;
    let live: () => void;
    const wentLive = new Promise<void>((resolve) => (live = resolve));
    const ft = await pair(storage, "counter", { onRelease: () => released++, onLive: () => live() });
    while (released < 20) await new Promise((resolve) => setTimeout(resolve, 20));
    const start = performance.now();
    ft.primary.crash();
    await wentLive;
    times.push(performance.now() - start);
    ft.backup.stop();
    await ft.backup.done;
    await ft.close();
  }
  return times;
}

export async function runFtBench(): Promise<FtBenchResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-ft-"));
  const storage = await startStorageServer({ dir, port: 0 });
  try {
    const cpuFtOverNonFt = await cpuRatio(storage);
    const counter = await counterUnderFt(storage);
    const failovers = await failover(storage);
    return {
      cpuFtOverNonFt,
      outputRuleMsP50: percentile(counter.heldMs, 0.5),
      outputRuleMsP99: percentile(counter.heldMs, 0.99),
      counterLogBitsPerSecond: counter.bitsPerSecond,
      failoverMsP50: percentile(failovers, 0.5),
      failoverRuns: failovers.length,
    };
  } finally {
    await storage.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function printFtBench(r: FtBenchResult): void {
  const rows = [
    ["cpu: FT throughput / non-FT (median of 3)", r.cpuFtOverNonFt.toFixed(3), "target >= 0.97"],
    ["Output Rule: time an output is held, p50 ms", r.outputRuleMsP50.toFixed(2), ""],
    ["Output Rule: time an output is held, p99 ms", r.outputRuleMsP99.toFixed(2), ""],
    ["counter under FT: logging bandwidth, kbit/s", (r.counterLogBitsPerSecond / 1000).toFixed(1), ""],
    [`failover: primary killed -> backup live, p50 of ${r.failoverRuns}, ms`, r.failoverMsP50.toFixed(0), "default timeout 1000 ms"],
  ];
  for (const [what, value, target] of rows) console.log(`${what!.padEnd(60)} ${value!.padStart(10)}  ${target}`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  printFtBench(await runFtBench());
}
