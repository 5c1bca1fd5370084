// A live clone end to end (§3.1, issue 5), for guests of 1, 16 and 64 MiB computing inside
// main (never idle): a primary running alone is snapshotted mid-export, the snapshot is
// serialized as a host sends it (snapshot-wire.ts), a backup starts from it, and the logging
// channel comes up. Reported per size, median of rounds: the guest's pause (the vCPU copying
// its state), the time until the snapshot is in hand, and the total until the new pair is
// connected, which is how long the primary's outputs wait (records go on meanwhile).
//
// One process and loopback stand in for two hosts: the HTTP hop of POST /api/clones is left
// out, the v8 (de)serialization it does is in.

import { storageArbiter } from "../host/ft/arbiter.js";
import { BackupDriver } from "../host/ft/backup-driver.js";
import { PrimaryDriver } from "../host/ft/primary-driver.js";
import { StorageClient } from "../host/storage/client.js";
import { startStorageServer } from "../host/storage/server.js";
import { decodeClone, encodeClone } from "../host/vm/snapshot-wire.js";
import { median } from "./metering.js";
import { SIZES_MIB, spinGuest } from "./snapshot.js";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const ROUNDS = 3;

export interface CloneBenchResult {
  sizes: { mib: number; pauseMs: number; snapshotMs: number; bytes: number; totalMs: number }[];
}

export async function runCloneBench(): Promise<CloneBenchResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-clone-"));
  const storage = await startStorageServer({ dir, port: 0 });
  const client = await StorageClient.connect(storage.url, { clientId: "bench" });
  const sizes: CloneBenchResult["sizes"] = [];
  try {
    for (const mib of SIZES_MIB) {
      const module = await spinGuest(mib);
      const rounds = [];
      for (let round = 0; round < ROUNDS; round++) rounds.push(await cloneOnce(module, `clone-${mib}-${round}`, client));
      sizes.push({
        mib,
        pauseMs: median(rounds.map((r) => r.pauseMs)),
        snapshotMs: median(rounds.map((r) => r.snapshotMs)),
        bytes: rounds[0]!.bytes,
        totalMs: median(rounds.map((r) => r.totalMs)),
      });
    }
  } finally {
    await client.close();
    await storage.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return { sizes };
}

async function cloneOnce(module: Awaited<ReturnType<typeof spinGuest>>, vmId: string, client: StorageClient) {
  let computing: () => void;
  const ready = new Promise<void>((resolve) => (computing = resolve));
  let alone: () => void;
  const wentAlone = new Promise<void>((resolve) => (alone = resolve));
  // Nothing listens at its first backup's address: it goes alone, as after a go-live.
  const primary = new PrimaryDriver({
    vmId,
    hostId: "host-a",
    module,
    backupUrl: "ws://127.0.0.1:9/",
    arbiter: storageArbiter(client),
    timeoutMs: 200,
    devices: { onConsole: () => computing() },
    log: (line) => line.event === "wentAlone" && alone(),
  });
  await Promise.all([ready, wentAlone]);
  const startedMs = performance.now();
  const snapshot = await primary.beginClone(30_000);
  const snapshotMs = performance.now() - startedMs;
  const body = encodeClone({ spec: { vm: vmId }, snapshot });
  const received = decodeClone(body, (spec) => spec as { vm: string });
  const backup = new BackupDriver({ vmId, hostId: "host-b", module, generation: 2, restore: received.snapshot, arbiter: storageArbiter(client) });
  const connected = await primary.connectBackup(`ws://127.0.0.1:${await backup.listening}`);
  const totalMs = performance.now() - startedMs;
  if (!connected) throw new Error("the clone never connected");
  primary.crash();
  backup.stop();
  await Promise.allSettled([primary.done, backup.done]);
  return { pauseMs: snapshot.pauseMs ?? NaN, snapshotMs, bytes: body.length, totalMs };
}

export function printCloneBench(r: CloneBenchResult): void {
  console.log("memory MiB   guest pause ms   snapshot in hand ms   snapshot MB   clone connected ms");
  for (const s of r.sizes) {
    console.log(
      `${String(s.mib).padStart(10)}   ${s.pauseMs.toFixed(1).padStart(14)}   ${s.snapshotMs.toFixed(1).padStart(19)}   ${(s.bytes / 1e6).toFixed(1).padStart(11)}   ${s.totalMs.toFixed(1).padStart(18)}`,
    );
  }
}

if (import.meta.url === `file://${process.argv[1]}`) printCloneBench(await runCloneBench());
