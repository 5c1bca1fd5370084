// Execution lag in milliseconds (§3.2): how long ago the primary stood where the backup's
// replay stands now. The cores count lag in instructions only (they have no clock); the
// primary's driver samples (icount, time) as records arrive and reads the lag off the samples.

import { assert } from "../errors.js";

/** Samples kept: at one per SAMPLE_EVERY_MS, a lag of up to about 20 s reads exactly. */
const SAMPLES_MAX = 4096;
const SAMPLE_EVERY_MS = 5;

export class LagClock {
  private readonly icounts: bigint[] = [];
  private readonly timesMs: number[] = [];
  private lastSampleMs = -Infinity;

  /** The primary has reached `icount` at `nowMs`. Counts never decrease. */
  sample(icount: bigint, nowMs: number): void {
    const last = this.icounts.at(-1);
    assert(last === undefined || icount >= last, "LagClock: icounts never decrease");
    if (nowMs - this.lastSampleMs < SAMPLE_EVERY_MS) return;
    this.lastSampleMs = nowMs;
    if (this.icounts.length === SAMPLES_MAX) {
      this.icounts.shift();
      this.timesMs.shift();
    }
    this.icounts.push(icount);
    this.timesMs.push(nowMs);
  }

  /**
   * Milliseconds since the primary first stood at or past `replayedIcount`; 0 when the backup
   * has caught up with the last sample. Beyond the samples kept it reads the oldest one's age, a
   * lower bound.
   */
  lagMs(replayedIcount: bigint, nowMs: number): number {
    const n = this.icounts.length;
    if (n === 0 || replayedIcount >= this.icounts[n - 1]!) return 0;
    // The first sample at or past the backup's position: binary search, counts are sorted.
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.icounts[mid]! >= replayedIcount) hi = mid;
      else lo = mid + 1;
    }
    return Math.max(0, nowMs - this.timesMs[lo]!);
  }

  /** Instructions per second over the samples kept (0 with fewer than two). */
  rate(): number {
    const n = this.icounts.length;
    if (n < 2) return 0;
    const spanMs = this.timesMs[n - 1]! - this.timesMs[0]!;
    return spanMs <= 0 ? 0 : (Number(this.icounts[n - 1]! - this.icounts[0]!) * 1000) / spanMs;
  }
}
