// Idle, interrupt masking and exit.

import { halt as hw_halt, irq_mask, exit as hw_exit } from "./abi";
import { dispatchPending, eventsPending } from "./events";

/**
 * Waits until at least one event arrives, then runs its handlers (and those of any other
 * event already delivered). If events are already waiting, runs them without waiting.
 *
 * Use it to block inside main or a handler: `while (!req.done) halt();`. Handlers of other
 * events run inside this call. Calling it while nothing is armed (no timer, listener,
 * connection or disk IO) stops the VM with an error: nothing could ever wake it.
 *
 * Event-driven guests don't need it: return from main and from the handlers, and the host
 * idles the VM and calls the handlers as events arrive.
 */
export function halt(): void {
  if (!eventsPending()) hw_halt();
  dispatchPending();
}

/**
 * Masks interrupt delivery (a critical section) and returns whether it was already masked.
 * Pass the result to restoreInterrupts() to end the section. While masked, events wait in
 * the host and are delivered when delivery is unmasked.
 *
 *     const prev = maskInterrupts();
 *     ... // no __ls_irq runs here
 *     restoreInterrupts(prev);
 */
export function maskInterrupts(): bool {
  return irq_mask(1) != 0;
}

/** Unmasks interrupt delivery (a delivery point) and returns whether it was masked. */
export function unmaskInterrupts(): bool {
  return irq_mask(0) != 0;
}

/** Ends a critical section begun by maskInterrupts(). */
export function restoreInterrupts(wasMasked: bool): void {
  irq_mask(wasMasked ? 1 : 0);
}

/** Ends the VM at once with `code`. Does not return. */
export function exit(code: i32): void {
  hw_exit(code);
  unreachable();
}
