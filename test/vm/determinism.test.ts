// Record, replay, compare: for every example guest, with randomized interrupt timing and real
// inputs (redis-cli and redis-benchmark for kv, curl for http). Digests are compared at every
// output (--digest-outputs makes replay check each one) and at the end.

import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { lockstep, LockstepProcess, resultLine, ROOT, run, tempDir } from "../helpers/cli.js";
import { watFile } from "../helpers/wat.js";

const dir = tempDir("determinism");
const jitter = () => String(1 + Math.floor(Math.random() * 2 ** 30));

async function replayMatches(guest: string, log: string, recorded: ReturnType<typeof resultLine>) {
  const replay = await lockstep(["replay", guest, "--log", log]);
  expect(replay.stderr).toBe("");
  expect(replay.code).toBe(0);
  expect(resultLine(replay)).toEqual(recorded);
}

describe("record and replay reach the same state", () => {
  afterAll(() => undefined);

  it("cpu: replay prints the record's line byte for byte", async () => {
    const log = path.join(dir, "cpu.log");
    const record = await lockstep(["record", "cpu", "--log", log, "--digest-outputs", "--jitter-seed", jitter()]);
    expect(record.code).toBe(0);
    expect(record.stderr).toMatch(/checksum/);
    const replay = await lockstep(["replay", "cpu", "--log", log]);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toBe(record.stdout);
  });

  it("counter: a timer and clock-driven guest replays exactly", async () => {
    const log = path.join(dir, "counter.log");
    const record = await lockstep([
      // Bounded by instructions, not by time: about 17 ticks however loaded the machine is.
      "record", "counter", "--log", log, "--max-instructions", "150000", "--digest-outputs", "--jitter-seed", jitter(),
    ]);
    expect(record.code).toBe(0);
    // The first tick's number depends on load: a late timer coalesces the periods it missed.
    expect(record.stderr).toMatch(/^tick \d+ /m);
    const recorded = resultLine(record);
    expect(recorded.entries).toBeGreaterThan(10);
    await replayMatches("counter", log, recorded);
  });

  it("a guest whose state depends on interrupt timing: each schedule replays to its own digest", async () => {
    const wasm = await watFile(path.join(ROOT, "test/fixtures/guests/timing.wat"), dir);
    const lines = [];
    for (const seed of ["1", "2"]) {
      const log = path.join(dir, `timing-${seed}.log`);
      const record = await lockstep(["record", wasm, "--log", log, "--jitter-seed", seed]);
      expect(record.code, record.stderr).toBe(0);
      const recorded = resultLine(record);
      await replayMatches(wasm, log, recorded);
      lines.push(recorded);
    }
    // Same instructions, different landing points: different state.
    expect(lines[0]!.digest).not.toBe(lines[1]!.digest);
  });

  it("kv: real redis-cli and redis-benchmark traffic replays exactly", async () => {
    const log = path.join(dir, "kv.log");
    const disk = path.join(dir, "kv.img");
    const vm = new LockstepProcess([
      "record", "kv", "--log", log, "--disk", disk, "--listen", "127.0.0.1:0", "--digest-outputs", "--jitter-seed", jitter(),
    ]);
    const { port } = await vm.listening();
    const cli = (...args: string[]) => run("redis-cli", ["-p", String(port), ...args]);
    expect((await cli("PING")).stdout.trim()).toBe("PONG");
    expect((await cli("SET", "greeting", "hello")).stdout.trim()).toBe("OK");
    expect((await cli("INCR", "n")).stdout.trim()).toBe("1");
    expect((await cli("MSET", "a", "1", "b", "2")).stdout.trim()).toBe("OK");
    // redis-cli prints a nil reply as an empty line.
    expect((await cli("MGET", "a", "b", "missing")).stdout.split("\n").slice(0, 3)).toEqual(["1", "2", ""]);
    const bench = await run("redis-benchmark", ["-p", String(port), "-t", "set,get,incr", "-n", "2000", "-c", "4", "-q"]);
    expect(bench.code, bench.stderr).toBe(0);
    expect(bench.stdout).toMatch(/SET: .*requests per second/);
    expect((await cli("GET", "greeting")).stdout.trim()).toBe("hello");
    vm.child.kill("SIGINT");
    const record = await vm.exited;
    expect(record.code, record.stderr).toBe(0);
    await replayMatches("kv", log, resultLine(record));
  });

  it("http: real curl traffic replays exactly", async () => {
    const log = path.join(dir, "http.log");
    const vm = new LockstepProcess([
      "record", "http", "--log", log, "--listen", "127.0.0.1:0", "--digest-outputs", "--jitter-seed", jitter(),
    ]);
    const { port } = await vm.listening();
    const page = await run("curl", ["-sS", `http://127.0.0.1:${port}/`]);
    expect(page.code, page.stderr).toBe(0);
    expect(page.stdout).toMatch(/<html/i);
    // Keep-alive: several requests on one connection.
    const hits = await run("curl", ["-sS", `http://127.0.0.1:${port}/hits`, `http://127.0.0.1:${port}/hits`]);
    const counts = hits.stdout.match(/\d+/g)!.map(Number);
    expect(counts[1]! - counts[0]!).toBe(1);
    vm.child.kill("SIGINT");
    const record = await vm.exited;
    expect(record.code, record.stderr).toBe(0);
    await replayMatches("http", log, resultLine(record));
  });
});
