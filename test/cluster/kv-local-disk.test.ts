// `lockstep up --disk local --arbiter etcd://` (§4.1) with real processes: each host keeps its
// own copy of the kv guest's disk, and go-live is settled in etcd, not on the storage server
// (§4.1: "some other external tiebreaker"). The primary's host is killed: the backup wins
// generation 2 in etcd and goes live on its own copy; a clone on
// the third host gets the disk by a resync of the blocks that differ; after a power-off the two
// live copies are equal block by block, and kv started on the clone's copy alone serves every
// acknowledged write.

import fs from "node:fs";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { BLOCK_BYTES } from "../../host/vm/limits.js";
import { LockstepProcess, tempDir } from "../helpers/cli.js";
import { UpCluster } from "../helpers/cluster.js";
import { EtcdProcess, etcdDataDir, killAllEtcd } from "../helpers/etcd.js";
import { redis } from "../helpers/redis-cli.js";

let cluster: UpCluster | null = null;
let etcd: EtcdProcess;

beforeAll(async () => {
  etcd = await EtcdProcess.start(path.join(etcdDataDir("local-disk"), "data"));
});

afterAll(async () => {
  await killAllEtcd();
});

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

function differingBlocks(a: string, b: string): number[] {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  expect(y.length).toBe(x.length);
  const differ: number[] = [];
  for (let i = 0; i * BLOCK_BYTES < x.length; i++) {
    if (!x.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES).equals(y.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES))) differ.push(i);
  }
  return differ;
}

describe("kv under FT with a disk copy per host", () => {
  it("failover settled in etcd, a clone resynced from the live copy, and copies equal block by block", async () => {
    const disks = tempDir("kv-local-disks");
    cluster = new UpCluster(["--guest", "kv", "--hosts", "3", "--no-switch", "--disk", "local", "--arbiter", etcd.url], { LOCKSTEP_LOCAL_DISK_DIR: disks });
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    const incrs = 100;
    const replies = await redis(vm.ports["6379"]!, [...Array.from({ length: incrs }, () => "INCR hits"), "SET greeting hello"]);
    expect(replies.at(-1)).toBe("OK");

    const from = cluster.seen;
    process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
    const live = await cluster.event((l) => l.event === "wentLive" && l.host === vm.backup, "the backup going live", from);
    expect(live.generation).toBe(2);
    const listening = await cluster.event((l) => l.event === "listening" && l.host === vm.backup, "the new primary listening", from);
    const address = String(listening.address);
    expect(await redis(address, ["GET hits", "GET greeting", "INCR hits"])).toEqual([String(incrs), "hello", String(incrs + 1)]);

    const third = ready.hosts.find((h) => h.id !== vm.primary && h.id !== vm.backup)!.id;
    const synced = await cluster.event((l) => l.event === "diskSynced" && l.host === third, "the clone's disk copy synced", from);
    expect(Number(synced.blocksReceived)).toBeGreaterThan(0);
    await cluster.event((l) => l.event === "redundancyRestored" && l.msg.includes(third), "a new backup on the third host", from);
    expect(await redis(address, ["SET after clone"])).toEqual(["OK"]);

    const stopping = cluster.seen;
    expect((await cluster.control("kv", { action: "power-off" })).status).toBe(202);
    await cluster.event((l) => l.event === "stopped" && l.host === vm.backup, "the primary powered off", stopping);
    await cluster.event((l) => l.event === "stopped" && l.host === third, "the clone powered off", stopping);
    const liveCopy = path.join(disks, vm.backup, "kv.img");
    const clone = path.join(disks, third, "kv.img");
    expect(differingBlocks(liveCopy, clone)).toEqual([]);

    // The copy alone is the data: kv booted from it serves every acknowledged write.
    const kv = new LockstepProcess(["run", "kv", "--disk", clone, "--listen", "127.0.0.1:0"]);
    const { port } = await kv.listening();
    try {
      expect(await redis(`127.0.0.1:${port}`, ["GET hits", "GET greeting", "GET after"])).toEqual([String(incrs + 1), "hello", "clone"]);
    } finally {
      kv.child.kill("SIGINT");
      expect((await kv.exited).code).toBe(0);
    }
  });
});
