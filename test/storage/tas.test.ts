// The test-and-set registers (§2.3): exactly one winner per (VM, generation) among many racing
// hosts, the winner kept across kill -9, retries by the winner idempotent, stale generations
// never winnable.

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { StorageClient } from "../../host/storage/client.js";
import { client, expectStructuredLogs, killAll, nextState, StorageProcess, tempDir } from "./helpers.js";

afterAll(killAll);

const CONTENDERS = 24;

async function contenders(url: string, count: number): Promise<StorageClient[]> {
  return Promise.all(Array.from({ length: count }, (_, index) => client(url, { clientId: `host-${index}` })));
}

describe("test-and-set", () => {
  it("many clients race for one register: exactly one wins, every loser learns the winner", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("race") });
    const hosts = await contenders(url, CONTENDERS);
    // Several rounds, each a fresh register, so that a lucky ordering cannot pass by chance.
    for (let generation = 1; generation <= 5; generation++) {
      const answers = await Promise.all(hosts.map((host, index) => host.testAndSet("vm-race", generation, `host-${index}`)));
      const winners = answers.filter((answer) => answer.won);
      expect(winners, JSON.stringify(answers)).toHaveLength(1);
      const winner = winners[0]!.owner;
      for (const answer of answers) expect(answer).toMatchObject({ generation, owner: winner });
      expect(await hosts[0]!.readGeneration("vm-race")).toEqual({ generation, owner: winner });
      const won = server.logs.filter((line) => line.msg === "test-and-set won" && line.generation === generation);
      expect(won).toHaveLength(1);
      expect(won[0]).toMatchObject({ vm: "vm-race", owner: winner });
    }
    await Promise.all(hosts.map((host) => host.close()));
    await server.kill("SIGTERM");
    expectStructuredLogs(server);
  });

  it("the winner survives kill -9 and restart; its retry still wins, nobody else can", async () => {
    const dir = tempDir("persist");
    const first = await StorageProcess.start({ dir });
    const hosts = await contenders(first.url, 8);
    const answers = await Promise.all(hosts.map((host, index) => host.testAndSet("kv", 3, `host-${index}`)));
    const winner = answers.find((answer) => answer.won)!.owner;
    // Killed right after answering: "won" was durable before it was sent.
    await first.server.kill("SIGKILL");
    await Promise.all(hosts.map((host) => host.close()));
    expect(fs.readFileSync(path.join(dir, "registers", "kv", "3"), "utf8")).toBe(winner);

    const second = await StorageProcess.start({ dir });
    const again = await contenders(second.url, 8);
    expect(await again[0]!.readGeneration("kv")).toEqual({ generation: 3, owner: winner });
    const retries = await Promise.all(again.map((host, index) => host.testAndSet("kv", 3, `host-${index}`)));
    for (const [index, answer] of retries.entries()) {
      expect(answer, `host-${index}`).toEqual({ won: `host-${index}` === winner, generation: 3, owner: winner });
    }
    await Promise.all(again.map((host) => host.close()));
    await second.server.kill("SIGTERM");
  });

  it("a generation below the highest set can never be won: a stale host stays out", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("stale") });
    const [a, b] = await contenders(url, 2);
    expect(await a!.readGeneration("kv")).toBeNull();
    expect(await a!.testAndSet("kv", 5, "host-a")).toEqual({ won: true, generation: 5, owner: "host-a" });
    // Register 4 was never set, but 5 is: whoever asks for 4 is stale.
    expect(await b!.testAndSet("kv", 4, "host-b")).toEqual({ won: false, generation: 5, owner: "host-a" });
    expect(await b!.testAndSet("kv", 6, "host-b")).toEqual({ won: true, generation: 6, owner: "host-b" });
    // The winner of 5, asking again now that 6 is live, learns it is superseded.
    expect(await a!.testAndSet("kv", 5, "host-a")).toEqual({ won: false, generation: 6, owner: "host-b" });
    expect(await a!.readGeneration("kv")).toEqual({ generation: 6, owner: "host-b" });
    // Registers are per VM.
    expect(await a!.testAndSet("other", 1, "host-a")).toMatchObject({ won: true });
    const lost = await server.waitForMsg("test-and-set lost", { vm: "kv", generation: 4 });
    expect(lost).toMatchObject({ owner: "host-b", current: { generation: 5, owner: "host-a" } });
    await a!.close();
    await b!.close();
    await server.kill("SIGTERM");
  });

  it("races across a restart: contenders that reconnect still produce one winner", async () => {
    const dir = tempDir("restart-race");
    const first = await StorageProcess.start({ dir });
    const hosts = await contenders(first.url, 12);
    // Half ask before the kill, half after the restart: the first half's winner stays the winner.
    const before = await Promise.all(hosts.slice(0, 6).map((host, index) => host.testAndSet("kv", 1, `host-${index}`)));
    const dropped = hosts.map((host) => nextState(host, "unreachable"));
    await first.server.kill("SIGKILL");
    await Promise.all(dropped);
    const second = await StorageProcess.start({ dir, port: first.port });
    await Promise.all(hosts.map((host) => host.waitReachable()));
    const after = await Promise.all(hosts.slice(6).map((host, index) => host.testAndSet("kv", 1, `host-${index + 6}`)));
    const all = [...before, ...after];
    expect(all.filter((answer) => answer.won)).toHaveLength(1);
    expect(before.filter((answer) => answer.won)).toHaveLength(1);
    expect(new Set(all.map((answer) => answer.owner)).size).toBe(1);
    await Promise.all(hosts.map((host) => host.close()));
    await second.server.kill("SIGTERM");
  });
});
