// counter: reads the clocks and random bytes at start, arms a 10 ms periodic timer and prints
// one line per tick. Runs until the host stops it.

export { __ls_irq, __ls_run } from "../../sdk/index";
import { print, monotonicNs, wallNs, randomU32, randomU64, startTimer } from "../../sdk/index";

const PERIOD_MS: i32 = 10; // 100 Hz

let ticks: i64 = 0;

function onTick(periods: i32): void {
  ticks += periods;
  let line = `tick ${ticks} mono_ns=${monotonicNs()} rand=${randomU32().toString(16)}`;
  if (periods > 1) line += ` missed=${periods - 1}`;
  print(line);
}

export function main(): void {
  print(`counter start mono_ns=${monotonicNs()} wall_ns=${wallNs()} seed=${randomU64().toString(16)} period_ms=${PERIOD_MS}`);
  startTimer(PERIOD_MS, onTick);
}
