// `lockstep up --disk-reads backup` (§4.2) with real processes: the kv guest's backups read the
// shared disk themselves. Every acknowledged write survives a kill -9 of the primary's host;
// the new primary's clone on the third host (§3.1) replays kv's reads from the shared disk too
// and takes over in its turn, still with every acknowledged write.

import { afterEach, describe, expect, it } from "vitest";
import { UpCluster } from "../helpers/cluster.js";
import { redis } from "../helpers/redis-cli.js";

let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

describe("kv under FT with disk reads on the backup", () => {
  it("acknowledged writes survive two successive failovers", async () => {
    cluster = new UpCluster(["--guest", "kv", "--hosts", "3", "--no-switch", "--disk-reads", "backup"]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    const incrs = 100;
    const replies = await redis(vm.ports["6379"]!, [...Array.from({ length: incrs }, () => "INCR hits"), "SET greeting hello"]);
    expect(replies.at(-1)).toBe("OK");

    let from = cluster.seen;
    process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
    await cluster.event((l) => l.event === "wentLive" && l.host === vm.backup, "the backup going live", from);
    let listening = await cluster.event((l) => l.event === "listening" && l.host === vm.backup, "the new primary listening", from);
    expect(await redis(String(listening.address), ["GET hits", "GET greeting", "INCR hits"])).toEqual([String(incrs), "hello", String(incrs + 1)]);

    // The clone on the third host (kv's state comes in the snapshot), which then takes over too.
    const third = ready.hosts.find((h) => h.id !== vm.primary && h.id !== vm.backup)!.id;
    await cluster.event((l) => l.event === "redundancyRestored" && l.msg.includes(third), "a new backup on the third host", from);
    expect(await redis(String(listening.address), ["SET after clone"])).toEqual(["OK"]);
    from = cluster.seen;
    process.kill(ready.hosts.find((h) => h.id === vm.backup)!.pid, "SIGKILL");
    await cluster.event((l) => l.event === "wentLive" && l.host === third, "the clone going live", from);
    listening = await cluster.event((l) => l.event === "listening" && l.host === third, "the third primary listening", from);
    expect(await redis(String(listening.address), ["GET hits", "GET greeting", "GET after"])).toEqual([String(incrs + 1), "hello", "clone"]);
  });
});
