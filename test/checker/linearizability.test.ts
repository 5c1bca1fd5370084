// The history checker (docs/checker.md) must be able to fail: every kind of anomaly below is a
// history the kv guest must never produce, and the checker has to name the key and the
// operation. Linearizable histories, including ones only a single order explains and ones
// with unknown outcomes, must pass; a long random history from a simulated linearizable
// store must pass quickly, and fail once one read in it is corrupted.
//
// The random tests print their seed; rerun one with LOCKSTEP_SEED=N.

import { describe, expect, it } from "vitest";
import { checkCounters } from "../../host/checker/durability.js";
import { History, type Op, type Operation, type Outcome, parseHistoryJson } from "../../host/checker/history.js";
import { checkLinearizability, describeOperation } from "../../host/checker/linearizability.js";
import { Prng } from "../helpers/prng.js";

const SEED = Number(process.env["LOCKSTEP_SEED"] ?? 20240611) >>> 0;

/** A hand-written history: times in ms, chosen to make the overlaps explicit. */
class Hand {
  readonly ops: Operation[] = [];

  private add(clientId: number, op: Op, invokeMs: number, outcome: Outcome | null): Operation {
    const operation: Operation = { index: this.ops.length, clientId, op, invokeMs, outcome };
    this.ops.push(operation);
    return operation;
  }

  ok(clientId: number, op: Op, invokeMs: number, returnMs: number, result: string | number | null): Operation {
    return this.add(clientId, op, invokeMs, { type: "ok", result, returnMs });
  }

  fail(clientId: number, op: Op, invokeMs: number, returnMs: number): Operation {
    return this.add(clientId, op, invokeMs, { type: "fail", error: "ERR value is not an integer or out of range", returnMs });
  }

  unknown(clientId: number, op: Op, invokeMs: number, returnMs: number): Operation {
    return this.add(clientId, op, invokeMs, { type: "unknown", reason: "connection reset", returnMs });
  }

  pending(clientId: number, op: Op, invokeMs: number): Operation {
    return this.add(clientId, op, invokeMs, null);
  }
}

const get = (key = "x"): Op => ({ f: "get", key });
const set = (value: string, key = "x"): Op => ({ f: "set", key, value });
const incr = (key = "x", delta?: number): Op => (delta === undefined ? { f: "incr", key } : { f: "incr", key, delta });
const del = (key = "x"): Op => ({ f: "del", key });

function expectLinearizable(ops: readonly Operation[]): void {
  const result = checkLinearizability(ops);
  expect(result.ok, result.ok === false ? result.explanation : JSON.stringify(result)).toBe(true);
}

function expectViolation(ops: readonly Operation[], failing: Operation): string {
  const result = checkLinearizability(ops);
  expect(result.ok).toBe(false);
  if (result.ok !== false) throw new Error("unreachable");
  expect(result.key).toBe(failing.op.key);
  expect(result.failing.index, result.explanation).toBe(failing.index);
  expect(result.explanation).toContain(`#${failing.index} `);
  return result.explanation;
}

describe("linearizable histories pass", () => {
  it("an empty history, and sequential operations of every kind", () => {
    expectLinearizable([]);
    const h = new Hand();
    h.ok(1, get(), 0, 1, null);
    h.ok(1, set("5"), 2, 3, "OK");
    h.ok(1, incr(), 4, 5, 6);
    h.ok(1, incr("x", -10), 6, 7, -4);
    h.ok(1, get(), 8, 9, "-4");
    h.ok(1, del(), 10, 11, 1);
    h.ok(1, del(), 12, 13, 0);
    h.ok(1, incr(), 14, 15, 1); // a missing key counts from "0"
    h.ok(2, get("y"), 0, 20, null);
    expectLinearizable(h.ops);
  });

  it("overlapping INCRs where only the later-invoked one can go first", () => {
    const h = new Hand();
    h.ok(1, incr(), 0, 10, 2);
    h.ok(2, incr(), 1, 9, 1);
    expectLinearizable(h.ops);
  });

  it("overlapping SETs ordered by a later read", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 10, "OK");
    h.ok(2, set("2"), 1, 9, "OK");
    h.ok(3, get(), 11, 12, "1");
    expectLinearizable(h.ops);
  });

  it("reads concurrent with a write see the old value, then the new one", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    h.ok(1, set("2"), 2, 20, "OK");
    h.ok(2, get(), 3, 4, "1");
    h.ok(3, get(), 5, 6, "2");
    h.ok(2, get(), 7, 8, "2");
    expectLinearizable(h.ops);
  });

  it("operations whose times touch are concurrent", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 5, "OK");
    h.ok(2, get(), 5, 6, null); // invoked at the instant the SET returned: may precede it
    expectLinearizable(h.ops);
  });

  it("a failed INCR changes nothing, and keys are independent", () => {
    const h = new Hand();
    h.ok(1, set("abc"), 0, 1, "OK");
    h.fail(1, incr(), 2, 3);
    h.ok(1, get(), 4, 5, "abc");
    h.ok(2, incr("y"), 0, 10, 1);
    h.ok(3, incr("y"), 0, 10, 2);
    expectLinearizable(h.ops);
  });

  it("a given initial value", () => {
    const h = new Hand();
    h.ok(1, get(), 0, 1, "5");
    expect(checkLinearizability(h.ops).ok).toBe(false);
    expect(checkLinearizability(h.ops, { initialValue: (key) => (key === "x" ? "5" : null) }).ok).toBe(true);
  });
});

describe("anomalies are caught", () => {
  it("a lost write: SET acknowledged, a later GET returns the older value", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    h.ok(1, set("2"), 2, 3, "OK");
    h.ok(2, get("other"), 0, 10, null);
    const read = h.ok(2, get(), 4, 5, "1");
    const explanation = expectViolation(h.ops, read);
    console.log(`a lost write, as the checker explains it:\n${explanation}`);
  });

  it("a stale read: another client reads the old value after the write returned", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    h.ok(2, get(), 2, 3, "1");
    h.ok(1, set("2"), 4, 5, "OK");
    const stale = h.ok(2, get(), 6, 7, "1");
    expectViolation(h.ops, stale);
  });

  it("a read goes back to the old value after another read saw the new one, all during the write", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    h.ok(1, set("2"), 2, 20, "OK");
    h.ok(2, get(), 3, 4, "2");
    const back = h.ok(3, get(), 5, 6, "1");
    expectViolation(h.ops, back);
  });

  it("a value nobody wrote, and a write that reappears after a DEL", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    const phantom = h.ok(2, get(), 0, 5, "7");
    expectViolation(h.ops, phantom);

    const g = new Hand();
    g.ok(1, set("1"), 0, 1, "OK");
    g.ok(1, del(), 2, 3, 1);
    const resurrected = g.ok(2, get(), 4, 5, "1");
    expectViolation(g.ops, resurrected);
  });

  it("an INCR counter that went backwards, or repeated a value", () => {
    const h = new Hand();
    h.ok(1, incr(), 0, 1, 1);
    h.ok(2, incr(), 2, 3, 2);
    const backwards = h.ok(1, incr(), 4, 5, 2);
    expectViolation(h.ops, backwards);

    // All concurrent: any order, but not two INCRs returning the same value.
    const g = new Hand();
    g.ok(1, incr(), 0, 10, 1);
    g.ok(2, incr(), 0, 10, 2);
    const repeated = g.ok(3, incr(), 0, 10, 2);
    const result = checkLinearizability(g.ops);
    expect(result.ok).toBe(false);
    if (result.ok === false) expect(result.prefix).toContain(repeated);
  });

  it("an INCR acknowledged on a value it could not add to", () => {
    const h = new Hand();
    h.ok(1, set("abc"), 0, 1, "OK");
    const impossible = h.ok(1, incr(), 2, 3, 1);
    expectViolation(h.ops, impossible);
  });

  it("reports the earliest violation over all keys", () => {
    const h = new Hand();
    h.ok(1, set("1", "late"), 0, 1, "OK");
    h.ok(1, get("late"), 50, 51, "2");
    h.ok(2, set("1", "early"), 0, 1, "OK");
    const early = h.ok(2, get("early"), 10, 11, "2");
    expectViolation(h.ops, early);
  });
});

describe("unknown outcomes: a write may or may not have happened", () => {
  function unknownWrite(): Hand {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    h.unknown(1, set("2"), 2, 3);
    return h;
  }

  it("an unknown SET that took effect, or did not", () => {
    const took = unknownWrite();
    took.ok(2, get(), 10, 11, "2");
    expectLinearizable(took.ops);
    const didNot = unknownWrite();
    didNot.ok(2, get(), 10, 11, "1");
    expectLinearizable(didNot.ops);
  });

  it("it may take effect long after the client gave up, but cannot be undone", () => {
    const late = unknownWrite();
    late.ok(2, get(), 10, 11, "1");
    late.ok(2, get(), 12, 13, "2");
    expectLinearizable(late.ops);
    const undone = unknownWrite();
    undone.ok(2, get(), 10, 11, "2");
    const back = undone.ok(2, get(), 12, 13, "1");
    expectViolation(undone.ops, back);
  });

  it("it cannot take effect before it was invoked", () => {
    const h = new Hand();
    h.ok(1, set("1"), 0, 1, "OK");
    const early = h.ok(2, get(), 2, 3, "2");
    h.unknown(1, set("2"), 4, 5);
    expectViolation(h.ops, early);
  });

  it("unknown INCRs and DELs, and an operation still in flight", () => {
    for (const [final, ok] of [[3, true], [2, true], [4, false]] as const) {
      const h = new Hand();
      h.ok(1, incr(), 0, 1, 1);
      h.unknown(1, incr(), 2, 3);
      h.ok(2, incr(), 4, 5, final);
      expect(checkLinearizability(h.ops).ok, `final INCR ${final}`).toBe(ok);
    }
    const d = new Hand();
    d.ok(1, set("1"), 0, 1, "OK");
    d.unknown(1, del(), 2, 3);
    d.ok(2, get(), 4, 5, null);
    d.pending(3, set("3"), 6);
    d.ok(2, get(), 7, 8, "3");
    d.unknown(2, get(), 9, 10); // an unknown read tells nothing
    expectLinearizable(d.ops);
  });

  it("many unknown writes whose effects are masked stay cheap", () => {
    // 200 unknown SETs, each overwritten before any read: a search that tried each subset
    // of them would never end; the memo merges "no effect" with "overwritten".
    const h = new Hand();
    let timeMs = 0;
    for (let round = 0; round < 200; round++) {
      h.unknown(1, set(`u${round}`), timeMs, timeMs + 1);
      h.ok(2, set(`k${round}`), timeMs + 2, timeMs + 3, "OK");
      h.ok(2, get(), timeMs + 4, timeMs + 5, `k${round}`);
      timeMs += 10;
    }
    const result = checkLinearizability(h.ops, { stepsMax: 1_000_000 });
    expect(result.ok, JSON.stringify(result)).toBe(true);
  });
});

describe("bounds", () => {
  it("a search past its step budget answers unknown, not a verdict", () => {
    const h = new Hand();
    for (let client = 0; client < 8; client++) h.ok(client, incr(), 0, 10, 8 - client);
    const result = checkLinearizability(h.ops, { stepsMax: 5 });
    expect(result.ok).toBe("unknown");
    if (result.ok === "unknown") expect(result.reason).toMatch(/more than 5 search steps/);
    expect(checkLinearizability(h.ops).ok).toBe(true);
  });
});

describe("History", () => {
  it("records invocations and outcomes with the injected clock, and round-trips through JSON", () => {
    let nowMs = 0;
    const history = new History({ now: () => nowMs });
    const a = history.invoke(1, set("1"));
    nowMs = 2;
    const b = history.invoke(2, get());
    nowMs = 3;
    a.ok("OK");
    const c = history.invoke(1, incr());
    nowMs = 5;
    b.ok("1");
    c.unknown("connection reset");
    const d = history.invoke(1, incr());
    d.fail("ERR value is not an integer or out of range");
    history.invoke(3, del()); // still in flight
    expect(history.operations.map((operation) => [operation.index, operation.invokeMs, operation.outcome?.type ?? null])).toEqual([
      [0, 0, "ok"],
      [1, 2, "ok"],
      [2, 3, "unknown"],
      [3, 5, "fail"],
      [4, 5, null],
    ]);
    expect(history.operations[1]!.outcome).toEqual({ type: "ok", result: "1", returnMs: 5 });
    const loaded = parseHistoryJson(JSON.stringify(history));
    expect(loaded).toEqual(history.operations);
    expect(checkLinearizability(loaded).ok).toBe(true);
  });

  it("refuses misuse: a client with two operations in flight, completing twice, a mistyped result", () => {
    const history = new History({ now: () => 0 });
    const a = history.invoke(1, get());
    expect(() => history.invoke(1, get())).toThrow(/in flight/);
    a.ok(null);
    expect(() => a.ok(null)).toThrow(/completed twice/);
    const b = history.invoke(1, incr());
    expect(() => b.ok("1" as unknown as number)).toThrow(/incr returns an integer/);
  });

  it("is bounded, with a clear error", () => {
    const history = new History({ now: () => 0, operationsMax: 3 });
    for (let index = 0; index < 3; index++) history.invoke(index, get()).ok(null);
    expect(() => history.invoke(9, get())).toThrow(/more than 3 operations/);
  });

  it("a dumped history that is not one is rejected with the reason", () => {
    expect(() => parseHistoryJson(JSON.stringify({ operations: [{ index: 0 }] }))).toThrow(/history file: operations\.0/);
    const bad = { operations: [{ index: 0, clientId: 1, op: get(), invokeMs: 0, outcome: { type: "ok", result: 3, returnMs: 1 } }] };
    expect(() => parseHistoryJson(JSON.stringify(bad))).toThrow(/get returns a string or null/);
  });
});

describe("counters: the final value counts every acknowledged INCR", () => {
  function counter(final: string | null): Hand {
    const h = new Hand();
    for (let client = 0; client < 5; client++) h.ok(client, incr("c"), client, 20, client + 1);
    h.unknown(5, incr("c"), 0, 20);
    h.unknown(6, incr("c"), 0, 20);
    h.fail(7, incr("c"), 0, 20);
    h.ok(0, get("c"), 30, 31, final);
    return h;
  }

  it("acknowledged plus a subset of the unknown ones passes", () => {
    for (const final of ["5", "6", "7"]) {
      const result = checkCounters(counter(final).ops);
      expect(result.ok, JSON.stringify(result)).toBe(true);
      expect(result.counters).toEqual([{ key: "c", acknowledged: 5, unknown: 2, failed: 1, low: 5, high: 7, final: Number(final) }]);
    }
  });

  it("lost increments, and too many, are named with their counts", () => {
    const lost = checkCounters(counter("4").ops);
    expect(lost.ok).toBe(false);
    if (lost.ok === false) {
      expect(lost.key).toBe("c");
      expect(lost.explanation).toMatch(/acknowledged increments were lost: the value is 1 short/);
      expect(lost.explanation).toMatch(/5 INCRs were acknowledged, 2 had an unknown outcome and 1 failed/);
      console.log(`lost increments, as the counter check explains them:\n${lost.explanation}`);
    }
    const extra = checkCounters(counter("9").ops);
    expect(extra.ok === false && extra.explanation).toMatch(/went 2 past/);
    const missing = checkCounters(counter(null).ops);
    expect(missing.ok === false && missing.explanation).toMatch(/short/);
  });

  it("a key without a final read, or that is also SET, is not a counter to check", () => {
    const h = new Hand();
    h.ok(1, incr("c"), 0, 1, 1);
    h.ok(2, get("c"), 0, 1, null); // concurrent with the INCR: not a final read
    h.ok(1, incr("s"), 0, 1, 1);
    h.ok(1, set("9", "s"), 2, 3, "OK");
    const result = checkCounters(h.ops);
    expect(result).toEqual({ ok: true, counters: [{ key: "c", acknowledged: 1, unknown: 0, failed: 0, low: 1, high: 1, final: null }] });
  });
});

// ---- a brute-force reference ----

/** The kv model, written again as plainly as possible: the state after `op`, or undefined. */
function referenceStep(state: string | null, op: Op, known: boolean, result: string | number | null): string | null | undefined {
  switch (op.f) {
    case "get":
      return result === state ? state : undefined;
    case "set":
      return op.value;
    case "del":
      return !known || result === (state === null ? 0 : 1) ? null : undefined;
    case "incr": {
      const text = state ?? "0";
      if (!/^-?(0|[1-9][0-9]*)$/.test(text)) return undefined;
      const next = String(BigInt(text) + BigInt(op.delta ?? 1));
      return !known || Number(next) === result ? next : undefined;
    }
  }
}

/** Every order of every subset of the unknown writes, with every acknowledged operation. */
function bruteForceLinearizable(ops: readonly Operation[]): boolean {
  const candidates = ops.filter(
    (o) => o.outcome?.type === "ok" || (o.outcome?.type !== "fail" && o.op.f !== "get"),
  );
  const returnMs = (o: Operation): number => (o.outcome?.type === "ok" ? o.outcome.returnMs : Infinity);
  const used = new Set<Operation>();
  const place = (state: string | null): boolean => {
    const pending = candidates.filter((o) => !used.has(o));
    if (!pending.some((o) => o.outcome?.type === "ok")) return true;
    for (const o of pending) {
      // o may go next only if nothing still pending returned before it was invoked.
      if (pending.some((other) => returnMs(other) < o.invokeMs)) continue;
      const known = o.outcome?.type === "ok";
      const after = referenceStep(state, o.op, known, known ? (o.outcome as { result: string | number | null }).result : null);
      if (after === undefined) continue;
      used.add(o);
      const found = place(after);
      used.delete(o);
      if (found) return true;
    }
    return false;
  };
  return place(null);
}

/** The acknowledged operation whose return ends the shortest prefix that fails, by brute force. */
function bruteForceFailing(ops: readonly Operation[]): Operation | null {
  const returns = ops
    .filter((o) => o.outcome?.type === "ok")
    .sort((a, b) => a.outcome!.returnMs - b.outcome!.returnMs || a.index - b.index);
  for (const cut of returns) {
    const cutMs = cut.outcome!.returnMs;
    const prefix = ops
      .filter((o) => o.invokeMs <= cutMs)
      .map((o) => {
        const returned = o.outcome !== null && (o.outcome.returnMs < cutMs || (o.outcome.returnMs === cutMs && o.index <= cut.index));
        return o.outcome?.type === "ok" && !returned ? { ...o, outcome: null } : o;
      });
    if (!bruteForceLinearizable(prefix)) return cut;
  }
  return null;
}

/**
 * A small random history on one key, on a coarse clock so that times often touch: simulated
 * (each operation takes effect at an instant within its interval) and then, half the time, one
 * result perturbed. "counter" only INCRs by positive deltas and reads.
 */
function smallHistory(prng: Prng, kind: "register" | "counter"): Operation[] {
  const clientFreeMs = [0, 0, 0];
  const count = 3 + prng.below(6);
  type Planned = { client: number; op: Op; invokeMs: number; atMs: number; returnMs: number; roll: number };
  const plan: Planned[] = [];
  for (let n = 0; n < count; n++) {
    const client = prng.below(3);
    const invokeMs = clientFreeMs[client]! + prng.below(3);
    const returnMs = invokeMs + prng.below(4);
    clientFreeMs[client] = returnMs + 1;
    const atMs = invokeMs + prng.below(returnMs - invokeMs + 1) + prng.below(1000) / 1000;
    const roll = prng.below(10);
    let op: Op;
    if (kind === "counter") op = roll < 4 ? get() : incr("x", prng.pick([1, 1, 2]));
    else op = roll < 3 ? get() : roll < 6 ? set(prng.pick(["1", "2", "a"])) : roll < 9 ? incr("x", prng.pick([1, 1, 2, -1])) : del();
    plan.push({ client, op, invokeMs, atMs, returnMs, roll: prng.below(20) });
  }
  // roll 0: failed (no effect); 1-3: unknown, took effect if odd; otherwise acknowledged.
  const results = new Map<Planned, string | number | null | undefined>();
  let state: string | null = null;
  for (const p of [...plan].sort((a, b) => a.atMs - b.atMs)) {
    if (p.roll === 0 || p.roll === 2) continue;
    const after = referenceStep(state, p.op, false, null);
    if (after === undefined) {
      results.set(p, undefined); // an INCR on a non-integer: the guest replies an error
      continue;
    }
    results.set(p, p.op.f === "get" ? state : p.op.f === "set" ? "OK" : p.op.f === "del" ? (state === null ? 0 : 1) : Number(after));
    state = after;
  }
  plan.sort((a, b) => a.invokeMs - b.invokeMs);
  const h = new Hand();
  for (const p of plan) {
    const result = results.get(p);
    if (p.roll === 0 || (p.roll > 3 && result === undefined)) h.fail(p.client, p.op, p.invokeMs, p.returnMs);
    else if (p.roll <= 3) h.unknown(p.client, p.op, p.invokeMs, p.returnMs);
    else h.ok(p.client, p.op, p.invokeMs, p.returnMs, result!);
  }
  if (prng.chance(0.5)) {
    const acked = h.ops.filter((o) => o.outcome?.type === "ok" && o.op.f !== "set");
    const victim = acked.length > 0 ? prng.pick(acked) : undefined;
    if (victim !== undefined) {
      const outcome = victim.outcome as { result: string | number | null };
      if (victim.op.f === "get") outcome.result = prng.pick([null, "1", "2", "3", "a"]);
      else if (victim.op.f === "del") outcome.result = 1 - (outcome.result as number);
      else outcome.result = (outcome.result as number) + prng.pick([-2, -1, 1]);
    }
  }
  return h.ops;
}

describe("agrees with a brute-force search", () => {
  it.each(["register", "counter"] as const)(`on 3000 small random %s histories: verdict and shortest failing prefix (seed=${SEED})`, (kind) => {
    const prng = new Prng(SEED);
    let linearizable = 0;
    for (let n = 0; n < 3000; n++) {
      const ops = smallHistory(prng, kind);
      const expected = bruteForceFailing(ops);
      const result = checkLinearizability(ops);
      const context = `seed=${SEED} history ${n}:\n${ops.map(describeOperation).join("\n")}`;
      expect(result.ok, context).toBe(expected === null);
      if (result.ok === false) expect(result.failing.index, `${context}\n${result.explanation}`).toBe(expected!.index);
      if (result.ok === true) linearizable++;
    }
    console.log(`seed=${SEED}: ${linearizable} of 3000 small random ${kind} histories linearizable`);
    expect(linearizable).toBeGreaterThan(1000); // both verdicts are exercised
    expect(linearizable).toBeLessThan(2500);
  });
});

// ---- a simulated linearizable store ----

interface SimOptions {
  operations: number;
  keys: number;
  clients: number;
  /** Chance an operation's outcome is unknown to its client (it took effect or not, 50/50). */
  unknownChance: number;
  /** Operation mix, cumulative: below get, below set, below incr, else del. */
  mix?: [number, number, number];
  /** Chance an INCR is an INCRBY/DECRBY of -10..10 instead. */
  incrbyChance?: number;
}

/**
 * Clients that each run one operation at a time against a map that applies every operation
 * atomically at a random instant between its invocation and its return: linearizable by
 * construction. Recorded through History, with its clock injected.
 */
function simulate(seed: number, options: SimOptions): { ops: Operation[]; store: Map<string, string> } {
  const prng = new Prng(seed);
  const [getBelow, setBelow, incrBelow] = options.mix ?? [0.45, 0.65, 0.9];
  const incrbyChance = options.incrbyChance ?? 0.2;
  type Planned = { clientId: number; op: Op; invokeMs: number; atMs: number; returnMs: number; unknown: boolean; happens: boolean };
  const planned: Planned[] = [];
  const perClient = Math.ceil(options.operations / options.clients);
  for (let clientId = 0; clientId < options.clients; clientId++) {
    let timeMs = prng.below(1000) / 1000;
    for (let count = 0; count < perClient && planned.length < options.operations; count++) {
      const key = `k${prng.below(options.keys)}`;
      const roll = prng.u32() / 2 ** 32;
      let op: Op;
      if (roll < getBelow) op = { f: "get", key };
      else if (roll < setBelow) op = { f: "set", key, value: prng.chance(0.8) ? String(prng.below(100)) : `v${prng.below(1000)}` };
      else if (roll < incrBelow) op = prng.chance(incrbyChance) ? { f: "incr", key, delta: prng.below(21) - 10 } : { f: "incr", key };
      else op = { f: "del", key };
      const invokeMs = timeMs;
      const atMs = invokeMs + 0.001 + prng.below(2000) / 1000;
      const returnMs = atMs + 0.001 + prng.below(2000) / 1000;
      const unknown = prng.chance(options.unknownChance);
      planned.push({ clientId, op, invokeMs, atMs, returnMs, unknown, happens: !unknown || prng.chance(0.5) });
      timeMs = returnMs + 0.001 + prng.below(1000) / 1000;
    }
  }

  // Apply in the order of the instants of effect.
  const store = new Map<string, string>();
  const results = new Map<Planned, { ok: true; result: string | number | null } | { ok: false }>();
  for (const p of [...planned].sort((a, b) => a.atMs - b.atMs)) {
    if (!p.happens) continue;
    const old = store.get(p.op.key) ?? null;
    if (p.op.f === "get") results.set(p, { ok: true, result: old });
    else if (p.op.f === "set") {
      store.set(p.op.key, p.op.value);
      results.set(p, { ok: true, result: "OK" });
    } else if (p.op.f === "del") {
      store.delete(p.op.key);
      results.set(p, { ok: true, result: old === null ? 0 : 1 });
    } else {
      const current = old === null ? 0 : /^-?(0|[1-9][0-9]*)$/.test(old) ? Number(old) : null;
      if (current === null) results.set(p, { ok: false }); // ERR value is not an integer: no effect
      else {
        const next = current + (p.op.delta ?? 1);
        store.set(p.op.key, String(next));
        results.set(p, { ok: true, result: next });
      }
    }
  }

  // Replay invocations and completions in time order through History.
  type Event = { timeMs: number; invoke: boolean; p: Planned };
  const events: Event[] = planned.flatMap((p) => [
    { timeMs: p.invokeMs, invoke: true, p },
    { timeMs: p.returnMs, invoke: false, p },
  ]);
  events.sort((a, b) => a.timeMs - b.timeMs || Number(a.invoke) - Number(b.invoke));
  let nowMs = 0;
  const history = new History({ now: () => nowMs });
  const handles = new Map<Planned, ReturnType<History["invoke"]>>();
  for (const event of events) {
    nowMs = event.timeMs;
    const p = event.p;
    if (event.invoke) {
      handles.set(p, history.invoke(p.clientId, p.op));
      continue;
    }
    const handle = handles.get(p)!;
    const result = results.get(p);
    if (p.unknown) handle.unknown("connection reset");
    else if (result?.ok === true) handle.ok(result.result as never);
    else handle.fail("ERR value is not an integer or out of range");
  }
  return { ops: [...history.operations], store };
}

describe("a long random history from a simulated linearizable store", () => {
  const options: SimOptions = { operations: 10_000, keys: 50, clients: 8, unknownChance: 0.02 };

  it(`passes, and fails once one read is corrupted (seed=${SEED})`, () => {
    console.log(`seed=${SEED} (rerun with LOCKSTEP_SEED=${SEED})`);
    const { ops } = simulate(SEED, options);
    expect(ops.length).toBe(options.operations);
    const startedMs = performance.now();
    const result = checkLinearizability(ops);
    const elapsedMs = performance.now() - startedMs;
    expect(result.ok, `seed=${SEED}: ${result.ok === false ? result.explanation : JSON.stringify(result)}`).toBe(true);
    const steps = result.ok === true ? result.steps : 0;
    console.log(
      `seed=${SEED}: ${ops.length} operations over ${options.keys} keys, ${options.clients} clients: linearizable, ` +
        `${elapsedMs.toFixed(0)} ms (${Math.round(ops.length / (elapsedMs / 1000))} ops/s, ${steps} steps)`,
    );

    // One read in the middle returns a value nobody wrote.
    const prng = new Prng(SEED ^ 0x5eed);
    const reads = ops.filter((operation) => operation.op.f === "get" && operation.outcome?.type === "ok");
    const victim = reads[Math.floor(reads.length / 4) + prng.below(Math.floor(reads.length / 2))]!;
    const corrupted = ops.map((operation) =>
      operation === victim ? { ...operation, outcome: { ...operation.outcome!, result: "corrupted" } as Outcome } : operation,
    );
    const startedBadMs = performance.now();
    const bad = checkLinearizability(corrupted);
    console.log(`seed=${SEED}: corrupted read #${victim.index} found in ${(performance.now() - startedBadMs).toFixed(0)} ms`);
    expect(bad.ok, `seed=${SEED}`).toBe(false);
    if (bad.ok === false) {
      expect(bad.key, `seed=${SEED}`).toBe(victim.op.key);
      expect(bad.failing.index, `seed=${SEED}\n${bad.explanation}`).toBe(victim.index);
    }
  });

  it(`a stale read in a random history is caught (seed=${SEED})`, () => {
    // A read that returns the value of a SET that was overwritten before the read began:
    // subtler than a value nobody wrote.
    const { ops } = simulate(SEED + 1, { ...options, operations: 4000, unknownChance: 0 });
    const acked = ops.filter((operation) => operation.outcome?.type === "ok");
    const candidates: { read: Operation; stale: string }[] = [];
    for (const read of acked) {
      if (read.op.f !== "get" || read.outcome?.type !== "ok") continue;
      const writes = acked.filter((operation) => operation.op.key === read.op.key && operation.op.f !== "get");
      if (writes.some((w) => w.invokeMs <= read.outcome!.returnMs && w.outcome!.returnMs >= read.invokeMs)) continue;
      const settled = writes.filter((w) => w.outcome!.returnMs < read.invokeMs);
      const [older, newer] = settled.slice(-2);
      if (older === undefined || newer === undefined || older.op.f !== "set") continue;
      if (older.outcome!.returnMs >= newer.invokeMs) continue; // the overwrite surely came after
      // Only that SET ever wrote this value, and no INCR can produce it.
      const value = older.op.value;
      if (/^-?[0-9]+$/.test(value) || writes.some((w) => w !== older && w.op.f === "set" && w.op.value === value)) continue;
      if (value === read.outcome.result) continue;
      candidates.push({ read, stale: value });
    }
    expect(candidates.length, `seed=${SEED}: no stale-read candidate`).toBeGreaterThan(0);
    const { read, stale } = candidates[Math.floor(candidates.length / 2)]!;
    const corrupted = ops.map((operation) =>
      operation === read ? { ...operation, outcome: { ...operation.outcome!, result: stale } as Outcome } : operation,
    );
    const bad = checkLinearizability(corrupted);
    expect(bad.ok, `seed=${SEED}`).toBe(false);
    if (bad.ok === false) expect(bad.failing.index, `seed=${SEED}\n${bad.explanation}`).toBe(read.index);
  });

  it(`one hot counter: 4000 INCRs from 8 clients, some with unknown outcomes (seed=${SEED})`, () => {
    const { ops, store } = simulate(SEED + 2, {
      operations: 4000,
      keys: 1,
      clients: 8,
      unknownChance: 0.05,
      mix: [0, 0, 1],
      incrbyChance: 0,
    });
    const inFlight: Operation = { index: ops.length, clientId: 99, op: { f: "get", key: "k0" }, invokeMs: 1e9, outcome: null };
    ops.push(inFlight);
    expect(checkCounters(ops).counters[0]?.final, "a final read still in flight checks nothing").toBe(null);
    const finalRead = (value: string | null): Operation[] => [
      ...ops.slice(0, -1),
      { ...inFlight, outcome: { type: "ok", result: value, returnMs: 1e9 + 1 } },
    ];

    // The value the store ended with passes both checks.
    const truth = finalRead(store.get("k0") ?? null);
    const counters = checkCounters(truth);
    expect(counters.ok, `seed=${SEED}: ${counters.ok === false ? counters.explanation : ""}`).toBe(true);
    const { acknowledged, unknown, low, high } = counters.counters[0]!;
    expect(acknowledged + unknown).toBe(4000);
    const startedMs = performance.now();
    const result = checkLinearizability(truth);
    expect(result.ok, `seed=${SEED}: ${result.ok === false ? result.explanation : JSON.stringify(result)}`).toBe(true);
    console.log(`seed=${SEED}: hot counter of 4000 INCRs (${unknown} unknown) linearizable in ${(performance.now() - startedMs).toFixed(0)} ms`);

    // One short or one over the possible range fails both.
    for (const final of [low - 1, high + 1]) {
      const wrong = finalRead(String(final));
      expect(checkCounters(wrong).ok, `seed=${SEED}: final ${final}`).toBe(false);
      expect(checkLinearizability(wrong).ok, `seed=${SEED}: final ${final}`).toBe(false);
    }
  });
});
