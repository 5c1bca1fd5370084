// Control entries end to end on the embedded cluster (§3.3): the operator's power-off, pause,
// resume and memory limit travel in the primary's log, so the backup does the same at the same
// instruction, and a powered-off VM stays off rather than failing over.

import { afterEach, describe, expect, it } from "vitest";
import { type LogLine, tickGaps, UpCluster } from "../helpers/cluster.js";

let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

const stoppedOn = (host: string) => (line: LogLine) => line.event === "stopped" && line.host === host;

describe("control entries", () => {
  it("power-off stops the primary and its backup at the same instruction, and nothing goes live", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3"]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    await cluster.until(() => (cluster!.ticks().length >= 10 ? true : undefined), "10 ticks");

    const answer = await cluster.control(vm.vm, { action: "power-off" });
    expect(answer.status).toBe(202);
    const primary = await cluster.event(stoppedOn(vm.primary), "the primary stopping");
    const backup = await cluster.event(stoppedOn(vm.backup), "the backup stopping");
    expect(primary.stop).toBe("poweroff");
    expect(backup.stop).toBe("poweroff");
    expect(backup.icount).toBe(primary.icount);

    const status = await cluster.status();
    expect(status.vms[0]).toMatchObject({ state: "down", primary: null, backup: null });
    expect(status.events.map((e) => e.event)).not.toContain("wentLive");
    expect(tickGaps(cluster.ticks())).toEqual([]);
  });

  it("pause holds the guest at one instruction count, resume lets it run on; the backup follows both", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3"]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    await cluster.until(() => (cluster!.ticks().length >= 10 ? true : undefined), "10 ticks");

    expect((await cluster.control(vm.vm, { action: "pause" })).status).toBe(202);
    await cluster.event((l) => l.event === "paused" && l.host === vm.primary, "the guest pausing");
    const first = (await cluster.status()).vms[0]!;
    // The backup replays up to the pause and waits there, at the primary's instruction count;
    // all the while, the primary does not move.
    let second = first;
    while (second.backup!.icount !== first.primary!.icount) second = (await cluster.status()).vms[0]!;
    expect(second.primary!.icount).toBe(first.primary!.icount);
    expect(second.primary!.paused).toBe(true);

    const ticksAtResume = cluster.ticks().length;
    expect((await cluster.control(vm.vm, { action: "resume" })).status).toBe(202);
    await cluster.event((l) => l.event === "resumed" && l.host === vm.primary, "the guest resuming");
    await cluster.until(() => (cluster!.ticks().length >= ticksAtResume + 10 ? true : undefined), "10 ticks after resume");
    const ticks = cluster.ticks();
    expect(tickGaps(ticks)).toEqual([]);
    // The timer kept time while the guest was held: the first tick after the pause says so.
    expect(ticks.slice(ticksAtResume).some((t) => t.missed > 0)).toBe(true);

    // memory-max is a control entry too: the backup replays it without diverging.
    expect((await cluster.control(vm.vm, { action: "memory-max", value: 64 })).status).toBe(202);
    const seen = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seen + 10 ? true : undefined), "10 more ticks");
    const status = await cluster.status();
    expect(status.vms[0]!.state).toBe("protected");
    expect(status.events.map((e) => e.event)).not.toContain("halted");

    const bad = await cluster.control(vm.vm, { action: "explode" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("BAD_REQUEST");
  });
});
