// Logging bandwidth with disk read data in the log vs read on the backup (§4.2, §5.1: the
// paper's 12 → 3 Mbit/s and 18 → 8 Mbit/s), on the kv guest.
//
// The read-heavy load. kv reads its disk only when it recovers (it serves GETs from memory),
// so the load is recovery: kv boots on a shared disk holding DATA_MIB of values and reads its
// whole log back, under FT, then answers a GET of the last key. Each mode runs ROUNDS times on
// the same disk (a power-off between rounds). Measured: the channel bytes the primary sent
// from its start until that GET's answer (`logBytesSent`), the time taken, and so Mbit/s.
// A mixed load follows: the client then overwrites MIXED_SETS values of 4 KB (client input,
// which travels in the log in both modes), measured from the start again.
// Primary and backup run in this process over a real WebSocket, on a real storage server.

import { ControlKind } from "../protocol/records.js";
import { RespClient } from "../host/checker/resp-client.js";
import type { DiskReads } from "../host/devices/disk-reads.js";
import { RemoteDisk } from "../host/devices/remote-disk.js";
import { storageArbiter } from "../host/ft/arbiter.js";
import { BackupDriver } from "../host/ft/backup-driver.js";
import { PrimaryDriver } from "../host/ft/primary-driver.js";
import { StorageClient } from "../host/storage/client.js";
import { startStorageServer } from "../host/storage/server.js";
import { loadGuest } from "../host/vm/guest.js";
import { openDisk } from "../host/vm/machine.js";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const DISK_BLOCKS = 8192;
const VALUE_BYTES = 4000;
const DATA_MIB = 3;
const ROUNDS = 3;
const MIXED_SETS = 250;

export interface DiskReadsRun {
  diskReads: DiskReads;
  logBytes: number;
  recoveryMs: number;
  mbitPerSecond: number;
  /** Recovery, then MIXED_SETS writes of 4 KB. */
  mixedLogBytes: number;
  mixedMs: number;
  mixedMbitPerSecond: number;
}

export interface DiskReadsBench {
  dataBytes: number;
  runs: DiskReadsRun[];
}

interface Pair {
  primary: PrimaryDriver;
  backup: BackupDriver;
  address: Promise<string>;
}

let generation = 0;

async function startPair(a: StorageClient, b: StorageClient, diskReads: DiskReads): Promise<Pair> {
  generation++;
  const module = loadGuest("kv").module;
  const devices = async (client: StorageClient, listening: (address: string) => void) => ({
    diskBlocks: DISK_BLOCKS,
    diskReads,
    disk: await openDisk((deliver) => RemoteDisk.open(client, "kv", DISK_BLOCKS, deliver)),
    listen: () => ({ host: "127.0.0.1", port: 0 }),
    onListening: (_port: number, address: { host: string; port: number }) => listening(`${address.host}:${address.port}`),
  });
  const backup = new BackupDriver({ vmId: "kv", hostId: "host-b", module, generation, arbiter: storageArbiter(b), devices: await devices(b, () => {}) });
  const port = await backup.listening;
  let listening!: (address: string) => void;
  const address = new Promise<string>((resolve) => (listening = resolve));
  const primary = new PrimaryDriver({
    vmId: "kv",
    hostId: "host-a",
    module,
    generation,
    backupUrl: `ws://127.0.0.1:${port}`,
    arbiter: storageArbiter(a),
    devices: await devices(a, listening),
  });
  return { primary, backup, address };
}

async function powerOff(pair: Pair): Promise<void> {
  pair.primary.control(ControlKind.PowerOff);
  const [primary, backup] = await Promise.all([pair.primary.done, pair.backup.done]);
  if (primary.stop !== "poweroff" || backup.stop !== "poweroff" || primary.digest !== backup.digest) {
    throw new Error(`the pair did not end as one: ${primary.stop}/${backup.stop} ${primary.message ?? ""} ${backup.message ?? ""}`);
  }
}

export async function runDiskReadsBench(): Promise<DiskReadsBench> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-disk-reads-"));
  const storage = await startStorageServer({ dir, port: 0 });
  const a = await StorageClient.connect(storage.url, { clientId: "host-a" });
  const b = await StorageClient.connect(storage.url, { clientId: "host-b" });
  const keys = Math.floor((DATA_MIB * 1024 * 1024) / VALUE_BYTES);
  const value = "v".repeat(VALUE_BYTES);
  const runs: DiskReadsRun[] = [];
  try {
    const fill = await startPair(a, b, "logged");
    const client = new RespClient(await fill.address);
    await client.connected;
    for (let from = 0; from < keys; from += 100) {
      await Promise.all(Array.from({ length: Math.min(100, keys - from) }, (_, i) => client.command("SET", `key${from + i}`, value)));
    }
    client.close();
    await powerOff(fill);
    for (let round = 0; round < ROUNDS; round++) {
      for (const diskReads of ["logged", "backup"] as const) {
        const startedMs = performance.now();
        const pair = await startPair(a, b, diskReads);
        const reader = new RespClient(await pair.address);
        await reader.connected;
        if ((await reader.command("GET", `key${keys - 1}`)) !== value) throw new Error("kv did not recover its data");
        const recoveryMs = performance.now() - startedMs;
        const logBytes = pair.primary.status().logBytesSent;
        await Promise.all(Array.from({ length: MIXED_SETS }, (_, i) => reader.command("SET", `key${i}`, value)));
        const mixedMs = performance.now() - startedMs;
        const mixedLogBytes = pair.primary.status().logBytesSent;
        reader.close();
        await powerOff(pair);
        const mbit = (bytes: number, ms: number) => (bytes * 8) / 1e6 / (ms / 1000);
        runs.push({ diskReads, logBytes, recoveryMs, mbitPerSecond: mbit(logBytes, recoveryMs), mixedLogBytes, mixedMs, mixedMbitPerSecond: mbit(mixedLogBytes, mixedMs) });
      }
    }
  } finally {
    await a.close();
    await b.close();
    await storage.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return { dataBytes: keys * VALUE_BYTES, runs };
}

export function printDiskReadsBench(bench: DiskReadsBench): void {
  const median = (values: number[]) => [...values].sort((x, y) => x - y)[Math.floor(values.length / 2)]!;
  for (const diskReads of ["logged", "backup"] as const) {
    const runs = bench.runs.filter((r) => r.diskReads === diskReads);
    console.log(
      `  diskReads ${diskReads.padEnd(6)}: kv recovering ${(bench.dataBytes / 1e6).toFixed(1)} MB: log ${median(runs.map((r) => r.logBytes))} bytes ` +
        `in ${median(runs.map((r) => r.recoveryMs)).toFixed(0)} ms, ${median(runs.map((r) => r.mbitPerSecond)).toFixed(2)} Mbit/s (medians of ${runs.length}; ` +
        `runs: ${runs.map((r) => `${r.mbitPerSecond.toFixed(2)}`).join(", ")})`,
    );
    console.log(
      `  diskReads ${diskReads.padEnd(6)}: recovery + ${MIXED_SETS} SETs of 4 KB: log ${median(runs.map((r) => r.mixedLogBytes))} bytes ` +
        `in ${median(runs.map((r) => r.mixedMs)).toFixed(0)} ms, ${median(runs.map((r) => r.mixedMbitPerSecond)).toFixed(2)} Mbit/s`,
    );
  }
}

if (process.argv[1] !== undefined && /disk-reads\.(ts|js)$/.test(process.argv[1])) {
  printDiskReadsBench(await runDiskReadsBench());
  process.exit(0);
}
