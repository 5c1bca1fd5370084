// Output markers: with markOutputs, every output is preceded in the log by an empty Digest
// record at its count, and the output's seq counts it. A backup whose log ends before a marker
// emits that output itself; one that consumed the marker does not: across a failover each
// output leaves exactly once.

import { describe, expect, it } from "vitest";
import { RecordKind, type LogRecord } from "../../protocol/records.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine, recordsSource, type MachineOptions } from "../../host/vm/machine.js";
import type { VmResult } from "../../host/vm/messages.js";

const guest = loadGuest("counter");
const text = (bytes: Uint8Array) => Buffer.from(bytes).toString();
/** The counter's tick number in a line (a tick may cover several periods on a busy machine). */
const tickOf = (line: string | undefined) => Number(/^tick (\d+) /.exec(line ?? "")?.[1] ?? NaN);

interface Recorded {
  records: LogRecord[];
  outputs: { seq: number; text: string }[];
  result: VmResult;
}

/** Records the counter until it has printed `lines` lines. */
async function recordCounter(lines: number, options: Partial<MachineOptions>): Promise<Recorded> {
  const records: LogRecord[] = [];
  const seqs: number[] = [];
  const outputs: { seq: number; text: string }[] = [];
  const machine: Machine = new Machine({
    mode: "record",
    module: guest.module,
    ...options,
    onRecords: (batch) => records.push(...batch),
    holdOutput: (seq, release) => {
      seqs.push(seq);
      release();
    },
    onConsole: (bytes) => {
      outputs.push({ seq: seqs.at(-1)!, text: text(bytes) });
      if (outputs.length === lines) machine.stop();
    },
  });
  const result = await machine.done;
  expect(result.stop, result.message ?? "").toBe("stopped");
  return { records, outputs, result };
}

/** A backup replays `log`, goes live as a recorder, and prints `liveLines` lines of its own. */
async function failover(log: LogRecord[], liveLines: number) {
  const replayed: string[] = [];
  const live: string[] = [];
  const liveRecords: LogRecord[] = [];
  let wentLive = false;
  const backup: Machine = new Machine({
    mode: "replay",
    goLiveAs: "record",
    markOutputs: true,
    module: guest.module,
    replay: recordsSource(log),
    onLive: () => (wentLive = true),
    onRecords: (batch) => liveRecords.push(...batch),
    onConsole: (bytes) => {
      (wentLive ? live : replayed).push(text(bytes));
      if (live.length === liveLines) backup.stop();
    },
  });
  const result = await backup.done;
  expect(result.stop, result.message ?? "").toBe("stopped");
  return { replayed, live, liveRecords };
}

describe("output markers", () => {
  it("every output follows an empty Digest record that its seq counts, and the log replays", async () => {
    const { records, outputs, result } = await recordCounter(6, { markOutputs: true });
    expect(outputs).toHaveLength(6);
    for (const output of outputs) {
      const marker = records[output.seq - 1]!;
      expect(marker.kind).toBe(RecordKind.Digest);
      expect(marker.data).toHaveLength(0);
    }
    // One marker per output and nothing else; a replay consumes each at its output's count
    // (a marker anywhere else would be in the way of the next input: a divergence).
    const markers = records.filter((r) => r.kind === RecordKind.Digest);
    expect(markers.length).toBe(outputs.length);
    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.stop, replay.message ?? "").toBe("stopped");
    expect(replay.icount).toBe(result.icount);
    expect(replay.digest).toBe(result.digest);
  });

  it("with digestAtOutputs the full digest is the marker", async () => {
    const { records, outputs, result } = await recordCounter(4, { markOutputs: true, digestAtOutputs: true });
    for (const output of outputs) {
      const marker = records[output.seq - 1]!;
      expect(marker.kind).toBe(RecordKind.Digest);
      expect(marker.data).toHaveLength(32);
    }
    expect(records.filter((r) => r.kind === RecordKind.Digest).length).toBe(outputs.length);
    const replay = await new Machine({ mode: "replay", module: guest.module, replay: recordsSource(records) }).done;
    expect(replay.digest).toBe(result.digest);
  });

  it("a backup whose log holds an output's marker leaves that output to the primary", async () => {
    const { records, outputs } = await recordCounter(6, { markOutputs: true });
    const output = outputs[3]!;
    const tick = tickOf(output.text);
    expect(tick).toBeGreaterThanOrEqual(3);
    const { replayed, live } = await failover(records.slice(0, output.seq), 2);
    expect(replayed.at(-1)).toBe(output.text);
    expect(live).not.toContain(output.text);
    expect(tickOf(live[0])).toBeGreaterThan(tick);
  });

  it("a backup whose log ends before an output's marker emits that output itself, once", async () => {
    const { records, outputs } = await recordCounter(6, { markOutputs: true });
    const output = outputs[3]!;
    const cut = output.seq - 1;
    const { replayed, live, liveRecords } = await failover(records.slice(0, cut), 2);
    expect(replayed).not.toContain(output.text);
    // The same bytes: computed from the primary's logged inputs.
    expect(live[0]).toBe(output.text);
    expect(tickOf(live[1])).toBeGreaterThan(tickOf(output.text));
    // And the backup logs the marker the primary did not get to send.
    expect(liveRecords[0]).toMatchObject({ kind: RecordKind.Digest, seq: BigInt(cut) });
    expect(liveRecords[0]!.data).toHaveLength(0);
  });
});
