// Digest probes (ControlKind.Digest): an operator asks a recording VM for the digest of its
// state; the vCPU logs it as a control entry at one delivery point, and every replay computes
// its own digest at that point and compares. This is how a replica elsewhere (a backup, the
// dashboard's in-browser replica) shows that it is in the primary's exact state.

import { describe, expect, it } from "vitest";
import { ControlKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine, recordsSource } from "../../host/vm/machine.js";

interface Probe {
  icount: bigint;
  digest: string;
  checked: boolean;
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");
const probesIn = (records: LogRecord[]) => records.filter((r) => r.kind === RecordKind.Control && r.a === ControlKind.Digest);

/** Records `guest`, probing its digest at each of `probeAt` console lines, then powers it off. */
async function recordWithProbes(guest: string, probeAt: number[], offAt: number) {
  const module = loadGuest(guest).module;
  const records: LogRecord[] = [];
  const probes: Probe[] = [];
  let lines = 0;
  let machine!: Machine;
  machine = new Machine({
    mode: "record",
    module,
    onRecords: (batch) => records.push(...batch),
    onConsole: () => {
      lines++;
      if (probeAt.includes(lines)) machine.control(ControlKind.Digest);
      if (lines === offAt) machine.control(ControlKind.PowerOff);
    },
    onDigest: (icount, digest, checked) => probes.push({ icount, digest: hex(digest), checked }),
  });
  const result = await machine.done;
  return { module, records, probes, result };
}

async function replay(module: ReturnType<typeof loadGuest>["module"], records: LogRecord[]) {
  const probes: Probe[] = [];
  const result = await new Machine({
    mode: "replay",
    module,
    replay: recordsSource(records),
    onDigest: (icount, digest, checked) => probes.push({ icount, digest: hex(digest), checked }),
  }).done;
  return { result, probes };
}

describe("digest probes", () => {
  it("counter: each probe is logged with the recorder's digest, and replay checks it at the same count", async () => {
    const { module, records, probes, result } = await recordWithProbes("counter", [2, 4], 6);
    expect(result.stop, result.message ?? "").toBe("poweroff");
    expect(probes.map((p) => p.checked)).toEqual([false, false]);
    const logged = probesIn(records);
    expect(logged.map((r) => [r.icount, hex(r.data)])).toEqual(probes.map((p) => [p.icount, p.digest]));
    // The guest ran between the probes: its state, and so its digest, changed.
    expect(probes[0]!.digest).not.toBe(probes[1]!.digest);
    expect(probes[1]!.icount).toBeGreaterThan(probes[0]!.icount);

    const replayed = await replay(module, records);
    expect(replayed.result.stop, replayed.result.message ?? "").toBe("poweroff");
    expect(replayed.result.digest).toBe(result.digest);
    expect(replayed.probes).toEqual(probes.map((p) => ({ ...p, checked: true })));
  });

  it("cpu: a probe lands mid-computation, at a checkpoint, and replays there", async () => {
    // cpu prints a line per workload while main runs: probes land inside main, not at idle.
    const { module, records, probes, result } = await recordWithProbes("cpu", [1, 2], 3);
    expect(result.stop, result.message ?? "").toBe("poweroff");
    expect(probes).toHaveLength(2);
    const replayed = await replay(module, records);
    expect(replayed.result.icount).toBe(result.icount);
    expect(replayed.probes).toEqual(probes.map((p) => ({ ...p, checked: true })));
  });

  it("a replay whose state differs from the logged digest stops as a divergence at that count", async () => {
    const { module, records, probes } = await recordWithProbes("counter", [3], 5);
    const tampered = records.map((r) => (r.kind === RecordKind.Control && r.a === ControlKind.Digest ? { ...r, data: r.data.map((b, i) => (i === 0 ? b ^ 1 : b)) } : r));
    const replayed = await replay(module, tampered);
    expect(replayed.result.stop).toBe("divergence");
    expect(replayed.result.message).toContain(`replay diverged at icount ${probes[0]!.icount}: expected the state digest the primary logged here`);
    expect(replayed.probes).toEqual([]);
  });
});
