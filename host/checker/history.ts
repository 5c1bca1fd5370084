// A history of operations on the kv guest, as its clients saw them: each operation's
// invocation, and its completion with a result, a definite failure, or an unknown outcome.
// The checkers (linearizability.ts, durability.ts) read it; it is plain JSON-serializable
// data so that a failed check can dump it to a file and a later run can load it again.
//
// Times are milliseconds on one monotonic clock (performance.now() by default). Only their
// order matters to the checkers: an operation precedes another if it returned before the
// other was invoked.

import { z } from "zod";
import { assert } from "../errors.js";

/** Every supported operation touches exactly one key: the checker partitions by key. */
export type GetOp = { f: "get"; key: string };
export type SetOp = { f: "set"; key: string; value: string };
/** INCR (delta 1, the default), DECR (−1), INCRBY/DECRBY n: result is the new integer. */
export type IncrOp = { f: "incr"; key: string; delta?: number };
/** Single-key DEL: result is the count removed, 0 or 1. */
export type DelOp = { f: "del"; key: string };
export type Op = GetOp | SetOp | IncrOp | DelOp;

/** What an acknowledged operation returned: GET the value or null, SET "OK", INCR and DEL an integer. */
export type ResultOf<O extends Op> = O extends GetOp ? string | null : O extends SetOp ? "OK" : number;
export type Result = string | number | null;

export type Outcome =
  /** Acknowledged: took effect exactly once, between invocation and return. */
  | { type: "ok"; result: Result; returnMs: number }
  /** Certainly had no effect (a Redis error reply the model says changes nothing). */
  | { type: "fail"; error: string; returnMs: number }
  /** May or may not have taken effect (connection reset, timeout): `returnMs` is when the client gave up. */
  | { type: "unknown"; reason: string; returnMs: number };

export interface Operation {
  /** Position in the history, in invocation order: names the operation in reports. */
  readonly index: number;
  readonly clientId: number;
  readonly op: Op;
  readonly invokeMs: number;
  /** null while in flight; a check treats an operation still in flight as unknown. */
  outcome: Outcome | null;
}

/** Enough for a long run of a few clients; a runaway test fails loudly instead of eating memory. */
export const HISTORY_OPERATIONS_MAX = 1_000_000;
/** Larger deltas could not be summed exactly in a double; the guest's i64 range is wider. */
const DELTA_MAX = Number.MAX_SAFE_INTEGER;

export interface OpHandle<O extends Op> {
  readonly operation: Operation;
  ok(result: ResultOf<O>): void;
  /** Only when the operation certainly had no effect; otherwise use unknown(). */
  fail(error: string): void;
  unknown(reason: string): void;
}

export interface HistoryOptions {
  /** The clock, in ms; must never go backwards. Default performance.now(). */
  now?: () => number;
  operationsMax?: number;
}

export class History {
  private readonly ops: Operation[] = [];
  /** Clients with an operation in flight: a client is sequential. */
  private readonly busy = new Set<number>();
  private readonly now: () => number;
  private readonly operationsMax: number;
  private lastMs = -Infinity;

  constructor(options: HistoryOptions = {}) {
    this.now = options.now ?? (() => performance.now());
    this.operationsMax = options.operationsMax ?? HISTORY_OPERATIONS_MAX;
    assert(Number.isInteger(this.operationsMax) && this.operationsMax > 0, "operationsMax is a positive integer");
  }

  /** The recorded operations, in invocation order. Serialize with JSON.stringify(history). */
  get operations(): readonly Operation[] {
    return this.ops;
  }

  toJSON(): { operations: readonly Operation[] } {
    return { operations: this.ops };
  }

  invoke<O extends Op>(clientId: number, op: O): OpHandle<O> {
    assert(Number.isInteger(clientId), "clientId is an integer");
    assert(!this.busy.has(clientId), `client ${clientId} invokes while its previous operation is in flight`);
    assertOp(op);
    if (this.ops.length >= this.operationsMax) {
      throw new Error(
        `history: more than ${this.operationsMax} operations recorded; ` +
          `run a shorter test or raise operationsMax (a check's cost grows with the history)`,
      );
    }
    const operation: Operation = { index: this.ops.length, clientId, op: { ...op }, invokeMs: this.time(), outcome: null };
    this.ops.push(operation);
    this.busy.add(clientId);
    const complete = (outcome: Outcome): void => {
      assert(operation.outcome === null, `operation #${operation.index} completed twice`);
      operation.outcome = outcome;
      this.busy.delete(clientId);
    };
    return {
      operation,
      ok: (result) => {
        assertResult(op, result);
        complete({ type: "ok", result, returnMs: this.time() });
      },
      fail: (error) => complete({ type: "fail", error, returnMs: this.time() }),
      unknown: (reason) => complete({ type: "unknown", reason, returnMs: this.time() }),
    };
  }

  private time(): number {
    const ms = this.now();
    assert(Number.isFinite(ms) && ms >= this.lastMs, `history clock went backwards (${ms} < ${this.lastMs})`);
    this.lastMs = ms;
    return ms;
  }
}

function assertOp(op: Op): void {
  assert(typeof op.key === "string", "op.key is a string");
  if (op.f === "set") assert(typeof op.value === "string", "set value is a string");
  else if (op.f === "incr") {
    const delta = op.delta ?? 1;
    assert(Number.isInteger(delta) && Math.abs(delta) <= DELTA_MAX, `incr delta ${delta} is a safe integer`);
  } else assert(op.f === "get" || op.f === "del", `unknown op ${(op as { f: unknown }).f}`);
}

/** Results come from our own client code: a mistyped one is a programmer error. */
export function assertResult(op: Op, result: Result): void {
  const problem = resultProblem(op, result);
  assert(problem === null, problem ?? "");
}

/** Why `result` cannot be what `op` returns, or null if it can. */
export function resultProblem(op: Op, result: Result): string | null {
  const shown = JSON.stringify(result);
  switch (op.f) {
    case "get":
      return result === null || typeof result === "string" ? null : `get returns a string or null, not ${shown}`;
    case "set":
      return result === "OK" ? null : `set returns "OK", not ${shown}`;
    case "incr":
      return typeof result === "number" && Number.isInteger(result) ? null : `incr returns an integer, not ${shown}`;
    case "del":
      return result === 0 || result === 1 ? null : `single-key del returns 0 or 1, not ${shown}`;
  }
}

// ---- loading a dumped history ----

const opSchema = z.discriminatedUnion("f", [
  z.object({ f: z.literal("get"), key: z.string() }),
  z.object({ f: z.literal("set"), key: z.string(), value: z.string() }),
  z.object({ f: z.literal("incr"), key: z.string(), delta: z.number().int().optional() }),
  z.object({ f: z.literal("del"), key: z.string() }),
]);
const outcomeSchema = z.discriminatedUnion("type", [
  z.object({ type: z.literal("ok"), result: z.union([z.string(), z.number(), z.null()]), returnMs: z.number() }),
  z.object({ type: z.literal("fail"), error: z.string(), returnMs: z.number() }),
  z.object({ type: z.literal("unknown"), reason: z.string(), returnMs: z.number() }),
]);
const historySchema = z.object({
  operations: z
    .array(
      z.object({
        index: z.number().int(),
        clientId: z.number().int(),
        op: opSchema,
        invokeMs: z.number(),
        outcome: outcomeSchema.nullable(),
      }),
    )
    .max(HISTORY_OPERATIONS_MAX),
});

/** Reads back what JSON.stringify(history) wrote. Throws with the first problem found. */
export function parseHistoryJson(text: string): Operation[] {
  const parsed = historySchema.safeParse(JSON.parse(text));
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`history file: ${issue?.path.join(".")}: ${issue?.message}`);
  }
  const operations = parsed.data.operations as Operation[];
  for (const [position, operation] of operations.entries()) {
    if (operation.index !== position) throw new Error(`history file: operation at ${position} has index ${operation.index}`);
    const outcome = operation.outcome;
    if (outcome !== null && !(outcome.returnMs >= operation.invokeMs)) {
      throw new Error(`history file: operation #${position} returns before it is invoked`);
    }
    const problem = outcome?.type === "ok" ? resultProblem(operation.op, outcome.result) : null;
    if (problem !== null) throw new Error(`history file: operation #${position}: ${problem}`);
  }
  return operations;
}
