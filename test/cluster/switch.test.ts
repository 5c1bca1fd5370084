// Clients that never notice (the paper's §2.2-2.3 promise): real, unmodified clients talk to the
// FT guests through the switch while the primary's host is killed with kill -9. Their TCP
// connections stay open, nothing they were told is lost, and no request is applied twice.

import { spawn } from "node:child_process";
import { afterEach, describe, expect, it } from "vitest";
import { run } from "../helpers/cli.js";
import { type Ready, UpCluster } from "../helpers/cluster.js";
import { redis } from "../helpers/redis-cli.js";

let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

function hostPort(address: string): [string, string] {
  return [address.slice(0, address.lastIndexOf(":")), address.slice(address.lastIndexOf(":") + 1)];
}

interface BenchmarkRun {
  code: number | null;
  output: string;
}

/** redis-benchmark against `address`, to completion. */
function redisBenchmark(address: string, args: string[]): Promise<BenchmarkRun> {
  const [host, port] = hostPort(address);
  return new Promise((resolve) => {
    const child = spawn("redis-benchmark", ["-h", host, "-p", port, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.on("close", (code) => resolve({ code, output }));
  });
}

/** Polls with the real client until the counter passes `value`: progress seen, not waited for. */
async function untilCounterPasses(address: string, key: string, value: number): Promise<void> {
  for (;;) {
    const [reply] = await redis(address, [`GET ${key}`]);
    if (Number(reply) > value) return;
  }
}

async function killPrimaryHost(ready: Ready, vmName: string): Promise<{ backup: string }> {
  const vm = ready.vms.find((v) => v.vm === vmName)!;
  const from = cluster!.seen;
  process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
  await cluster!.event((l) => l.event === "wentLive" && l.vm === vmName && l.host === vm.backup, "the backup going live", from);
  return { backup: vm.backup };
}

describe("the switch: clients keep their connections through a failover", () => {
  it.each([
    ["one request at a time", []],
    ["pipelined, 16 deep", ["-P", "16"]],
  ])("redis-benchmark SET, GET and INCR, %s: zero errors while the primary's host is killed, every acknowledged write there, every INCR counted once", async (_name, extra) => {
    cluster = new UpCluster(["--guest", "kv", "--hosts", "3"]);
    const ready = await cluster.ready;
    const kv = ready.services!.kv!;
    expect(kv).toMatch(/^127\.0\.0\.1:\d+$/);

    // Two real redis-benchmarks over 20 connections each, which stay open across the failover
    // (redis-benchmark fails on any error or dropped connection): SET and GET of
    // "key:__rand_int__" (without -r the key is literal), and INCR of "counter:__rand_int__"
    // `incrs` times. The kill lands while both run.
    const incrs = 8_000;
    const setGet = redisBenchmark(kv, ["-t", "set,get", "-n", "10000", "-c", "20", "-d", "8", "-q", ...extra]);
    const incr = redisBenchmark(kv, ["-t", "incr", "-n", String(incrs), "-c", "20", "-q", ...extra]);
    await untilCounterPasses(kv, "counter:__rand_int__", incrs / 5);
    await killPrimaryHost(ready, "kv");
    for (const [run, tests] of [[await setGet, ["SET", "GET"]], [await incr, ["INCR"]]] as const) {
      expect(run.code, run.output).toBe(0);
      expect(run.output).not.toMatch(/error|reset|closed/i);
      for (const test of tests) expect(run.output).toMatch(new RegExp(`${test}: [\\d.]+ requests per second`));
    }

    // Every acknowledged write is there, and every acknowledged INCR counted once: none lost,
    // none applied twice by the replay.
    // (redis-benchmark 7 writes one random 8-byte value, the same in every SET of its run.)
    const [value, counter] = await redis(kv, ["GET key:__rand_int__", "GET counter:__rand_int__"]);
    expect(value).toMatch(/^.{8}$/);
    expect(counter).toBe(String(incrs));
    const status = await cluster.status();
    expect(status.vms[0]).toMatchObject({ generation: 2 });
  });

  it("curl against http through a failover: the same page, every time, and the hit counter counts each request once", async () => {
    cluster = new UpCluster(["--guest", "http", "--hosts", "3"]);
    const ready = await cluster.ready;
    const http = ready.services!.http!;
    const get = async () => {
      const result = await run("curl", ["-sS", "--max-time", "30", `http://${http}/hits`]);
      expect(result.code, result.stderr).toBe(0);
      return result.stdout;
    };
    const before: string[] = [];
    for (let i = 0; i < 5; i++) before.push(await get());
    const killed = killPrimaryHost(ready, "http");
    // Requests while the primary dies: each waits, none fails.
    const during = await Promise.all(Array.from({ length: 5 }, get));
    await killed;
    const after = await get();
    const counts = [...before, ...during, after].map((body) => Number(/\d+/.exec(body)?.[0]));
    expect(counts.every(Number.isInteger)).toBe(true);
    expect(new Set(counts).size).toBe(counts.length);
    expect(Math.max(...counts)).toBe(counts.length);
  });
});
