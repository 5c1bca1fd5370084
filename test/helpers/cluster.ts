// The embedded cluster as the tests drive it (host/cluster/up-process.ts), and what they check
// of the counter guest's console.

import type { Tick } from "../../host/cluster/up-process.js";

export { UpProcess as UpCluster, type LogLine, type Ready, type Tick, type ClusterStatus } from "../../host/cluster/up-process.js";

/**
 * At a failover, console lines in flight may be lost, never repeated: a line whose output
 * marker the backup holds but whose acknowledgment never reached the primary (the host died or
 * was cut off with it on the wire) is printed by neither side (docs/cluster.md). At most this
 * many, and only where the host changes.
 */
const LINES_LOST_AT_FAILOVER_MAX = 2;

/**
 * Every tick follows the one before: no repeat, no gap (a tick the guest counted but nobody
 * saw) on one host, and at a failover at most LINES_LOST_AT_FAILOVER_MAX lines in flight lost.
 */
export function tickGaps(ticks: Tick[]): string[] {
  const problems: string[] = [];
  for (let i = 1; i < ticks.length; i++) {
    const [before, after] = [ticks[i - 1]!, ticks[i]!];
    const expected = before.tick + 1 + after.missed;
    const lost = after.tick - expected;
    if (after.host !== before.host && lost > 0 && lost <= LINES_LOST_AT_FAILOVER_MAX) continue;
    if (after.tick !== expected) {
      problems.push(`tick ${after.tick} (missed=${after.missed}) on ${after.host} after tick ${before.tick} on ${before.host}: expected ${expected}`);
    }
  }
  return problems;
}
