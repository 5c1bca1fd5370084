// The embedded cluster as the tests drive it (host/cluster/up-process.ts), and what they check
// of the counter guest's console.

import type { Tick } from "../../host/cluster/up-process.js";

export { UpProcess as UpCluster, type LogLine, type Ready, type Tick, type ClusterStatus } from "../../host/cluster/up-process.js";

/** Every tick follows the one before: no gap (a tick the guest counted but nobody saw), no repeat. */
export function tickGaps(ticks: Tick[]): string[] {
  const problems: string[] = [];
  for (let i = 1; i < ticks.length; i++) {
    const [before, after] = [ticks[i - 1]!, ticks[i]!];
    const expected = before.tick + 1 + after.missed;
    if (after.tick !== expected) {
      problems.push(`tick ${after.tick} (missed=${after.missed}) on ${after.host} after tick ${before.tick} on ${before.host}: expected ${expected}`);
    }
  }
  return problems;
}
