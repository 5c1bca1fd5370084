// Types and helpers shared by the two protocol cores.

import { ControlKind, type LogRecord, RecordKind } from "../../protocol/records.js";

/** Why a core halted. `powerOff` and `end` are clean stops (§3.3); the rest lost a contest. */
export type HaltReason = "powerOff" | "end" | "lostTestAndSet" | "superseded" | "diverged";

/** A handled operating error: a peer sent something this core cannot use. It was dropped. */
export interface ProtocolError {
  code: "WRONG_VM" | "WRONG_ROLE" | "BAD_BATCH" | "BAD_ACK" | "STALE_GENERATION";
  detail: string;
}

/** At most this many ProtocolErrors are reported per Ready (all are counted in `stats`). */
export const READY_ERRORS_MAX = 8;

/** PowerOff and End end the log: the backup stops at them and never goes live (§3.3). */
export function isTerminal(record: LogRecord): boolean {
  return record.kind === RecordKind.End || (record.kind === RecordKind.Control && record.a === ControlKind.PowerOff);
}

const NONE: readonly never[] = Object.freeze([]);

/**
 * Empties a pending list into a Ready: its contents move out (a Ready never aliases a list
 * the core keeps appending to), and an empty one costs no allocation.
 */
export function take<T>(pending: T[]): readonly T[] {
  if (pending.length === 0) return NONE;
  return pending.splice(0, pending.length);
}
