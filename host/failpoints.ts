// Failpoints: deliberate bugs, switched on by name in $LOCKSTEP_FAILPOINTS (comma-separated),
// so that a test can prove its checker catches what they break (as etcd's gofail does). Off
// unless named; an unknown name is refused at start-up rather than silently ignored.
//
//   release-before-ack  the primary releases outputs at once, without the backup's ack, and
//                       sends its log 200 ms late: the Output Rule broken, so a failover loses
//                       writes that clients were told about.

import { LockstepError } from "./errors.js";

const KNOWN = ["release-before-ack"] as const;
export type Failpoint = (typeof KNOWN)[number];

/** How late the release-before-ack failpoint sends log entries. */
export const FAILPOINT_LOG_DELAY_MS = 200;

const enabled = new Set<string>();
for (const name of (process.env.LOCKSTEP_FAILPOINTS ?? "").split(",").map((n) => n.trim()).filter(Boolean)) {
  if (!(KNOWN as readonly string[]).includes(name)) {
    throw new LockstepError("USAGE", `LOCKSTEP_FAILPOINTS: unknown failpoint "${name}" (known: ${KNOWN.join(", ")})`);
  }
  enabled.add(name);
}

export function failpoint(name: Failpoint): boolean {
  return enabled.has(name);
}
