// Snapshots mid-computation (docs/snapshots.md): what a requested snapshot costs the primary
// (its pause: memory copy, unwind, rewind) and the caller (request to snapshot in hand), for
// guests of 1, 16 and 64 MiB; and what building guests for unwinding (asyncify at loop
// headers) costs normal execution, as ratios against the un-asyncified build in this process.
//
//   npm run build:host && node --no-liftoff dist/bench/snapshot.js
//   node --no-liftoff --import tsx bench/snapshot.ts

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import wabtInit from "wabt";
import { DEFAULT_OPTIONS, instrument, instrumentWith, type InstrumentedModule } from "../host/instrument/index.js";
import { loadGuest as loadExample } from "../host/vm/guest.js";
import { Machine, recordsSource } from "../host/vm/machine.js";
import type { VmSnapshot } from "../host/vm/snapshot.js";
import type { LogRecord } from "../protocol/records.js";
import { calibrate, instantiate, loadGuest, median, projectRoot, timeCall, WORKLOADS } from "./metering.js";
import { kvUnderLoad } from "./vm.js";

export const SIZES_MIB = [1, 16, 64] as const;
const SNAPSHOT_ROUNDS = 5;
const WORKLOAD_ROUNDS = 11;
const VM_ROUNDS = 3;

export interface SnapshotBenchResult {
  sizes: { mib: number; pauseMs: number; totalMs: number; stackBytes: number }[];
  /** asyncify build / plain build time per cpu workload (median of rounds). */
  workloads: { name: string; ratio: number }[];
  workloadsOverall: number;
  /** Whole-VM times, asyncify build over plain build: cpu's main live; kv and counter replays. */
  cpuMainRatio: number;
  kvReplayRatio: number;
  counterReplayRatio: number;
  sizeRatio: { cpu: number; kv: number; counter: number };
}

const geomean = (values: number[]): number => Math.exp(values.reduce((sum, v) => sum + Math.log(v), 0) / values.length);

/** The spin-memory fixture, sized: its two marked constants follow the page count. */
export async function spinGuest(mib: number): Promise<InstrumentedModule> {
  const pages = mib * 16;
  const text = readFileSync(join(projectRoot(), "test/fixtures/guests/spin-memory.wat"), "utf8")
    .replace("(i32.const 255))) ;; PAGES - 1", `(i32.const ${pages - 1}))) ;; PAGES - 1`)
    .replace("(i32.const 16777212)) ;; PAGES * 65536 - 4", `(i32.const ${pages * 65536 - 4})) ;; PAGES * 65536 - 4`);
  const wabt = await wabtInit();
  const module = wabt.parseWat("spin-memory.wat", text, {});
  try {
    module.resolveNames();
    module.validate();
    return instrument(module.toBinary({}).buffer);
  } finally {
    module.destroy();
  }
}

/** One snapshot of a recording spin-memory guest, requested once it is computing. */
async function snapshotOnce(module: InstrumentedModule): Promise<{ pauseMs: number; totalMs: number; stackBytes: number }> {
  let requestedAtMs = 0;
  let totalMs = 0;
  let taken: VmSnapshot | null = null;
  const machine = new Machine({
    mode: "record",
    module,
    onConsole: () => {
      requestedAtMs = performance.now();
      machine.snapshot((snapshot) => {
        totalMs = performance.now() - requestedAtMs;
        taken = snapshot;
        machine.stop();
      });
    },
  });
  const result = await machine.done;
  const snapshot = taken as VmSnapshot | null;
  if (snapshot === null || snapshot.stack === undefined || snapshot.pauseMs === undefined) {
    throw new Error(`no mid-export snapshot (${result.stop}: ${result.message})`);
  }
  return { pauseMs: snapshot.pauseMs, totalMs, stackBytes: snapshot.stack.data.length };
}

async function snapshotSizes(): Promise<SnapshotBenchResult["sizes"]> {
  const sizes: SnapshotBenchResult["sizes"] = [];
  for (const mib of SIZES_MIB) {
    const module = await spinGuest(mib);
    const rounds = [];
    for (let round = 0; round < SNAPSHOT_ROUNDS; round++) rounds.push(await snapshotOnce(module));
    sizes.push({
      mib,
      pauseMs: median(rounds.map((r) => r.pauseMs)),
      totalMs: median(rounds.map((r) => r.totalMs)),
      stackBytes: rounds[0]!.stackBytes,
    });
  }
  return sizes;
}

/** The cpu workloads called directly, metered with and without asyncify, alternating. */
async function workloadRatios(): Promise<{ name: string; ratio: number }[]> {
  const guest = loadGuest(projectRoot());
  const raw = await instantiate(guest.wasm, false);
  const plain = await instantiate(instrumentWith(guest.wasm, { ...DEFAULT_OPTIONS, unwind: "none" }).wasm, true);
  const unwindable = await instantiate(instrumentWith(guest.wasm, DEFAULT_OPTIONS).wasm, true);
  const ratios = [];
  for (const name of WORKLOADS) {
    const n = calibrate(raw, name);
    if (plain.call(name, n) !== unwindable.call(name, n)) throw new Error(`${name}: results differ`);
    const perRound: number[] = [];
    for (let round = 0; round < WORKLOAD_ROUNDS; round++) {
      const first = round % 2 === 0 ? plain : unwindable;
      const second = first === plain ? unwindable : plain;
      const a = timeCall(first, name, n).ms;
      const b = timeCall(second, name, n).ms;
      perRound.push(first === plain ? b / a : a / b);
    }
    ratios.push({ name, ratio: median(perRound) });
  }
  return ratios;
}

async function timeMachine(options: ConstructorParameters<typeof Machine>[0]): Promise<number> {
  const start = performance.now();
  const result = await new Machine(options).done;
  if (result.stop === "error" || result.stop === "trap" || result.stop === "divergence") throw new Error(`${result.stop}: ${result.message}`);
  return performance.now() - start;
}

/** Alternating rounds of the same run with the asyncify build and the plain one: median ratio. */
async function vmRatio(run: (module: InstrumentedModule) => Promise<number>, wasm: Uint8Array): Promise<number> {
  const plain = instrumentWith(wasm, { ...DEFAULT_OPTIONS, unwind: "none" });
  const unwindable = instrumentWith(wasm, DEFAULT_OPTIONS);
  const ratios: number[] = [];
  for (let round = 0; round < VM_ROUNDS; round++) {
    if (round % 2 === 0) {
      const a = await run(plain);
      ratios.push((await run(unwindable)) / a);
    } else {
      const b = await run(unwindable);
      ratios.push(b / (await run(plain)));
    }
  }
  return median(ratios);
}

function wasmOf(name: string): Uint8Array {
  return new Uint8Array(readFileSync(loadExample(name).file));
}

async function counterRecords(): Promise<LogRecord[]> {
  const records: LogRecord[] = [];
  let ticks = 0;
  const machine = new Machine({
    mode: "record",
    module: loadExample("counter").module,
    onRecords: (batch) => records.push(...batch),
    onConsole: () => {
      if (++ticks === 200) machine.stop(); // 2 s of 100 Hz ticks
    },
  });
  await machine.done;
  return records;
}

export async function runSnapshotBench(): Promise<SnapshotBenchResult> {
  const sizes = await snapshotSizes();
  const workloads = await workloadRatios();
  const cpu = wasmOf("cpu");
  const cpuMainRatio = await vmRatio((module) => timeMachine({ mode: "live", module }), cpu);
  const kvRecords = (await kvUnderLoad("record", ["-t", "set,get,incr", "-n", "50000", "-c", "8"])).records;
  const kv = wasmOf("kv");
  const kvReplayRatio = await vmRatio((module) => timeMachine({ mode: "replay", module, diskBlocks: 4096, replay: recordsSource(kvRecords) }), kv);
  const counter = wasmOf("counter");
  const counterLog = await counterRecords();
  const counterReplayRatio = await vmRatio((module) => timeMachine({ mode: "replay", module, replay: recordsSource(counterLog) }), counter);
  const sizeOf = (wasm: Uint8Array): number =>
    instrumentWith(wasm, DEFAULT_OPTIONS).wasm.length / instrumentWith(wasm, { ...DEFAULT_OPTIONS, unwind: "none" }).wasm.length;
  return {
    sizes,
    workloads,
    workloadsOverall: geomean(workloads.map((w) => w.ratio)),
    cpuMainRatio,
    kvReplayRatio,
    counterReplayRatio,
    sizeRatio: { cpu: sizeOf(cpu), kv: sizeOf(kv), counter: sizeOf(counter) },
  };
}

export function printSnapshotBench(result: SnapshotBenchResult): void {
  console.log(`mid-export snapshot of a recording guest (median of ${SNAPSHOT_ROUNDS}; pause: the guest stood still; total: request to snapshot in hand)`);
  console.log("memory MiB   pause ms   total ms   stack bytes");
  for (const s of result.sizes) {
    console.log(`${String(s.mib).padStart(10)} ${s.pauseMs.toFixed(1).padStart(10)} ${s.totalMs.toFixed(1).padStart(10)} ${String(s.stackBytes).padStart(13)}`);
  }
  console.log("asyncify at loop headers / plain metering (time; above 1 is slower)");
  for (const w of result.workloads) console.log(`  ${w.name.padEnd(12)} ${w.ratio.toFixed(3)}`);
  console.log(`  overall (geometric mean) ${result.workloadsOverall.toFixed(3)}`);
  console.log(`  cpu main, live VM        ${result.cpuMainRatio.toFixed(3)}`);
  console.log(`  kv replay (redis load)   ${result.kvReplayRatio.toFixed(3)}`);
  console.log(`  counter replay (200 ticks) ${result.counterReplayRatio.toFixed(3)}`);
  const r = result.sizeRatio;
  console.log(`  module size: cpu ${r.cpu.toFixed(2)}x, kv ${r.kv.toFixed(2)}x, counter ${r.counter.toFixed(2)}x`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  printSnapshotBench(await runSnapshotBench());
}
