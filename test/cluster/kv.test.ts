// The kv guest under FT on the embedded cluster without a switch, driven by the real redis-cli:
// what a client was told is there after the primary's host is killed, on the shared disk and in
// the guest's memory, at the new primary's own address. (Through the switch: switch.test.ts.)

import { afterEach, describe, expect, it } from "vitest";
import { UpCluster } from "../helpers/cluster.js";
import { redis } from "../helpers/redis-cli.js";

let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

describe("kv under FT", () => {
  it("every acknowledged INCR and SET survives a kill -9 of the primary's host", async () => {
    cluster = new UpCluster(["--guest", "kv", "--hosts", "3", "--no-switch"]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    const address = vm.ports["6379"]!;
    expect(address).toMatch(/^127\.0\.0\.1:\d+$/);

    const incrs = 200;
    const replies = await redis(address, [...Array.from({ length: incrs }, () => "INCR hits"), "SET greeting hello"]);
    expect(replies.slice(0, incrs)).toEqual(Array.from({ length: incrs }, (_, i) => String(i + 1)));
    expect(replies[incrs]).toBe("OK");

    const from = cluster.seen;
    process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
    await cluster.event((l) => l.event === "wentLive" && l.host === vm.backup, "the backup going live", from);
    const listening = await cluster.event((l) => l.event === "listening" && l.host === vm.backup, "the new primary listening", from);
    const newAddress = String(listening.address);

    expect(await redis(newAddress, ["GET hits", "GET greeting", "INCR hits"])).toEqual([String(incrs), "hello", String(incrs + 1)]);
    const view = (await cluster.status()).vms[0]!;
    expect(view.primary).toMatchObject({ host: vm.backup, generation: 2 });
    expect(view.primary!.ports["6379"]).toBe(newAddress);
  });
});
