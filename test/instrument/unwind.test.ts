// Unwinding (docs/snapshots.md): asyncify changes no count, and a stack unwound at a loop
// header's checkpoint_unwind and rewound into finishes exactly like a run never unwound.

import { describe, expect, it } from "vitest";
import { DEFAULT_OPTIONS, instrumentWith } from "../../host/instrument/index.js";
import { fixture, MeteredHost } from "./harness.js";

const STEP = 997n; // a checkpoint every thousand instructions or so
const DATA_PTR = 0; // asyncify's header (position, end), then the frames
const DATA_END = 60_000; // inside the fixture's first page

/** A host that gives a slice of STEP at every checkpoint, so landings are many and known. */
async function slicedHost(wasm: Uint8Array): Promise<MeteredHost> {
  const host = await MeteredHost.create(wasm);
  host.onCheckpoint = (h) => h.setDeadline(h.icount() + STEP);
  host.setDeadline(STEP);
  return host;
}

function digest(host: MeteredHost): string {
  return Buffer.from(host.memory.buffer).toString("base64");
}

describe("asyncify at loop headers", () => {
  it("counts and checkpoint landings are the same with and without unwinding support", async () => {
    const input = fixture("workload.wat");
    const plain = await slicedHost(instrumentWith(input, { ...DEFAULT_OPTIONS, unwind: "none" }).wasm);
    const unwindable = await slicedHost(instrumentWith(input, DEFAULT_OPTIONS).wasm);
    expect(plain.measure("run", 50)).toEqual(unwindable.measure("run", 50));
    expect(unwindable.landings).toEqual(plain.landings);
    expect(unwindable.landings.length).toBeGreaterThan(10);
    expect(unwindable.unwindLandings.length).toBeGreaterThan(2);
  });

  it("a run unwound at a checkpoint and rewound ends with the result, count and memory of one that was not", async () => {
    const wasm = instrumentWith(fixture("workload.wat"), DEFAULT_OPTIONS).wasm;
    const reference = await slicedHost(wasm);
    const expected = reference.measure("run", 50);

    const host = await slicedHost(wasm);
    const asyncify = host.exports as unknown as Record<string, (...args: number[]) => number>;
    const view = (): DataView => new DataView(host.memory.buffer); // memory may grow
    let phase: "run" | "unwinding" | "rewinding" | "done" = "run";
    let saved = new Uint8Array(0);
    // Unwind at the 3rd loop-header landing; the rewind ends at that same checkpoint.
    host.onCheckpoint = (h) => {
      if (phase === "rewinding") {
        expect(h.atLoopHeader).toBe(true);
        asyncify.asyncify_stop_rewind!();
        new Uint8Array(host.memory.buffer).set(saved, DATA_PTR);
        phase = "done";
        return; // the checkpoint's work was done before the unwind
      }
      h.setDeadline(h.icount() + STEP);
      if (phase === "run" && h.atLoopHeader && h.unwindLandings.length === 3) {
        saved = new Uint8Array(host.memory.buffer).slice(DATA_PTR, DATA_END);
        view().setUint32(DATA_PTR, DATA_PTR + 8, true);
        view().setUint32(DATA_PTR + 4, DATA_END, true);
        asyncify.asyncify_start_unwind!(DATA_PTR);
        phase = "unwinding";
      }
    };
    const before = host.icount();
    host.call("run", 50);
    expect(phase).toBe("unwinding");
    asyncify.asyncify_stop_unwind!();
    expect(view().getUint32(DATA_PTR, true)).toBeGreaterThan(DATA_PTR + 8); // frames were saved
    const fuelAtUnwind = host.fuel.value;
    asyncify.asyncify_start_rewind!(DATA_PTR);
    phase = "rewinding";
    const result = host.call("run", 50); // arguments are ignored: the frames hold them
    expect(phase).toBe("done");
    expect(fuelAtUnwind).toBeLessThan(0n);
    expect({ result, icount: host.icount() - before }).toEqual(expected);
    expect(digest(host)).toBe(digest(reference));
  });
});
