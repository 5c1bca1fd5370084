// Tier exactness: the same instrumented module, run to completion in child processes under
// V8's baseline compiler only (Liftoff), its optimizing compiler only (TurboFan), default dynamic
// tiering, and tiering forced to switch early (so that hot functions change tier mid-run), must
// report the same instruction count, the same checkpoint landings and the same result.
//
// The host makes the count observable to the guest too: clock_now returns the current icount,
// so any difference in counting changes the guest's result as well.

import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { instrument } from "../../host/instrument/index.js";
import { fixture, MeteredHost } from "./harness.js";

const CALLS = 40; // export calls: enough for dynamic tiering to kick in part way
const ROUNDS = 150; // rounds per call
const STEP = 9_973n; // deadline step: a checkpoint roughly every 10k instructions

// Plain JS on purpose: the child needs no loader, only WebAssembly.
const RUNNER = `
import { readFileSync } from "node:fs";
const wasm = readFileSync(process.argv[2]);
let deadline = ${STEP}n;
let fuel;
const landings = [];
const icount = () => deadline + fuel.value;
const imports = {
  lockstep: {
    clock_now: () => icount(),
    checkpoint: () => { landings.push(icount()); const now = icount(); deadline = now + ${STEP}n; fuel.value = now - deadline; },
    checkpoint_unwind: () => imports.lockstep.checkpoint(), // loop headers; never unwound here
    memory_grow: (delta) => { try { return memory.grow(delta); } catch { return -1; } },
  },
};
let memory;
const { instance } = await WebAssembly.instantiate(wasm, imports);
memory = instance.exports.memory;
fuel = instance.exports.__ls_fuel;
fuel.value = -deadline;
const results = [];
for (let i = 0; i < ${CALLS}; i++) results.push(String(instance.exports.run(${ROUNDS})));
let h = 0n;
for (const l of landings) h = (h * 1000003n + l) & 0xffffffffffffffffn;
console.log(JSON.stringify({ icount: String(icount()), landings: landings.length, landingHash: String(h), result: results.at(-1) }));
`;

const dir = mkdtempSync(join(tmpdir(), "lockstep-tiers-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Report {
  icount: string;
  landings: number;
  landingHash: string;
  result: string;
}

function runChild(wasmPath: string, flags: string[]): Report {
  const child = spawnSync(process.execPath, [...flags, join(dir, "runner.mjs"), wasmPath], { encoding: "utf8", timeout: 120_000 });
  if (child.status !== 0) throw new Error(`node ${flags.join(" ")} failed (${child.status}): ${child.stderr}`);
  return JSON.parse(child.stdout.trim()) as Report;
}

describe("tier exactness", () => {
  it("Liftoff, TurboFan, dynamic tiering and early tier-up agree on every count", async () => {
    writeFileSync(join(dir, "runner.mjs"), RUNNER);
    const wasm = instrument(fixture("workload.wat")).wasm;
    const wasmPath = join(dir, "workload.wasm");
    writeFileSync(wasmPath, wasm);

    // In this process (vitest's worker, default tiering) first: the reference.
    const host = await MeteredHost.create(wasm, { "lockstep.clock_now": (h: MeteredHost) => h.icount() });
    host.setDeadline(STEP);
    host.onCheckpoint = (h) => h.setDeadline(h.icount() + STEP);
    let result: unknown;
    for (let i = 0; i < CALLS; i++) result = host.call("run", ROUNDS);
    let hash = 0n;
    for (const l of host.landings) hash = (hash * 1000003n + l) & 0xffffffffffffffffn;
    const reference: Report = { icount: String(host.icount()), landings: host.landings.length, landingHash: String(hash), result: String(result) };
    expect(host.landings.length).toBeGreaterThan(100);

    const variants: Record<string, string[]> = {
      liftoff: ["--liftoff-only"],
      turbofan: ["--no-liftoff"],
      default: [],
      "early tier-up": ["--wasm-tiering-budget=20000"],
    };
    for (const [name, flags] of Object.entries(variants)) {
      expect({ tier: name, ...runChild(wasmPath, flags) }).toEqual({ tier: name, ...reference });
    }
  });
});
