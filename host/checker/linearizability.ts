// A linearizability checker for histories of the kv guest (docs/checker.md).
//
// The search is Wing & Gong's (1993), with the improvements of Lowe (2017) as Porcupine
// implements them:
//   - P-compositionality: a history is linearizable iff its restriction to every key is, and
//     every supported operation touches one key, so each key is searched on its own;
//   - the history is a doubly linked list of call and return events in time order; the search
//     linearizes a call (removes it and its return from the list, "lift") whenever the model
//     accepts it, and backtracks when it meets the return of an operation it has not
//     linearized: that operation would then take effect after it returned;
//   - memoization: a configuration is (the set of linearized operations, the model state); one
//     seen before was searched completely and failed, so it is not searched again.
//
// An operation with an unknown outcome has no return event (it returns at +infinity): it may
// take effect at any point after its invocation, or never (it is simply never linearized).
// Left as is, each such write multiplies the configurations a failing search must go through,
// so four reductions keep them cheap; each drops only linearizations that have an equivalent
// one the search still tries, and a brute-force comparison in the tests checks that:
//   - unknown writes no acknowledged operation could observe are left out (searchedOperations);
//   - an unknown write is never followed by a blind write, which would hide it (mustObserve);
//   - interchangeable unknown writes take effect in invocation order (samePrevious);
//   - dominance in the memo: with fewer unknown writes linearized, a configuration can do more.
// And on a key that is a counter (INCRs by positive deltas, and reads), a configuration whose
// value is already past what a pending acknowledged operation needs is dropped (GrowingCounter).
// A read with an unknown outcome tells nothing and is left out; so is an operation that
// certainly failed.
//
// On a violation, a bisection over prefixes of the key's history finds the shortest one that
// cannot be linearized: that is what the explanation shows.
//
// The search is bounded by a step budget and a memo size: past either the answer is "unknown".

import { assert } from "../errors.js";
import { assertResult, type Op, type Operation } from "./history.js";

/** The value of one key: null when absent. */
export type State = string | null;

export const CHECK_STEPS_MAX = 50_000_000;
/** A rough count of what the memo holds (bitsets, entries, interned states). */
export const CHECK_CACHE_BYTES_MAX = 512 * 1024 * 1024;
/** Lines of operations an explanation shows at most; earlier ones are summarized. */
const EXPLANATION_OPS_MAX = 40;
const EXPLANATION_VALUE_CHARS_MAX = 40;

export interface CheckOptions {
  /** Search steps over all keys (one step: one event visited). Default CHECK_STEPS_MAX. */
  stepsMax?: number;
  /** Memo bound per key, in bytes (estimated). Default CHECK_CACHE_BYTES_MAX. */
  cacheBytesMax?: number;
  /** The value of each key before the history began. Default: every key absent. */
  initialValue?: (key: string) => State;
}

export type LinearizabilityResult =
  | { ok: true; keys: number; operations: number; steps: number }
  | {
      ok: false;
      key: string;
      /** For a human: the shortest prefix of the key's history that cannot be linearized. */
      explanation: string;
      /** The acknowledged operation whose return ends that prefix. */
      failing: Operation;
      /** The key's operations invoked up to `failing`'s return, in invocation order. */
      prefix: Operation[];
      /** A linearization of the prefix that ends just before `failing`'s return. */
      linearization: Operation[];
    }
  | { ok: "unknown"; key: string; reason: string };

// ---- the sequential model of one key ----

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
/** The guest's integer syntax (resp.ts parseI64): optional "-", no "+", no leading zeros. */
const INTEGER = /^-?(0|[1-9][0-9]*)$/;

/** The value as the guest's INCR reads it, or null if INCR would reply an error. */
export function parseKvInteger(text: string): bigint | null {
  if (text.length === 0 || text.length > 20 || !INTEGER.test(text)) return null;
  const value = BigInt(text);
  return value < I64_MIN || value > I64_MAX ? null : value;
}

/** The value INCRBY `delta` leaves, or null if the guest would reply an error and change nothing. */
export function incremented(state: State, delta: number): string | null {
  const text = state ?? "0"; // INCR on a missing key counts from "0"
  // Fast path: short values are exact in a double, and so is their sum with a safe delta.
  if (text.length <= 15) {
    if (!INTEGER.test(text)) return null;
    const next = Number(text) + delta;
    if (Number.isSafeInteger(next)) return String(next);
  }
  const current = parseKvInteger(text);
  if (current === null) return null;
  const next = current + BigInt(delta);
  return next < I64_MIN || next > I64_MAX ? null : next.toString();
}

const GET = 0;
const SET = 1;
const INCR = 2;
const DEL = 3;
const KIND = { get: GET, set: SET, incr: INCR, del: DEL } as const;

/** One key's operations, compiled into arrays for the search's inner loop. */
class KeyOps {
  readonly kind: Uint8Array;
  /** Acknowledged: must be linearized, with its result. Otherwise unknown: may have no effect. */
  readonly known: Uint8Array;
  /** SET's value, INCR's delta, the known result of GET, INCR, DEL. */
  readonly value: (string | null)[];
  readonly delta: Float64Array;
  readonly result: (string | number | null)[];

  constructor(readonly ops: readonly Operation[]) {
    const n = ops.length;
    this.kind = new Uint8Array(n);
    this.known = new Uint8Array(n);
    this.value = new Array<string | null>(n).fill(null);
    this.delta = new Float64Array(n);
    this.result = new Array<string | number | null>(n).fill(null);
    for (const [i, operation] of ops.entries()) {
      const op: Op = operation.op;
      this.kind[i] = KIND[op.f];
      if (op.f === "set") this.value[i] = op.value;
      if (op.f === "incr") this.delta[i] = op.delta ?? 1;
      if (operation.outcome?.type === "ok") {
        this.known[i] = 1;
        this.result[i] = operation.outcome.result;
      }
    }
  }

  /** Whether operation i writes without looking: whatever it follows, nothing can tell. */
  blind(i: number): boolean {
    return this.kind[i] === SET || (this.kind[i] === DEL && this.known[i] === 0);
  }

  /** Operations with the same signature have the same effect on every state. */
  signature(i: number): string {
    const kind = this.kind[i]!;
    return kind === SET ? `set:${this.value[i]}` : kind === INCR ? `incr:${this.delta[i]}` : `kind:${kind}`;
  }

  /** The state after operation i takes effect in `state`, or undefined if the model forbids it. */
  effect(i: number, state: State): State | undefined {
    const known = this.known[i] === 1;
    switch (this.kind[i]) {
      case GET:
        assert(known, "reads with unknown outcome are left out of the search");
        return this.result[i] === state ? state : undefined;
      case SET:
        return this.value[i]!;
      case DEL:
        if (!known) return null;
        return (this.result[i] === 1) === (state !== null) ? null : undefined;
      default: {
        const next = incremented(state, this.delta[i]!);
        if (next === null) return undefined; // an acknowledged INCR had an integer to add to
        // Compare as the client parsed the reply: a double.
        return !known || Number(next) === this.result[i] ? next : undefined;
      }
    }
  }
}

/**
 * A key only ever INCRed by positive deltas (and read) only grows: an acknowledged operation
 * that needs a smaller value than the current one can never be linearized, so neither can the
 * configuration. Without this, a failing history of a hot counter is searched through every
 * way its unknown INCRs could stand in for acknowledged ones before the search gives up.
 */
class GrowingCounter {
  /** Acknowledged operations by the value they need to find (INCR: result − delta; GET: result). */
  private readonly order: Int32Array;
  private readonly needs: Float64Array;
  private readonly rank: Int32Array;
  /** The first operation in `order` not linearized. */
  private lowest = 0;

  static detect(model: KeyOps, initial: State): GrowingCounter | null {
    if (initial !== null && !isSafeIntegerText(initial)) return null;
    // Every value the search can reach must compare exactly as a double.
    let reach = Math.abs(Number(initial ?? "0"));
    for (let i = 0; i < model.ops.length; i++) {
      if (model.kind[i] === INCR && model.delta[i]! >= 1) {
        if (model.known[i] === 1 && !Number.isSafeInteger(model.result[i])) return null;
        reach += model.delta[i]!;
      } else if (model.kind[i] !== GET) return null;
    }
    return Number.isSafeInteger(reach) ? new GrowingCounter(model) : null;
  }

  private constructor(model: KeyOps) {
    const known = Array.from({ length: model.ops.length }, (_, i) => i).filter((i) => model.known[i] === 1);
    const need = (i: number): number => {
      if (model.kind[i] === INCR) return (model.result[i] as number) - model.delta[i]!;
      const result = model.result[i] as State;
      // An impossible read is left to the search: it is a violation, not a bound.
      return result === null ? GrowingCounter.level(null) : isSafeIntegerText(result) ? Number(result) : Infinity;
    };
    known.sort((a, b) => need(a) - need(b));
    this.order = Int32Array.from(known);
    this.needs = Float64Array.from(known, need);
    this.rank = new Int32Array(model.ops.length).fill(-1);
    known.forEach((i, at) => (this.rank[i] = at));
  }

  /** Absent sorts below "0", which INCR reads it as, and above nothing it could follow. */
  static level(state: State): number {
    return state === null ? -0.5 : Number(state);
  }

  /** Whether `state` is past what some acknowledged operation not yet linearized needs. */
  doomed(state: State): boolean {
    return this.lowest < this.order.length && GrowingCounter.level(state) > this.needs[this.lowest]!;
  }

  /** Keeps `lowest` after operation i was linearized or undone (the search's order is LIFO). */
  changed(i: number, isLinearized: (i: number) => boolean): void {
    const at = this.rank[i]!;
    if (at < 0) return;
    if (!isLinearized(i)) this.lowest = Math.min(this.lowest, at);
    else if (at === this.lowest) {
      while (this.lowest < this.order.length && isLinearized(this.order[this.lowest]!)) this.lowest++;
    }
  }
}

function isSafeIntegerText(text: string): boolean {
  return INTEGER.test(text) && Number.isSafeInteger(Number(text));
}

// ---- the search over one key ----

type SearchOutcome =
  /** A linearization: every acknowledged operation, and the unknown ones that took effect. */
  | { type: "ok"; steps: number; linearization: Operation[]; state: State }
  /** `furthest`: the operation whose return the search got to last, at best. */
  | { type: "fail"; steps: number; furthest: Operation }
  | { type: "limit"; steps: number; reason: string };

/** A 32-bit hash per operation; a set's hash is the xor of its members' (Zobrist hashing). */
function operationHash(i: number): number {
  let h = Math.imul(i + 0x7f4a7c15, 0x9e3779b1);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) | 0;
}

interface Configuration {
  known: Uint32Array;
  unknown: Uint32Array;
  stateId: number;
}

/**
 * Configurations searched, or being searched: (acknowledged operations linearized, unknown
 * ones linearized, state). One dominates another with the same acknowledged set and state
 * if it linearized a subset of the other's unknown operations: it can still do all the other
 * can, by never linearizing the rest. A dominated configuration is not searched.
 */
class Memo {
  private readonly buckets = new Map<number, Configuration[]>();
  /** States numbered, separately for configurations that must observe next (see searchKey). */
  private readonly stateIds = [new Map<State, number>(), new Map<State, number>()] as const;
  private stateCount = 0;
  bytes = 0;

  /** Adds the configuration; false if it or one that dominates it was there already. */
  add(known: Uint32Array, knownHash: number, unknown: Uint32Array, state: State, mustObserve: boolean): boolean {
    const ids = this.stateIds[mustObserve ? 1 : 0];
    let stateId = ids.get(state);
    if (stateId === undefined) {
      stateId = this.stateCount++;
      ids.set(state, stateId);
      this.bytes += 64 + 2 * (state?.length ?? 0);
    }
    const hash = (knownHash ^ Math.imul(stateId + 1, 0x9e3779b1)) | 0;
    let bucket = this.buckets.get(hash);
    if (bucket === undefined) {
      bucket = [];
      this.buckets.set(hash, bucket);
    }
    let dominated = 0; // stored configurations the new one dominates: dropped
    for (const seen of bucket) {
      if (seen.stateId !== stateId || !equalBits(seen.known, known)) continue;
      if (subsetBits(seen.unknown, unknown)) return false;
      if (subsetBits(unknown, seen.unknown)) dominated++;
    }
    const entryBytes = 96 + 4 * (known.length + unknown.length);
    if (dominated > 0) {
      const kept = bucket.filter(
        (seen) => !(seen.stateId === stateId && equalBits(seen.known, known) && subsetBits(unknown, seen.unknown)),
      );
      this.bytes -= entryBytes * (bucket.length - kept.length);
      bucket.length = 0;
      bucket.push(...kept);
    }
    bucket.push({ known: known.slice(), unknown: unknown.slice(), stateId });
    this.bytes += entryBytes;
    return true;
  }
}

function equalBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let w = 0; w < a.length; w++) if (a[w] !== b[w]) return false;
  return true;
}

function subsetBits(a: Uint32Array, b: Uint32Array): boolean {
  for (let w = 0; w < a.length; w++) if ((a[w]! & ~b[w]!) !== 0) return false;
  return true;
}

function search(model: KeyOps, initial: State, stepsMax: number, cacheBytesMax: number): SearchOutcome {
  const n = model.ops.length;
  // Nodes: 0 is the head, 1 + 2i the call of operation i, 2 + 2i its return, 2n + 1 the tail.
  // An operation with an unknown outcome has no return node: it returns at +infinity.
  const HEAD = 0;
  const TAIL = 2 * n + 1;
  const next = new Int32Array(2 * n + 2);
  const prev = new Int32Array(2 * n + 2);
  /** Position of a node in time order: how far into the history the search got. */
  const position = new Int32Array(2 * n + 2);
  const events: { node: number; timeMs: number; isReturn: boolean; index: number }[] = [];
  // Acknowledged and unknown operations each number their own bitset.
  const slot = new Int32Array(n);
  let knownCount = 0;
  let unknownCount = 0;
  for (let i = 0; i < n; i++) {
    const operation = model.ops[i]!;
    events.push({ node: 1 + 2 * i, timeMs: operation.invokeMs, isReturn: false, index: operation.index });
    if (model.known[i] === 1) {
      events.push({ node: 2 + 2 * i, timeMs: operation.outcome!.returnMs, isReturn: true, index: operation.index });
      slot[i] = knownCount++;
    } else slot[i] = unknownCount++;
  }
  // Equal times: calls first, so that operations whose times touch count as concurrent.
  events.sort((a, b) => a.timeMs - b.timeMs || Number(a.isReturn) - Number(b.isReturn) || a.index - b.index);
  let last = HEAD;
  for (const [at, event] of events.entries()) {
    next[last] = event.node;
    prev[event.node] = last;
    position[event.node] = at;
    last = event.node;
  }
  next[last] = TAIL;
  prev[TAIL] = last;

  // Symmetry: unknown operations with the same effect (INCR by the same delta, SET of the same
  // value, DEL) are interchangeable, and the earlier-invoked one can take effect wherever the
  // later one could. So they are linearized in invocation order only: without that, a hot
  // counter with k unknown INCRs would be searched in every one of their 2^k subsets.
  const samePrevious = new Int32Array(n).fill(-1);
  const lastOfKind = new Map<string, number>();
  for (const event of events) {
    const i = (event.node - 1) >>> 1;
    if (event.isReturn || model.known[i] === 1) continue;
    const signature = model.signature(i);
    samePrevious[i] = lastOfKind.get(signature) ?? -1;
    lastOfKind.set(signature, i);
  }

  const remove = (node: number): void => {
    next[prev[node]!] = next[node]!;
    prev[next[node]!] = prev[node]!;
  };
  // Dancing links: a removed node keeps its neighbours, so undoing in reverse order restores it.
  const restore = (node: number): void => {
    prev[next[node]!] = node;
    next[prev[node]!] = node;
  };
  const lift = (i: number): void => {
    remove(1 + 2 * i);
    if (model.known[i] === 1) remove(2 + 2 * i);
  };
  const unlift = (i: number): void => {
    if (model.known[i] === 1) restore(2 + 2 * i);
    restore(1 + 2 * i);
  };

  const knownBits = new Uint32Array(Math.ceil(knownCount / 32));
  const unknownBits = new Uint32Array(Math.ceil(unknownCount / 32));
  let knownHash = 0;
  const toggle = (i: number): void => {
    const s = slot[i]!;
    if (model.known[i] === 1) {
      knownBits[s >>> 5]! ^= 1 << (s & 31);
      knownHash ^= operationHash(s);
    } else unknownBits[s >>> 5]! ^= 1 << (s & 31);
  };
  const isLinearized = (i: number): boolean => {
    const s = slot[i]!;
    const bits = model.known[i] === 1 ? knownBits : unknownBits;
    return (bits[s >>> 5]! & (1 << (s & 31))) !== 0;
  };
  const memo = new Memo();
  memo.add(knownBits, knownHash, unknownBits, initial, false);
  const counter = GrowingCounter.detect(model, initial);

  // The linearization so far: the operation and the state before it.
  const stackOp = new Int32Array(n);
  const stackState = new Array<State>(n);
  let depth = 0;

  let state = initial;
  // Whether the last operation linearized has an unknown outcome. Then the next one must not
  // be a blind write (SET, or a DEL whose result is unknown): one that would overwrite its
  // effect unseen. A linearization that does so is as good without the unknown operation (left
  // pending, never to happen), so only those without are searched. Otherwise the search would
  // try every chain of unknown writes that leave the same last value.
  let mustObserve = false;
  let remainingKnown = knownCount;
  // The candidates of a configuration are the calls before the first return in the list, tried
  // in invocation order: the order most histories took effect in.
  let entry = next[HEAD]!;
  let furthest = HEAD;
  let steps = 0;
  for (;;) {
    if (remainingKnown === 0) {
      // What remains has an unknown outcome: it may never happen.
      const linearization = Array.from(stackOp.subarray(0, depth), (i) => model.ops[i]!);
      return { type: "ok", steps, linearization, state };
    }
    if (++steps > stepsMax) return { type: "limit", steps, reason: `more than ${stepsMax} search steps` };
    assert(entry !== TAIL, "an unlinearized acknowledged operation leaves its return in the list");
    const i = (entry - 1) >>> 1;
    if ((entry & 1) === 1) {
      // A call: try to linearize operation i here.
      const after = model.effect(i, state);
      const allowed =
        after !== undefined &&
        (samePrevious[i] === -1 || isLinearized(samePrevious[i]!)) &&
        !(mustObserve && model.blind(i));
      if (allowed) {
        toggle(i);
        counter?.changed(i, isLinearized);
        const doomed = counter !== null && counter.doomed(after);
        if (!doomed && memo.add(knownBits, knownHash, unknownBits, after, model.known[i] === 0)) {
          if (memo.bytes > cacheBytesMax) {
            return { type: "limit", steps, reason: `the memo outgrew ${Math.round(cacheBytesMax / 2 ** 20)} MiB` };
          }
          stackOp[depth] = i;
          stackState[depth] = state;
          depth++;
          state = after;
          mustObserve = model.known[i] === 0;
          lift(i);
          remainingKnown -= model.known[i]!;
          entry = next[HEAD]!;
          continue;
        }
        toggle(i);
        counter?.changed(i, isLinearized);
      }
      entry = next[entry]!;
    } else {
      // The return of an operation not linearized: every candidate before it failed, so this
      // configuration cannot get past it. Undo the last linearization and try the next candidate.
      if (position[entry]! > position[furthest]!) furthest = entry;
      if (depth === 0) return { type: "fail", steps, furthest: model.ops[(furthest - 1) >>> 1]! };
      depth--;
      const undone = stackOp[depth]!;
      state = stackState[depth]!;
      toggle(undone);
      counter?.changed(undone, isLinearized);
      unlift(undone);
      remainingKnown += model.known[undone]!;
      mustObserve = depth > 0 && model.known[stackOp[depth - 1]!] === 0;
      entry = next[1 + 2 * undone]!;
    }
  }
}

// ---- the check ----

/**
 * What the search needs of one key's operations: the acknowledged ones, and the writes with an
 * unknown outcome whose effect some acknowledged operation could see. The others are left out
 * (they never happened, as far as anyone can tell): a read with an unknown outcome, a failed
 * operation, a SET of a value nobody read, a DEL when no one saw the key absent. An unknown
 * write left in is tried at every step of the search, so this matters when there are many.
 *
 * Why leaving out such a write W is sound: in a linearization, what follows W up to the next
 * blind write (a SET, or an unknown DEL) sees W's effect. A GET would have to return W's
 * value, an INCR to find an integer, a DEL to report what W left. If no acknowledged operation
 * can, only blind writes follow W, and the linearization without W is valid too.
 */
function searchedOperations(ops: readonly Operation[]): Operation[] {
  const values = new Set<State>(); // returned by acknowledged GETs
  let delRemoved = false; // some acknowledged DEL removed a value
  let delFoundNothing = false;
  let incrs = false;
  for (const operation of ops) {
    const outcome = operation.outcome;
    if (operation.op.f === "incr" && outcome?.type !== "fail") incrs = true;
    if (outcome?.type !== "ok") continue;
    if (operation.op.f === "get") values.add(outcome.result as State);
    if (operation.op.f === "del") {
      if (outcome.result === 1) delRemoved = true;
      else delFoundNothing = true;
    }
  }
  return ops.filter((operation) => {
    const { op, outcome } = operation;
    if (outcome?.type === "ok") return true;
    if (outcome?.type === "fail") return false;
    switch (op.f) {
      case "get":
        return false;
      case "set":
        return values.has(op.value) || delRemoved || (incrs && parseKvInteger(op.value) !== null);
      case "del":
        return values.has(null) || delFoundNothing || incrs;
      case "incr":
        return true; // an INCR's effect is a new integer, which another INCR sees
    }
  });
}

function searchOperations(ops: readonly Operation[], initial: State, stepsMax: number, cacheBytesMax: number): SearchOutcome {
  const searched = searchedOperations(ops);
  if (!searched.some((operation) => operation.outcome?.type === "ok")) return { type: "ok", steps: 0, linearization: [], state: initial };
  return search(new KeyOps(searched), initial, Math.max(stepsMax, 1), cacheBytesMax);
}

type KeyOutcome =
  | { type: "ok"; steps: number }
  | { type: "fail"; steps: number; failing: Operation; linearization: Operation[]; state: State; minimal: boolean }
  | { type: "limit"; steps: number; reason: string };

/**
 * Checks one key; on a violation, finds the smallest failing prefix: the history up to the
 * return of some acknowledged operation F, where operations that return after F are still in
 * flight (unknown). Linearizable prefixes only get longer, so a bisection over F finds it.
 */
function checkKey(ops: readonly Operation[], initial: State, stepsMax: number, cacheBytesMax: number): KeyOutcome {
  const whole = searchOperations(ops, initial, stepsMax, cacheBytesMax);
  let steps = whole.steps;
  if (whole.type !== "fail") return whole.type === "ok" ? { type: "ok", steps } : whole;

  // Returns in the search's event order: by time, then by index.
  const returns = ops
    .filter((operation) => operation.outcome?.type === "ok")
    .sort((a, b) => a.outcome!.returnMs - b.outcome!.returnMs || a.index - b.index);
  const prefixUpTo = (at: number): Operation[] => {
    const cut = returns[at]!;
    const cutMs = cut.outcome!.returnMs;
    const returned = (operation: Operation): boolean => {
      const returnMs = operation.outcome!.returnMs;
      return returnMs < cutMs || (returnMs === cutMs && operation.index <= cut.index);
    };
    return ops
      .filter((operation) => operation.invokeMs <= cutMs)
      .map((operation) => (operation.outcome?.type === "ok" && !returned(operation) ? { ...operation, outcome: null } : operation));
  };
  const attempt = (at: number): SearchOutcome => {
    if (at < 0) return { type: "ok", steps: 0, linearization: [], state: initial };
    const outcome = searchOperations(prefixUpTo(at), initial, stepsMax - steps, cacheBytesMax);
    steps += outcome.steps;
    return outcome;
  };
  // The search got to the return of `furthest` with every operation that returned before it
  // linearized: the prefixes before it pass. Gallop up from there to a prefix that fails, then
  // bisect. The whole history is the prefix up to the last return (what was invoked after it
  // cannot help), so the search ends there at the latest.
  let low = returns.indexOf(whole.furthest);
  assert(low >= 0, "the search stops at the return of an acknowledged operation");
  let high = -1;
  let minimal = true;
  const passes = (at: number): boolean => {
    const outcome = attempt(at);
    if (outcome.type === "limit") minimal = false; // out of budget: taken as passing
    return outcome.type !== "fail";
  };
  for (let stride = 1; high < 0; stride *= 2) {
    const at = Math.min(low + stride - 1, returns.length - 1);
    if (at === returns.length - 1 || !passes(at)) high = at;
    else low = at + 1;
  }
  const bisect = (): void => {
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (passes(middle)) low = middle + 1;
      else high = middle;
    }
  };
  bisect();
  let before = attempt(high - 1);
  if (before.type === "fail") {
    // Below the search's furthest return after all (that bound can slip when times touch).
    low = 0;
    high -= 1;
    bisect();
    before = attempt(high - 1);
  }
  const byIndex = new Map(ops.map((operation) => [operation.index, operation]));
  if (before.type !== "ok") minimal = false;
  return {
    type: "fail",
    steps,
    failing: returns[high]!,
    // The prefix search saw copies of operations still in flight: name the originals.
    linearization: before.type === "ok" ? before.linearization.map((operation) => byIndex.get(operation.index)!) : [],
    state: before.type === "ok" ? before.state : initial,
    minimal,
  };
}

/** Checks that the history is linearizable with respect to a map of independent string registers. */
export function checkLinearizability(operations: readonly Operation[], options: CheckOptions = {}): LinearizabilityResult {
  const stepsMax = options.stepsMax ?? CHECK_STEPS_MAX;
  const cacheBytesMax = options.cacheBytesMax ?? CHECK_CACHE_BYTES_MAX;
  assert(Number.isInteger(stepsMax) && stepsMax > 0, "stepsMax is a positive integer");
  assert(cacheBytesMax > 0, "cacheBytesMax is positive");

  const byKey = new Map<string, Operation[]>();
  for (const operation of operations) {
    const outcome = operation.outcome;
    if (outcome !== null) {
      assert(outcome.returnMs >= operation.invokeMs, `operation #${operation.index} returns before it is invoked`);
      if (outcome.type === "ok") assertResult(operation.op, outcome.result);
    }
    let ops = byKey.get(operation.op.key);
    if (ops === undefined) byKey.set(operation.op.key, (ops = []));
    ops.push(operation);
  }

  let stepsLeft = stepsMax;
  let failure: Extract<LinearizabilityResult, { ok: false }> | null = null;
  let limit: Extract<LinearizabilityResult, { ok: "unknown" }> | null = null;
  for (const [key, ops] of byKey) {
    const initial = options.initialValue?.(key) ?? null;
    const outcome = checkKey(ops, initial, stepsLeft, cacheBytesMax);
    stepsLeft = Math.max(0, stepsLeft - outcome.steps);
    if (outcome.type === "limit") {
      limit ??= { ok: "unknown", key, reason: `key ${show(key)}: ${outcome.reason}; no violation found before that` };
    } else if (outcome.type === "fail") {
      const failing = outcome.failing;
      const failingReturnMs = failing.outcome!.returnMs;
      // Report the violation that happened first: the others may follow from it.
      if (failure === null || failingReturnMs < failure.failing.outcome!.returnMs) {
        const prefix = ops.filter((operation) => operation.invokeMs <= failingReturnMs);
        failure = {
          ok: false,
          key,
          explanation: explain(key, initial, prefix, outcome),
          failing,
          prefix,
          linearization: outcome.linearization,
        };
      }
    }
  }
  if (failure !== null) return failure;
  if (limit !== null) return limit;
  return { ok: true, keys: byKey.size, operations: operations.length, steps: stepsMax - stepsLeft };
}

// ---- explaining a failure ----

function show(value: string | null): string {
  if (value === null) return "nil";
  const quoted = JSON.stringify(value);
  return quoted.length <= EXPLANATION_VALUE_CHARS_MAX ? quoted : `${quoted.slice(0, EXPLANATION_VALUE_CHARS_MAX - 4)}..."`;
}

function showOp(op: Op): string {
  switch (op.f) {
    case "get":
      return "GET";
    case "set":
      return `SET ${show(op.value)}`;
    case "del":
      return "DEL";
    case "incr": {
      const delta = op.delta ?? 1;
      if (delta === 1) return "INCR";
      if (delta === -1) return "DECR";
      return delta > 0 ? `INCRBY ${delta}` : `DECRBY ${-delta}`;
    }
  }
}

function showMs(ms: number): string {
  return ms.toFixed(3);
}

/** One line per operation: "#12 client 3 [1.000, 5.000] SET "a" → OK". */
export function describeOperation(operation: Operation): string {
  const outcome = operation.outcome;
  const returned = outcome === null ? "?" : showMs(outcome.returnMs);
  let what: string;
  if (outcome === null) what = "→ ? (still in flight: may or may not have happened)";
  else if (outcome.type === "ok") {
    const result = outcome.result;
    what = `→ ${typeof result === "number" ? String(result) : result === "OK" && operation.op.f === "set" ? "OK" : show(result)}`;
  } else if (outcome.type === "fail") what = `→ failed: ${outcome.error} (no effect)`;
  else what = `→ ? (${outcome.reason}: may or may not have happened)`;
  return `#${operation.index} client ${operation.clientId} [${showMs(operation.invokeMs)}, ${returned}] ${showOp(operation.op)} ${what}`;
}

function explain(key: string, initial: State, prefix: readonly Operation[], outcome: Extract<KeyOutcome, { type: "fail" }>): string {
  const { failing, linearization, state } = outcome;
  const failingReturnMs = failing.outcome!.returnMs;
  const lines = [
    `key ${show(key)} is not linearizable. The shortest prefix of its history that no order explains ` +
      `ends with the return of #${failing.index}: no order of the operations invoked by then agrees with ` +
      `both their times and their results (those that returned later count as in flight).` +
      (outcome.minimal ? "" : " (The search ran out of budget on shorter prefixes: one of them may fail too.)"),
    `Times are in ms; the key starts as ${show(initial)}.`,
    "",
    `The ${prefix.length} operations on the key invoked by then:`,
  ];
  const shown = prefix.slice(-EXPLANATION_OPS_MAX);
  if (shown.length < prefix.length) lines.push(`  ... ${prefix.length - shown.length} earlier operations`);
  for (const operation of shown) {
    lines.push(`  ${describeOperation(operation)}${operation === failing ? "   <-- no order explains this result" : ""}`);
  }
  lines.push("", `Up to the return before it, the history is linearizable, for example as (the key ends as ${show(state)}):`);
  if (linearization.length === 0) lines.push("  (no operations)");
  const tail = linearization.slice(-EXPLANATION_OPS_MAX);
  if (tail.length < linearization.length) lines.push(`  ... ${linearization.length - tail.length} earlier operations`);
  for (const operation of tail) {
    const outcome = operation.outcome;
    let note = "";
    if (outcome === null || outcome.type !== "ok") note = "  (outcome unknown: took effect)";
    else if (outcome.returnMs >= failingReturnMs) note = "  (still in flight then: took effect)";
    lines.push(`  #${operation.index} ${showOp(operation.op)}${note}`);
  }
  return lines.join("\n");
}
