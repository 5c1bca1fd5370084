// A host's event ring (host/cluster/event-ring.ts): what a standalone cluster service reads
// instead of its hosts' stderr. Numbered lines, a bounded window, and a reader that fell
// behind learns where the lines it gets start.

import { describe, expect, it } from "vitest";
import { EventRing, HOST_EVENTS_MAX, keepingEvents } from "../../host/cluster/event-ring.js";
import type { Logger } from "../../host/log.js";

function recordingLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const keep = (level: string) => (msg: string) => void lines.push(`${level} ${msg}`);
  return { log: { debug: keep("debug"), info: keep("info"), warn: keep("warn"), error: keep("error") }, lines };
}

describe("event ring", () => {
  it("keeps the lines with an event, still logs every line, and numbers them from the start", () => {
    const ring = new EventRing();
    const { log, lines } = recordingLogger();
    const logger = keepingEvents(log, ring);
    logger.info("vm started", { vm: "kv", generation: 1, event: "started" });
    logger.debug("no event here", { vm: "kv" });
    logger.warn("went live", { vm: "kv", generation: 2, event: "wentLive", icount: 5n });
    expect(lines).toEqual(["info vm started", "debug no event here", "warn went live"]);
    const all = ring.since(0);
    expect(all.from).toBe(0);
    expect(all.next).toBe(2);
    expect(all.lines.map((l) => [l.event, l.level, l.vm, l.generation])).toEqual([["started", "info", "kv", 1], ["wentLive", "warn", "kv", 2]]);
    expect(all.lines[1]!.icount).toBe(5n);
    expect(ring.since(2)).toEqual({ from: 2, next: 2, lines: [] });
  });

  it("keeps the last HOST_EVENTS_MAX lines: a reader that fell behind starts where the window does", () => {
    const ring = new EventRing();
    const logger = keepingEvents(recordingLogger().log, ring);
    for (let i = 0; i < HOST_EVENTS_MAX + 10; i++) logger.info(`line ${i}`, { event: "tick", n: i });
    const late = ring.since(3);
    expect(late.from).toBe(10);
    expect(late.lines[0]!.n).toBe(10);
    // One answer is bounded; the next asks from where it stopped.
    let next = late.next;
    let count = late.lines.length;
    while (next < HOST_EVENTS_MAX + 10) {
      const more = ring.since(next);
      expect(more.from).toBe(next);
      count += more.lines.length;
      next = more.next;
    }
    expect(count).toBe(HOST_EVENTS_MAX);
  });
});
