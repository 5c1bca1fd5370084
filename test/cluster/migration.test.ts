// Migration (issue 5, §3.3), as a user runs it: `lockstep migrate` against `lockstep up`, while
// concurrent kv clients do random reads and writes through the switch. The backup moves to a
// chosen host; then the primary moves, handing over to its clone there; the cluster service
// then gives the VM a backup again. The whole history must check, with no connection dropped.

import { afterEach, describe, expect, it } from "vitest";
import { lockstep } from "../helpers/cli.js";
import { UpCluster } from "../helpers/cluster.js";
import { check, finalReads, runWorkload } from "../helpers/kv-workload.js";

let cluster: UpCluster | null = null;

afterEach(async () => {
  await cluster?.stop();
  cluster = null;
});

describe("lockstep migrate", () => {
  it("moves the backup, then the primary, under kv load: the VM ends protected, the history checks", async () => {
    cluster = new UpCluster(["--guest", "kv", "--hosts", "3"]);
    const up = cluster;
    const ready = await up.ready;
    const kv = ready.services!.kv!;
    const { primary, backup } = ready.vms[0]!;
    const third = ready.hosts.find((h) => h.id !== primary && h.id !== backup)!.id;
    const workload = runWorkload(kv, 21, 200_000);
    await workload.reached(300);

    // Primary and backup never share a host: refused, and nothing moves.
    const refused = await lockstep(["migrate", "kv", "--role", "backup", "--to", primary, "--cluster", ready.url]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/never share a host \(CONFLICT\)/);

    // The backup moves to the third host; the primary stays, at the next generation.
    const movedBackup = await lockstep(["migrate", "kv", "--role", "backup", "--to", third, "--cluster", ready.url]);
    expect(movedBackup.code, movedBackup.stderr).toBe(0);
    expect(JSON.parse(movedBackup.stdout)).toMatchObject({ vm: "kv", role: "backup", from: backup, to: third, moved: true });
    let view = (await up.status()).vms[0]!;
    expect(view.primary!.host).toBe(primary);
    expect(view.backup!.host).toBe(third);
    expect(view.state).toBe("protected");
    await workload.reached(workload.history.operations.length + 300);

    // The primary moves to the old backup's host: its backup moves there first, then it hands over.
    const from = up.seen;
    const movedPrimary = await lockstep(["migrate", "kv", "--role", "primary", "--to", backup, "--cluster", ready.url]);
    expect(movedPrimary.code, movedPrimary.stderr).toBe(0);
    expect(JSON.parse(movedPrimary.stdout)).toMatchObject({ vm: "kv", role: "primary", from: primary, to: backup, moved: true });
    const live = await up.event((l) => l.event === "wentLive" && l.host === backup, "the clone taking over", from);
    await up.event((l) => l.event === "redundancyRestored" && l.generation === live.generation, "redundancy restored after the move", from);
    view = (await up.status()).vms[0]!;
    expect(view.primary!.host).toBe(backup);
    expect(view.backup!.host).not.toBe(backup);
    expect(view.state).toBe("protected");
    await workload.reached(workload.history.operations.length + 300);

    workload.stop();
    await workload.done;
    await finalReads(kv, workload.history);
    const result = check(workload.history);
    expect(result.linearizable, result.report).toBe(true);
    expect(result.counters, result.report).toBe(true);
    expect(workload.history.operations.filter((o) => o.outcome?.type === "unknown"), "connections the switch dropped").toEqual([]);
    const events = up.since(0).map((l) => l.event);
    expect(events.filter((e) => e === "migrationFinished")).toHaveLength(2);
    // Only the refused one failed.
    expect(events.filter((e) => e === "migrationFailed")).toHaveLength(1);
  });
});
