// Bad input, as a user meets it: each gives one clear line on stderr and a nonzero exit, never
// a stack trace, and nothing the user had is lost.

import fs from "node:fs";
import path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { lockstep, resultLine, ROOT, tempDir } from "../helpers/cli.js";
import { watFile } from "../helpers/wat.js";

const dir = tempDir("errors");
let cpuLog: string;

function oneErrorLine(stderr: string, code: string): void {
  const lines = stderr.trim().split("\n");
  expect(lines, stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^lockstep: /);
  expect(lines[0]).toContain(code);
  expect(stderr).not.toMatch(/\n\s+at /);
}

beforeAll(async () => {
  cpuLog = path.join(dir, "cpu.log");
  const record = await lockstep(["record", "cpu", "--log", cpuLog]);
  expect(record.code, record.stderr).toBe(0);
});

describe("bad input gets a clear error", () => {
  it("a missing guest file", async () => {
    const result = await lockstep(["run", path.join(dir, "nope.wasm")]);
    expect(result.code).toBe(1);
    oneErrorLine(result.stderr, "FILE_NOT_FOUND");
  });

  it("an unknown guest name lists the examples", async () => {
    const result = await lockstep(["run", "no-such-guest"]);
    expect(result.code).toBe(1);
    oneErrorLine(result.stderr, "GUEST_UNKNOWN");
    expect(result.stderr).toMatch(/kv/);
  });

  it("a malformed wasm file", async () => {
    const file = path.join(dir, "garbage.wasm");
    fs.writeFileSync(file, Buffer.from("\0asm\x01\0\0\0this is not a module"));
    const result = await lockstep(["run", file]);
    expect(result.code).toBe(1);
    oneErrorLine(result.stderr, "WASM_MALFORMED");
  });

  it("a missing log", async () => {
    const result = await lockstep(["replay", "cpu", "--log", path.join(dir, "missing.log")]);
    expect(result.code).toBe(1);
    oneErrorLine(result.stderr, "FILE_NOT_FOUND");
  });

  it("a corrupt log: one flipped byte in a record", async () => {
    const bytes = fs.readFileSync(cpuLog);
    bytes[bytes.length - 10]! ^= 0x40;
    const file = path.join(dir, "corrupt.log");
    fs.writeFileSync(file, bytes);
    const result = await lockstep(["replay", "cpu", "--log", file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/LOG_CHECKSUM|LOG_MALFORMED/);
    expect(result.stderr).not.toMatch(/\n\s+at /);
  });

  it("a truncated log replays its complete prefix, then says it was cut", async () => {
    const bytes = fs.readFileSync(cpuLog);
    const file = path.join(dir, "truncated.log");
    fs.writeFileSync(file, bytes.subarray(0, bytes.length - 3));
    const result = await lockstep(["replay", "cpu", "--log", file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/LOG_TRUNCATED/);
    const inspect = await lockstep(["inspect", file]);
    expect(inspect.stdout).toMatch(/truncated/);
  });

  it("a log recorded from another module", async () => {
    const result = await lockstep(["replay", "counter", "--log", cpuLog]);
    expect(result.code).toBe(1);
    oneErrorLine(result.stderr, "LOG_MODULE_MISMATCH");
  });

  it("a guest trap names the guest's message and instruction count", async () => {
    const wasm = await watFile(path.join(ROOT, "test/fixtures/guests/trap.wat"), dir);
    const log = path.join(dir, "trap.log");
    const record = await lockstep(["record", wasm, "--log", log]);
    expect(record.code).toBe(1);
    expect(record.stderr).toMatch(/^lockstep: guest trapped: .*unreachable.* \(at icount \d+\)$/m);
    // The trap is part of the execution: replay reaches the same point and says the same.
    const replay = await lockstep(["replay", wasm, "--log", log]);
    expect(replay.code).toBe(1);
    expect(resultLine(replay)).toEqual(resultLine(record));
  });

  it("a guest out of memory is told so, with the limit", async () => {
    const wasm = await watFile(path.join(ROOT, "test/fixtures/guests/grow.wat"), dir);
    const result = await lockstep(["run", wasm, "--memory-mib", "4"]);
    expect(result.code).toBe(1);
    oneErrorLine(result.stderr, "out of memory");
    expect(result.stderr).toMatch(/4 MiB/);
  });

  it("bad flags are usage errors", async () => {
    const result = await lockstep(["record", "cpu"]);
    expect(result.code).toBe(2);
    oneErrorLine(result.stderr, "--log FILE is required");
  });
});
