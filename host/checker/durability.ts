// Direct checks of the Output Requirement that are easy to state, with messages a user reads
// at a glance. They are implied by linearizability when the history ends with a final read
// of every key; what they add is a clear count: "3 acknowledged INCRs were lost".
//
// A counter is a key the history only INCRs (any delta) and GETs, starting absent. Its final
// value is what a GET returned that was invoked after every INCR on the key had completed
// (acknowledged, failed or given up on): the read after all clients stopped. It must be the
// sum of the acknowledged deltas plus the deltas of some subset of the INCRs with an unknown
// outcome. The check is that range: exact for plain INCRs (deltas of 1), necessary otherwise.

import { assert } from "../errors.js";
import type { Operation } from "./history.js";
import { describeOperation, parseKvInteger } from "./linearizability.js";

/** Counters an explanation describes at most. */
const PROBLEMS_SHOWN_MAX = 10;

export interface CounterReport {
  key: string;
  /** INCRs acknowledged, and with an unknown outcome (given up on or still in flight). */
  acknowledged: number;
  unknown: number;
  /** INCRs that certainly failed: they count for nothing. */
  failed: number;
  /** The range the final value must be in. */
  low: number;
  high: number;
  /** The final read's value, or null when the history has no final read of the key (unchecked). */
  final: number | null;
}

export type CounterResult =
  | { ok: true; counters: CounterReport[] }
  | { ok: false; key: string; explanation: string; counters: CounterReport[] };

/** Checks every counter key's final value against its count of acknowledged and unknown INCRs. */
export function checkCounters(operations: readonly Operation[]): CounterResult {
  const byKey = new Map<string, Operation[]>();
  for (const operation of operations) {
    let ops = byKey.get(operation.op.key);
    if (ops === undefined) byKey.set(operation.op.key, (ops = []));
    ops.push(operation);
  }
  const counters: CounterReport[] = [];
  const problems: { key: string; explanation: string }[] = [];
  for (const [key, ops] of byKey) {
    if (!ops.every((operation) => operation.op.f === "incr" || operation.op.f === "get")) continue;
    const incrs = ops.filter((operation) => operation.op.f === "incr");
    if (incrs.length === 0) continue;
    const report: CounterReport = { key, acknowledged: 0, unknown: 0, failed: 0, low: 0, high: 0, final: null };
    let lastCompletedMs = -Infinity;
    for (const operation of incrs) {
      assert(operation.op.f === "incr", "filtered to INCRs");
      const delta = operation.op.delta ?? 1;
      const outcome = operation.outcome;
      if (outcome !== null) lastCompletedMs = Math.max(lastCompletedMs, outcome.returnMs);
      if (outcome?.type === "ok") {
        report.acknowledged++;
        report.low += delta;
        report.high += delta;
      } else if (outcome?.type === "fail") {
        report.failed++;
      } else {
        report.unknown++;
        if (delta < 0) report.low += delta;
        else report.high += delta;
      }
    }
    // The last read invoked after every INCR completed.
    let finalRead: Operation | null = null;
    for (const operation of ops) {
      if (operation.op.f !== "get" || operation.outcome?.type !== "ok") continue;
      if (operation.invokeMs < lastCompletedMs) continue;
      if (finalRead === null || operation.invokeMs >= finalRead.invokeMs) finalRead = operation;
    }
    counters.push(report);
    if (finalRead === null || finalRead.outcome?.type !== "ok") continue;
    const text = finalRead.outcome.result as string | null;
    const parsed = parseKvInteger(text ?? "0");
    if (parsed === null) {
      problems.push({ key, explanation: `counter ${JSON.stringify(key)}: the final read is not an integer:\n  ${describeOperation(finalRead)}` });
      continue;
    }
    const final = Number(parsed);
    report.final = final;
    if (final >= report.low && final <= report.high) continue;
    const counts =
      `${report.acknowledged} INCRs were acknowledged, ${report.unknown} had an unknown outcome` +
      (report.failed > 0 ? ` and ${report.failed} failed (no effect)` : "");
    const verdict =
      final < report.low
        ? `acknowledged increments were lost: the value is ${report.low - final} short of the lowest possible`
        : `the counter went ${final - report.high} past what every INCR issued could make it`;
    problems.push({
      key,
      explanation:
        `counter ${JSON.stringify(key)}: ${verdict}.\n` +
        `  ${counts}: the final value must be in [${report.low}, ${report.high}], but the final read saw ${final}:\n` +
        `  ${describeOperation(finalRead)}`,
    });
  }
  const first = problems[0];
  if (first !== undefined) {
    const shown = problems.slice(0, PROBLEMS_SHOWN_MAX).map((problem) => problem.explanation);
    if (problems.length > shown.length) shown.push(`... and ${problems.length - shown.length} more counters`);
    return { ok: false, key: first.key, explanation: shown.join("\n\n"), counters };
  }
  return { ok: true, counters };
}
