// The go-live test-and-set on a real etcd server (host/ft/etcd-arbiter.ts): the same answers as
// the storage server's registers, one winner per generation among racing hosts, no winnable
// stale generation, "unreachable" within the bound while etcd is stopped or dead and the winner
// still there after it restarts; then `lockstep up --arbiter etcd://` with real host processes,
// where the backup of a killed primary, or of a primary cut off from the network, goes live by
// winning in etcd.

import path from "node:path";
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { TestAndSetResult } from "../../host/ft/messages.js";
import { type EtcdArbiter, etcdArbiter } from "../../host/ft/etcd-arbiter.js";
import { etcdAuthFromEnv, parseEtcdUrl } from "../../host/ft/etcd-url.js";
import { SILENT_LOGGER } from "../../host/log.js";
import { RegisterStore } from "../../host/storage/registers.js";
import { tempDir } from "../helpers/cli.js";
import { type LogLine, tickGaps, UpCluster } from "../helpers/cluster.js";
import { EtcdProcess, etcdDataDir, killAllEtcd } from "../helpers/etcd.js";
import { Prng } from "../helpers/prng.js";

const arbiters: EtcdArbiter[] = [];
let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

afterAll(async () => {
  await Promise.all(arbiters.splice(0).map((arbiter) => arbiter.close()));
  await killAllEtcd();
});

/** An arbiter of its own (its own gRPC connection), as each host has. */
function arbiter(etcd: EtcdProcess, hostId: string, options: { timeoutMs?: number; membership?: boolean } = {}): EtcdArbiter {
  const made = etcdArbiter(etcd.url, { hostId, log: SILENT_LOGGER, membership: false, ...options });
  arbiters.push(made);
  return made;
}

const request = (vmId: string, generation: number, owner: string) => ({ vmId, generation, owner });

describe("etcd arbiter", () => {
  let etcd: EtcdProcess;
  beforeAll(async () => {
    etcd = await EtcdProcess.start(path.join(etcdDataDir("shared"), "data"));
  });

  it("takes etcd://HOST:PORT[,HOST:PORT...] and nothing else", () => {
    expect(parseEtcdUrl("etcd://127.0.0.1:2379")).toEqual(["127.0.0.1:2379"]);
    expect(parseEtcdUrl("etcd://a:1,b.example:2379,[::1]:2380/")).toEqual(["a:1", "b.example:2379", "[::1]:2380"]);
    for (const bad of ["http://127.0.0.1:2379", "etcd://host", "etcd://host:0", "etcd://host:99999", "etcd://u:p@host:1", "etcd://host:1/x", "etcd://", "127.0.0.1:2379"]) {
      expect(() => parseEtcdUrl(bad), bad).toThrow(expect.objectContaining({ code: "USAGE" }));
    }
    expect(etcdAuthFromEnv({})).toBeNull();
    expect(etcdAuthFromEnv({ LOCKSTEP_ETCD_TOKEN: "root:p:w" })).toEqual({ username: "root", password: "p:w" });
    expect(() => etcdAuthFromEnv({ LOCKSTEP_ETCD_TOKEN: "nocolon" })).toThrow(expect.objectContaining({ code: "USAGE" }));
  });

  it("many contenders race for one (vm, generation): exactly one wins, every loser gets lost", async () => {
    const hosts = Array.from({ length: 24 }, (_, index) => arbiter(etcd, `host-${index}`));
    // Several rounds, each a fresh register, so that a lucky ordering cannot pass by chance.
    for (let generation = 1; generation <= 5; generation++) {
      const answers = await Promise.all(hosts.map((host, index) => host.testAndSet(request("vm-race", generation, `host-${index}`))));
      expect(answers.filter((answer) => answer === "won"), JSON.stringify(answers)).toHaveLength(1);
      expect(answers.filter((answer) => answer === "lost")).toHaveLength(hosts.length - 1);
      const winner = `host-${answers.indexOf("won")}`;
      expect(await hosts[0]!.readGeneration("vm-race")).toEqual({ generation, owner: winner });
      // Every loser, asking again, learns who holds it.
      const outcomes = await Promise.all(hosts.map((host, index) => host.testAndSetOutcome("vm-race", generation, `host-${index}`)));
      for (const [index, outcome] of outcomes.entries()) expect(outcome).toEqual({ won: `host-${index}` === winner, generation, owner: winner });
    }
  });

  it("the winner's retry still wins, from any connection; nobody else's does", async () => {
    const [a, b, again] = [arbiter(etcd, "host-a"), arbiter(etcd, "host-b"), arbiter(etcd, "host-a-2")];
    expect(await a.testAndSet(request("kv-idem", 1, "host-a"))).toBe("won");
    expect(await b.testAndSet(request("kv-idem", 1, "host-b"))).toBe("lost");
    expect(await a.testAndSet(request("kv-idem", 1, "host-a"))).toBe("won");
    // A host whose answer was lost retries on a new connection: still its own.
    expect(await again.testAndSet(request("kv-idem", 1, "host-a"))).toBe("won");
    expect(await b.testAndSet(request("kv-idem", 1, "host-b"))).toBe("lost");
    expect(await b.readGeneration("kv-idem")).toEqual({ generation: 1, owner: "host-a" });
  });

  it("a generation below the highest set can never be won: a stale host stays out", async () => {
    const [a, b] = [arbiter(etcd, "host-a"), arbiter(etcd, "host-b")];
    expect(await a.readGeneration("kv-stale")).toBeNull();
    expect(await a.testAndSetOutcome("kv-stale", 5, "host-a")).toEqual({ won: true, generation: 5, owner: "host-a" });
    // Register 4 was never set, but 5 is: whoever asks for 4 is stale.
    expect(await b.testAndSetOutcome("kv-stale", 4, "host-b")).toEqual({ won: false, generation: 5, owner: "host-a" });
    expect(await b.testAndSetOutcome("kv-stale", 1, "host-b")).toEqual({ won: false, generation: 5, owner: "host-a" });
    expect(await b.testAndSetOutcome("kv-stale", 6, "host-b")).toEqual({ won: true, generation: 6, owner: "host-b" });
    // The winner of 5, asking again now that 6 is live, learns it is superseded.
    expect(await a.testAndSetOutcome("kv-stale", 5, "host-a")).toEqual({ won: false, generation: 6, owner: "host-b" });
    expect(await a.readGeneration("kv-stale")).toEqual({ generation: 6, owner: "host-b" });
    // Registers are per VM, and a VM's name cannot reach into another's keys.
    expect(await a.testAndSet(request("kv-stale-other", 1, "host-a"))).toBe("won");
    expect(await a.testAndSet(request("kv-stale/registers/0000000000000009", 1, "host-a"))).toBe("won");
    expect(await a.readGeneration("kv-stale")).toEqual({ generation: 6, owner: "host-b" });
  });

  it("answers exactly what the storage server's registers answer, over a random history", async () => {
    const store = new RegisterStore(tempDir("etcd-equiv"), SILENT_LOGGER, 16);
    const etcdSide = arbiter(etcd, "equiv");
    const prng = new Prng(20_261_123);
    for (let step = 0; step < 300; step++) {
      const vm = `equiv-${prng.below(2)}`;
      const generation = 1 + prng.below(10);
      const owner = `host-${prng.below(3)}`;
      const expected = await store.testAndSet(vm, generation, owner);
      const actual = await etcdSide.testAndSetOutcome(vm, generation, owner);
      expect(actual, `step ${step}: testAndSet(${vm}, ${generation}, ${owner})`).toEqual(expected);
    }
    for (const vm of ["equiv-0", "equiv-1"]) expect(await etcdSide.readGeneration(vm)).toEqual(await store.readGeneration(vm));
    await store.close();
  });

  it("keeps this host's membership key under its lease while open, and revokes it on close", async () => {
    const direct = new Etcd3({ hosts: `http://127.0.0.1:${etcd.clientPort}` });
    const member = etcdArbiter(etcd.url, { hostId: "host-member", log: SILENT_LOGGER });
    // The key is put asynchronously after the lease is granted: a watch sees it arrive.
    const watcher = await direct.watch().key("/lockstep/hosts/host-member").create();
    const put = new Promise<string>((resolve) => watcher.on("put", (kv) => resolve(kv.value.toString())));
    const existing = await direct.get("/lockstep/hosts/host-member").string();
    const value = JSON.parse(existing ?? (await put)) as { hostId: string; pid: number };
    expect(value).toMatchObject({ hostId: "host-member", pid: process.pid });
    const lease = await direct.get("/lockstep/hosts/host-member").exec();
    expect(Number(lease.kvs[0]!.lease)).not.toBe(0);
    await member.close();
    expect(await direct.get("/lockstep/hosts/host-member").string()).toBeNull();
    await watcher.cancel();
    direct.close();
  });

  it("lists the members with the address each announced, and drops one whose lease is revoked", async () => {
    const prefix = "/members-test";
    const reader = etcdArbiter(etcd.url, { hostId: "reader", log: SILENT_LOGGER, membership: false, prefix });
    arbiters.push(reader);
    const direct = new Etcd3({ hosts: `http://127.0.0.1:${etcd.clientPort}` });
    const watcher = await direct.watch().prefix(`${prefix}/hosts/`).create();
    const puts: string[] = [];
    let putSeen!: () => void;
    const waitPut = () => new Promise<void>((resolve) => (putSeen = resolve));
    watcher.on("put", (kv) => {
      puts.push(kv.value.toString());
      putSeen?.();
    });
    const one = etcdArbiter(etcd.url, { hostId: "host-a", log: SILENT_LOGGER, prefix });
    const two = etcdArbiter(etcd.url, { hostId: "host-b", log: SILENT_LOGGER, prefix });
    while (puts.length < 2) await waitPut();
    one.announce("http://127.0.0.1:7431");
    while (!puts.some((p) => p.includes("7431"))) await waitPut();
    const members = (await reader.members()).sort((a, b) => a.hostId.localeCompare(b.hostId));
    expect(members.map((m) => [m.hostId, m.url ?? null])).toEqual([["host-a", "http://127.0.0.1:7431"], ["host-b", null]]);
    await two.close();
    expect((await reader.members()).map((m) => m.hostId)).toEqual(["host-a"]);
    await one.close();
    expect(await reader.members()).toEqual([]);
    await watcher.cancel();
    direct.close();
  });
});

describe("etcd arbiter, etcd stopped and killed", () => {
  it("answers unreachable within the bound while etcd is stopped or dead; after a restart the register still holds its winner", async () => {
    const dataDir = path.join(etcdDataDir("restart"), "data");
    const first = await EtcdProcess.start(dataDir);
    const timeoutMs = 400;
    const hosts = Array.from({ length: 8 }, (_, index) => arbiter(first, `host-${index}`, { timeoutMs }));
    const answers = await Promise.all(hosts.map((host, index) => host.testAndSet(request("kv", 3, `host-${index}`))));
    expect(answers.filter((answer) => answer === "won")).toHaveLength(1);
    const winner = answers.indexOf("won");

    const timed = async (call: () => Promise<TestAndSetResult>) => {
      const started = performance.now();
      const result = await call();
      return { result, ms: performance.now() - started };
    };

    // Stopped: connections stay open and nothing answers. The bound is the deadline.
    first.child.kill("SIGSTOP");
    const stopped = await Promise.all(hosts.map((host, index) => timed(() => host.testAndSet(request("kv-probe", 1, `host-${index}`)))));
    for (const { result, ms } of stopped) {
      expect(result).toBe("unreachable");
      expect(ms).toBeGreaterThanOrEqual(timeoutMs - 5);
      expect(ms).toBeLessThan(timeoutMs + 1_000);
    }
    first.child.kill("SIGCONT");
    // The requests that timed out may still be applied once etcd resumes (hence another VM):
    // "unreachable" promises nothing either way, which is why the core retries.

    // Dead: connections refused. Answers come at once, and never later than the bound.
    await first.kill("SIGKILL");
    const dead = await Promise.all(hosts.map((host, index) => timed(() => host.testAndSet(request("kv", 3, `host-${index}`)))));
    for (const { result, ms } of dead) {
      expect(result).toBe("unreachable");
      expect(ms).toBeLessThan(timeoutMs + 1_000);
    }
    await expect(hosts[0]!.readGeneration("kv")).rejects.toThrow();

    // Restarted on the same data dir and ports: the same clients reconnect by themselves.
    const second = await EtcdProcess.start(dataDir, first.ports);
    const retries = await Promise.all(hosts.map((host, index) => host.testAndSetOutcome("kv", 3, `host-${index}`)));
    for (const [index, outcome] of retries.entries()) {
      expect(outcome.won, `host-${index}`).toBe(index === winner);
    }
    expect(await hosts[1]!.readGeneration("kv")).toEqual({ generation: 3, owner: `host-${winner}` });
    await second.kill("SIGTERM");
  });
});

const isEvent = (event: string, host?: string) => (line: LogLine) => line.event === event && (host === undefined || line.host === host);

describe("lockstep up --arbiter etcd://", () => {
  let etcd: EtcdProcess;
  beforeAll(async () => {
    etcd = await EtcdProcess.start(path.join(etcdDataDir("up"), "data"));
  });

  it("rejects a bad --arbiter as a usage error", async () => {
    const bad = new UpCluster(["--guest", "counter", "--arbiter", "http://127.0.0.1:2379"]);
    await expect(bad.ready).rejects.toThrow(/--arbiter takes etcd:\/\/HOST:PORT.*\(USAGE\)/);
    expect((await bad.exited).code).toBe(2);
  });

  it("kill -9 of the primary's host: the backup goes live by winning generation 2 in etcd", async () => {
    cluster = new UpCluster(["--guest", "counter", "--vm", "etcd-kill", "--hosts", "2", "--arbiter", etcd.url]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    expect(vm.generation).toBe(1);
    // Both hosts joined etcd under their leases.
    await cluster.until(() => (new Set(cluster!.lines.filter((l) => l.msg === "joined etcd").map((l) => l.host)).size === 2 ? true : undefined), "both hosts in etcd");

    await cluster.until(() => (cluster!.ticks().length >= 20 ? true : undefined), "20 ticks");
    process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
    const live = await cluster.event(isEvent("wentLive", vm.backup), "the backup going live");
    expect(live.generation).toBe(2);
    const seen = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seen + 20 ? true : undefined), "20 ticks after go-live");
    expect(tickGaps(cluster.ticks())).toEqual([]);

    const reader = arbiter(etcd, "reader");
    expect(await reader.readGeneration("etcd-kill")).toEqual({ generation: 2, owner: vm.backup });
    // The storage server's registers were not used: nobody asked them.
    expect(cluster.lines.filter((l) => l.host === "storage" && /test-and-set/.test(l.msg))).toEqual([]);
  });

  it("a second cluster over the same etcd continues the VM's generations", async () => {
    cluster = new UpCluster(["--guest", "counter", "--vm", "etcd-kill", "--hosts", "2", "--arbiter", etcd.url]);
    const ready = await cluster.ready;
    expect(ready.vms[0]!.generation).toBe(3);
  });

  it("the primary's host cut off from the network: the backup wins in etcd, the cut primary cannot, and halts when joined again", async () => {
    cluster = new UpCluster(["--guest", "counter", "--vm", "etcd-cut", "--hosts", "2", "--arbiter", etcd.url]);
    const ready = await cluster.ready;
    const vm = ready.vms[0]!;
    await cluster.until(() => (cluster!.ticks().length >= 20 ? true : undefined), "20 ticks");
    expect((await cluster.network(vm.primary, false)).status).toBe(200);
    const live = await cluster.event(isEvent("wentLive", vm.backup), "the backup going live");
    expect(live.generation).toBe(2);
    const reader = arbiter(etcd, "reader-cut");
    expect(await reader.readGeneration("etcd-cut")).toEqual({ generation: 2, owner: vm.backup });
    // The cut primary contends too (its backup fell silent), but its arbiter is behind the cut.
    const from = cluster.seen;
    expect((await cluster.network(vm.primary, true)).status).toBe(200);
    const halted = await cluster.event(isEvent("halted", vm.primary), "the cut primary halting", from);
    expect(["lostTestAndSet", "superseded"]).toContain(halted.reason);
    expect(cluster.lines.filter(isEvent("wentAlone", vm.primary))).toEqual([]);
    const seen = cluster.ticks().length;
    await cluster.until(() => (cluster!.ticks().length >= seen + 10 ? true : undefined), "10 more ticks");
    expect(tickGaps(cluster.ticks())).toEqual([]);
    expect(await reader.readGeneration("etcd-cut")).toEqual({ generation: 2, owner: vm.backup });
  });
});
