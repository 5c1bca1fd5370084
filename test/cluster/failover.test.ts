// The embedded cluster as a user runs it, `lockstep up`, with real processes killed and stopped
// with real signals. The client here is the counter guest's console: each line is an output
// released under the Output Rule, and the ticks must run on across a failover with no gap (a
// tick nobody saw) and no repeat.

import { afterEach, describe, expect, it } from "vitest";
import { type LogLine, tickGaps, UpCluster } from "../helpers/cluster.js";

let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  // Ctrl-C ends the cluster cleanly, whatever the test did to its hosts.
  expect(result?.code ?? 0).toBe(0);
});

const isEvent = (event: string, host?: string) => (line: LogLine) => line.event === event && (host === undefined || line.host === host);

describe("lockstep up", () => {
  it("kill -9 of the primary's host: the backup goes live, the ticks run on with no gap and no repeat, and a clone on the third host restores redundancy", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3"]);
    const ready = await cluster.ready;
    expect(ready.hosts).toHaveLength(3);
    const vm = ready.vms[0]!;
    expect(vm.primary).not.toBe(vm.backup);
    const primaryPid = ready.hosts.find((h) => h.id === vm.primary)!.pid;

    const before = await cluster.status();
    expect(before.vms[0]!.state).toBe("protected");
    expect(before.vms[0]!.primary!.host).toBe(vm.primary);
    expect(before.vms[0]!.backup!.host).toBe(vm.backup);
    expect(before.vms[0]!.primary!.pid).toBe(primaryPid);

    await cluster.until(() => (cluster!.ticks().length >= 30 ? true : undefined), "30 ticks");
    process.kill(primaryPid, "SIGKILL");
    const live = await cluster.event(isEvent("wentLive", vm.backup), "the backup going live");
    expect(live.generation).toBe(2);
    const seenAtGoLive = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seenAtGoLive + 30 ? true : undefined), "30 ticks after go-live");

    const ticks = cluster.ticks();
    expect(tickGaps(ticks)).toEqual([]);
    expect(new Set(ticks.map((t) => t.host))).toEqual(new Set([vm.primary, vm.backup]));
    // Every tick after the first one of the new primary comes from it.
    const firstNew = ticks.findIndex((t) => t.host === vm.backup);
    expect(ticks.slice(firstNew).every((t) => t.host === vm.backup)).toBe(true);

    // The cluster service clones the new primary to a host that runs no copy: the third one,
    // or the killed one if it is back already (it restarts empty, and ties go to the lower id).
    const restored = await cluster.event(isEvent("redundancyRestored"), "redundancy restored");
    expect(restored.vm).toBe("counter");
    const after = await cluster.status();
    const view = after.vms[0]!;
    expect(view.generation).toBe(2);
    expect(view.state).toBe("protected");
    expect(view.primary!.host).toBe(vm.backup);
    expect(view.primary!.state).toBe("paired");
    expect(view.backup!.host).not.toBe(vm.backup);
    // The killed host comes back empty, as a rebooted machine would.
    await cluster.event(isEvent("hostRestarted", vm.primary), "the killed host restarted");
    const restarted = (await cluster.status()).hosts.find((h) => h.id === vm.primary)!;
    expect(restarted.pid).not.toBe(primaryPid);
    expect(restarted.state).toBe("up");
    const events = after.events.map((e) => `${e.host}:${e.event}`);
    expect(events).toContain(`${vm.primary}:hostExited`);
    expect(events).toContain(`${vm.backup}:failureDetected`);
    expect(events).toContain(`${vm.backup}:wentLive`);
    expect(events).toContain(`${vm.backup}:cloneStarted`);
    expect(events).toContain(`${view.backup!.host}:started`);

    // The ticks go on through the new pair, still with no gap.
    const seenPaired = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seenPaired + 10 ? true : undefined), "10 ticks from the new pair");
    expect(tickGaps(cluster.ticks())).toEqual([]);
  });

  it("kill -9 of the backup's host: the primary runs on alone, its ticks unbroken, until a clone on another host is its backup", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3"]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    await cluster.until(() => (cluster!.ticks().length >= 20 ? true : undefined), "20 ticks");
    process.kill(ready.hosts.find((h) => h.id === vm.backup)!.pid, "SIGKILL");
    const alone = await cluster.event(isEvent("wentAlone", vm.primary), "the primary going alone");
    expect(alone.newGeneration).toBe(2);
    const seen = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seen + 20 ? true : undefined), "20 more ticks");
    const ticks = cluster.ticks();
    expect(tickGaps(ticks)).toEqual([]);
    expect(ticks.every((t) => t.host === vm.primary)).toBe(true);

    await cluster.event(isEvent("redundancyRestored"), "redundancy restored");
    const view = (await cluster.status()).vms[0]!;
    expect(view.primary).toMatchObject({ host: vm.primary, state: "paired", generation: 2 });
    expect(view.backup).toMatchObject({ role: "backup", state: "replaying", generation: 2 });
    expect(view.backup!.host).not.toBe(vm.primary);
    expect(view.state).toBe("protected");
  });

  it("SIGSTOP of the primary's host past the timeout, then SIGCONT: one primary; the stale one halts and says nothing more", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3"]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    const primaryPid = ready.hosts.find((h) => h.id === vm.primary)!.pid;
    await cluster.until(() => (cluster!.ticks().length >= 20 ? true : undefined), "20 ticks");

    process.kill(primaryPid, "SIGSTOP");
    await cluster.event(isEvent("wentLive", vm.backup), "the backup going live");
    // The stopped host's pipe was drained long before the backup's timeout ran out.
    const staleLines = cluster.ticks().filter((t) => t.host === vm.primary).length;
    const from = cluster.seen;
    process.kill(primaryPid, "SIGCONT");
    const halted = await cluster.event(isEvent("halted", vm.primary), "the stale primary halting", from);
    expect(["lostTestAndSet", "superseded"]).toContain(halted.reason);
    const seen = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seen + 20 ? true : undefined), "20 more ticks");

    const ticks = cluster.ticks();
    expect(ticks.filter((t) => t.host === vm.primary)).toHaveLength(staleLines);
    expect(tickGaps(ticks)).toEqual([]);
    const status = await cluster.status();
    const primaries = status.hosts.flatMap((h) => h.vms.filter((v) => v.role === "primary" ? v.state !== "halted" : v.state === "live"));
    expect(primaries).toHaveLength(1);
    expect(status.vms[0]!.primary!.host).toBe(vm.backup);
  });

  it("the storage server restarts while both sides run: no failover, and the ticks run on", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3"]);
    const ready = await cluster.ready;
    await cluster.until(() => (cluster!.ticks().length >= 20 ? true : undefined), "20 ticks");
    process.kill(ready.storage.pid, "SIGKILL");
    await cluster.event(isEvent("storageRestarted"), "storage restarted");
    // Both hosts' clients come back to the new server.
    const from = cluster.seen;
    await cluster.until(() => {
      const up = new Set(cluster!.since(from).filter((l) => l.event === "storageUp").map((l) => l.host));
      return up.has(ready.vms[0]!.primary) && up.has(ready.vms[0]!.backup) ? true : undefined;
    }, "both hosts reconnected to storage");
    const seen = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seen + 20 ? true : undefined), "20 more ticks");
    expect(tickGaps(cluster.ticks())).toEqual([]);
    const status = await cluster.status();
    expect(status.vms[0]).toMatchObject({ generation: 1, state: "protected" });
    expect(status.events.map((e) => e.event)).not.toContain("wentLive");
    expect(status.events.map((e) => e.event)).not.toContain("wentAlone");
  });
});
