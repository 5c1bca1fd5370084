// The periodic timer (one per VM). Ticks arrive as events; the handler runs in the bottom half.

import { timer_set, EV_TIMER } from "./abi";
import { setEventHandler } from "./events";

let tickHandler: ((periods: i32) => void) | null = null;
let timerPeriodMs: i32 = 0;
let timerTicks: i64 = 0;

function onTimerEvent(a: i32, b: i32): void {
  const h = tickHandler;
  if (h === null) return; // a tick delivered before stopTimer() was handled
  timerTicks += a;
  h(a);
}

/**
 * Arms the periodic timer: every `periodMs` milliseconds `handler(periods)` runs, where
 * `periods` (≥ 1) is how many periods elapsed since the last call (more than 1 when ticks
 * were coalesced because the guest was busy). Re-arming replaces the period and handler.
 */
export function startTimer(periodMs: i32, handler: (periods: i32) => void): void {
  assert(periodMs > 0, "timer period must be positive");
  tickHandler = handler;
  timerPeriodMs = periodMs;
  setEventHandler(EV_TIMER, onTimerEvent);
  timer_set(periodMs);
}

/** Disarms the timer. Ticks already delivered are dropped. */
export function stopTimer(): void {
  timer_set(0);
  tickHandler = null;
  timerPeriodMs = 0;
}

/** The armed period in milliseconds (0: disarmed). */
export function timerPeriod(): i32 {
  return timerPeriodMs;
}

/** Periods elapsed since the timer was first armed (sum of the handler's `periods`). */
export function timerTickCount(): i64 {
  return timerTicks;
}
