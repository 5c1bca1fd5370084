// More than one backup per VM (`lockstep up --backups 2`), as a user runs it: kv behind the
// switch on four hosts, concurrent clients doing random reads and writes, then kill -9 of one
// backup's host (the primary settles the next generation keeping the other backup, outputs
// keep flowing, and the cluster service clones a second backup again), then kill -9 of the
// primary's host (one backup goes live, the other loses the race and halts, and two clones of
// the new primary follow). The whole run's history must check: linearizable, no acknowledged
// write lost, no client connection dropped; and the real redis-cli reads what was written.

import { afterEach, describe, expect, it } from "vitest";
import { type ClusterStatus, type LogLine, UpCluster } from "../helpers/cluster.js";
import { check, finalReads, runWorkload } from "../helpers/kv-workload.js";
import { redis } from "../helpers/redis-cli.js";

/** Operations between the steps: enough that every fault lands mid-workload. */
const OPS_PER_STEP = 300;
const OPS_MAX = 100_000;
const RUN_TIMEOUT_MS = 300_000;

let cluster: UpCluster | null = null;

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

/** The kv VM's backups' hosts, as the status API lists them. */
function backupHosts(status: ClusterStatus): string[] {
  return status.vms[0]!.backups.map((b) => b.host);
}

describe("lockstep up --backups 2", () => {
  it("kill -9 of a backup's host, then of the primary's: outputs keep flowing, the VM ends with two backups again, the history checks", async () => {
    cluster = new UpCluster(["--guest", "kv", "--hosts", "4", "--backups", "2"]);
    const up = cluster;
    const ready = await up.ready;
    const kv = ready.services!.kv!;
    const placed = ready.vms[0]!;
    expect(placed.backup).toBe(placed.backups[0]);
    expect(new Set([placed.primary, ...placed.backups]).size).toBe(3);

    const start = await up.status();
    expect(start.vms[0]).toMatchObject({ state: "protected", generation: 1, backupsWanted: 2 });
    expect(backupHosts(start).sort()).toEqual([...placed.backups].sort());
    // The dashboard's field is the first backup.
    expect(start.vms[0]!.backup!.host).toBe(start.vms[0]!.backups[0]!.host);

    const workload = runWorkload(kv, 21, OPS_MAX);
    await workload.reached(OPS_PER_STEP);

    // 1. A backup's host dies. The primary drops it by winning generation 2, keeping the other
    //    backup; outputs wait only for that contest, then flow on with one backup.
    const [kept, doomed] = placed.backups as [string, string];
    let from = up.seen;
    process.kill(ready.hosts.find((h) => h.id === doomed)!.pid, "SIGKILL");
    const renewed = await up.event((l) => l.event === "renewed" && l.host === placed.primary && l.vm === "kv", "the primary renewing without the dead backup", from);
    expect(renewed).toMatchObject({ generation: 2, backups: 1 });
    await up.event((l) => l.event === "backupRenewed" && l.host === kept && l.vm === "kv", "the kept backup taking generation 2", from);
    await workload.reached(workload.history.operations.length + OPS_PER_STEP);
    // The cluster service clones the primary to restore a second backup.
    const clone = await up.event((l) => l.event === "cloneStarted" && l.vm === "kv" && l.host === placed.primary, "a clone restoring the second backup", from);
    const afterBackupLoss = await up.status();
    expect(afterBackupLoss.vms[0]).toMatchObject({ state: "protected", generation: 2 });
    const backupsNow = backupHosts(afterBackupLoss);
    expect(backupsNow).toHaveLength(2);
    expect(backupsNow).toContain(kept);
    expect(backupsNow).not.toContain(placed.primary);
    expect(new Set(backupsNow).size).toBe(2);
    console.log(`backup ${doomed} killed: renewed as generation 2 with ${kept}; clone ${String(clone.target)} after ${Date.parse(String(clone.ts)) - Date.parse(String(renewed.ts))} ms`);

    // 2. The primary's host dies. Both backups race for generation 3: one goes live, the other
    //    loses and halts; the cluster service clones the new primary twice.
    await workload.reached(workload.history.operations.length + OPS_PER_STEP);
    from = up.seen;
    process.kill(ready.hosts.find((h) => h.id === placed.primary)!.pid, "SIGKILL");
    const live = await up.event((l) => l.event === "wentLive" && l.vm === "kv" && backupsNow.includes(l.host), "a backup going live", from);
    expect(live.generation).toBe(3);
    const loser = backupsNow.find((host) => host !== live.host)!;
    const halted = await up.event((l) => l.event === "halted" && l.vm === "kv" && l.host === loser, "the other backup halting", from);
    expect(halted.reason).toBe("lostTestAndSet");
    const clonedTwice = await up.until(() => {
      const clones = up.since(from).filter((l: LogLine) => l.event === "cloneStarted" && l.vm === "kv" && l.host === live.host);
      return clones.length >= 2 ? clones : undefined;
    }, "two clones of the new primary");
    await workload.reached(workload.history.operations.length + OPS_PER_STEP);

    // 3. Migrating one of the two backups to the host that holds no copy: the primary drops
    //    that one at once (not after the channel's grace), renews the other, and clones onto
    //    the target.
    const before = await up.status();
    const staying = backupHosts(before);
    const target = before.hosts.find((h) => h.state === "up" && h.id !== live.host && !staying.includes(h.id))!.id;
    from = up.seen;
    const migrated = await fetch(`${ready.url}/api/vms/kv/migrate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ role: "backup", to: target }) });
    const answer = (await migrated.json()) as { moved: boolean; from: string; ms: number };
    expect(migrated.status, JSON.stringify(answer)).toBe(200);
    expect(answer.moved).toBe(true);
    const moved = answer.from;
    expect(staying).toContain(moved);
    const removed = await up.event((l) => l.event === "backupRemoved" && l.host === live.host && l.vm === "kv", "the primary dropping the moved backup", from);
    expect(removed.count).toBe(1);
    expect(await up.event((l) => l.event === "renewed" && l.host === live.host && l.vm === "kv", "the primary renewing its other backup", from)).toMatchObject({ generation: 4, backups: 1 });
    console.log(`moved one of two backups from ${moved} to ${target} in ${answer.ms} ms`);
    await workload.reached(workload.history.operations.length + OPS_PER_STEP);

    workload.stop();
    await workload.done;
    await finalReads(kv, workload.history);
    const result = check(workload.history);
    console.log(
      `${workload.history.operations.length} operations; ${live.host} live at generation 3, ${loser} halted, ` +
        `clones to ${clonedTwice.map((l) => String(l.target)).join(", ")}`,
    );
    expect(result.linearizable, result.report).toBe(true);
    expect(result.counters, result.report).toBe(true);
    expect(workload.history.operations.filter((o) => o.outcome?.type === "unknown"), "connections the switch dropped").toEqual([]);

    // The real client sees the VM's state through the switch, after everything.
    expect(await redis(kv, ["SET after-failovers yes", "GET after-failovers"])).toEqual(["OK", "yes"]);

    const final = await up.status();
    expect(final.vms[0]).toMatchObject({ state: "protected", generation: 4, backupsWanted: 2 });
    expect(final.vms[0]!.primary!.host).toBe(live.host);
    const finalBackups = backupHosts(final);
    expect(finalBackups.sort()).toEqual([target, staying.find((h) => h !== moved)!].sort());
    expect(final.vms[0]!.backups.every((b) => b.state === "replaying" && b.generation === 4)).toBe(true);
  }, RUN_TIMEOUT_MS);
});
