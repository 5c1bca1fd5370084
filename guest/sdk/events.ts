// Interrupt delivery: the top half (__ls_irq) and the bottom half (__ls_run).
//
// The host calls __ls_irq(kind, a, b) at a delivery point, which may fall anywhere in guest
// code: inside the allocator, inside the GC, inside another handler. So the top half only
// copies the three integers into a fixed ring in static memory (memory.data: no heap) and
// returns. __ls_run, called by the host while the guest is idle (or dispatchPending(), called
// by halt() inside guest code), drains the ring and runs the handlers the SDK modules
// registered, where allocating is safe.

import { EV_KIND_COUNT } from "./abi";

// Ring of (kind, a, b) entries, 16 bytes each (12 used), power-of-two capacity so that the
// free-running u32 counters index it with a mask and wrap around harmlessly.
const RING_CAPACITY: u32 = 1024;
const RING_MASK: u32 = RING_CAPACITY - 1;
const RING: usize = memory.data(16384, 16); // RING_CAPACITY * 16 bytes, zeroed static memory

// Written only by the top half (producer).
let ringHead: u32 = 0;
// Written only by the bottom half (consumer).
let ringTail: u32 = 0;
// Statistics (written by the top half: plain integer globals, no allocation).
let eventsAccepted: u64 = 0;
let eventsRefused: u64 = 0;

/** The interrupt handler (top half). Must not allocate: it may run inside the allocator. */
export function __ls_irq(kind: i32, a: i32, b: i32): i32 {
  const head = ringHead;
  if (head - ringTail >= RING_CAPACITY) {
    eventsRefused++;
    return 0; // full: the host keeps the event pending and retries at a later delivery point
  }
  const p = RING + (<usize>(head & RING_MASK) << 4);
  store<i32>(p, kind, 0);
  store<i32>(p, a, 4);
  store<i32>(p, b, 8);
  ringHead = head + 1; // publish after the entry is complete
  eventsAccepted++;
  return 1;
}

/** The bottom half, called by the host when the guest is idle and events were delivered. */
export function __ls_run(): void {
  dispatchPending();
}

// ---- handler registry (one dispatcher per event kind, installed by the SDK modules) ----

type EventHandler = (a: i32, b: i32) => void;

let handlerTimer: EventHandler | null = null;
let handlerNicAccept: EventHandler | null = null;
let handlerNicData: EventHandler | null = null;
let handlerNicClosed: EventHandler | null = null;
let handlerNicTxCredit: EventHandler | null = null;
let handlerDiskDone: EventHandler | null = null;

/** SDK-internal: installs the dispatcher for one event kind (1..6). */
export function setEventHandler(kind: i32, handler: EventHandler | null): void {
  switch (kind) {
    case 1: handlerTimer = handler; break;
    case 2: handlerNicAccept = handler; break;
    case 3: handlerNicData = handler; break;
    case 4: handlerNicClosed = handler; break;
    case 5: handlerNicTxCredit = handler; break;
    case 6: handlerDiskDone = handler; break;
    default: assert(false, "bad event kind");
  }
}

function dispatch(kind: i32, a: i32, b: i32): void {
  let h: EventHandler | null = null;
  switch (kind) {
    case 1: h = handlerTimer; break;
    case 2: h = handlerNicAccept; break;
    case 3: h = handlerNicData; break;
    case 4: h = handlerNicClosed; break;
    case 5: h = handlerNicTxCredit; break;
    case 6: h = handlerDiskDone; break;
  }
  if (h) h(a, b);
  // Events of a kind nobody listens to (or unknown kinds) are dropped.
}

// ---- "after events" hooks: run once the ring is empty, before __ls_run returns ----

const afterHooks = new Array<() => void>();

/**
 * Registers `fn` to run at the end of every bottom-half pass, after the handlers of all the
 * events delivered so far ran. Use it to batch work across events, e.g. one disk write
 * (group commit) for all the commands that arrived in one pass.
 */
export function afterEvents(fn: () => void): void {
  afterHooks.push(fn);
}

let dispatchDepth: i32 = 0;

/** True when events have been delivered to the ring and not yet handled. */
export function eventsPending(): bool {
  return ringHead != ringTail;
}

/**
 * Runs the handlers of every event in the ring, then the after-events hooks, until the ring
 * is empty. Safe to call re-entrantly (a handler that calls halt()).
 */
export function dispatchPending(): void {
  dispatchDepth++;
  do {
    while (ringTail != ringHead) {
      const p = RING + (<usize>(ringTail & RING_MASK) << 4);
      const kind = load<i32>(p, 0);
      const a = load<i32>(p, 4);
      const b = load<i32>(p, 8);
      ringTail++; // free the slot before running the handler: it may take a while
      if (kind > 0 && kind < EV_KIND_COUNT) dispatch(kind, a, b);
    }
    for (let i = 0, n = afterHooks.length; i < n; i++) {
      afterHooks[i]();
    }
  } while (ringTail != ringHead);
  dispatchDepth--;
}

/** Number of events accepted by the top half since boot. */
export function eventCount(): u64 {
  return eventsAccepted;
}

/** Number of times the top half refused an event because the ring was full. */
export function eventRefusals(): u64 {
  return eventsRefused;
}
