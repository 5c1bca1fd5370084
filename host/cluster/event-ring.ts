// A host's recent events, for a cluster service that reads them over the network: a standalone
// `lockstep cluster` has no stderr of its hosts to read, as `lockstep up` has of its children.
// Every log line with an `event` field goes into a bounded ring, numbered from the host's start;
// the service asks for the lines from the number after the last one it has
// (GET /api/status?eventsFrom=N) and learns how many it missed if the ring moved past them.

import type { LogFields, Logger, LogLevel } from "../log.js";

/** Events a host keeps: minutes of a busy host's failovers and clones. */
export const HOST_EVENTS_MAX = 1024;
/** Events one status answer carries at most; the service asks again from where it stopped. */
const EVENTS_PER_ANSWER_MAX = 256;

export interface EventLine extends Record<string, unknown> {
  ts: string;
  level: LogLevel;
  msg: string;
  event: string;
}

export interface EventsAnswer {
  /** The number of the first line in `lines`: above the asked one if the ring moved past it. */
  from: number;
  /** Ask from this number next time. */
  next: number;
  lines: EventLine[];
}

export class EventRing {
  private readonly lines: EventLine[] = [];
  /** The number of lines[0]. */
  private first = 0;

  push(line: EventLine): void {
    this.lines.push(line);
    if (this.lines.length > HOST_EVENTS_MAX) {
      this.lines.shift();
      this.first++;
    }
  }

  since(from: number): EventsAnswer {
    const start = Math.max(from, this.first);
    const lines = this.lines.slice(start - this.first, start - this.first + EVENTS_PER_ANSWER_MAX);
    return { from: start, next: start + lines.length, lines };
  }
}

/** `log`, which also keeps every line that has an `event` field in `ring`. */
export function keepingEvents(log: Logger, ring: EventRing): Logger {
  const tee =
    (level: LogLevel) =>
    (msg: string, fields?: LogFields): void => {
      log[level](msg, fields);
      if (typeof fields?.event === "string") {
        ring.push({ ts: new Date().toISOString(), level, msg, vm: null, generation: null, ...fields, event: fields.event });
      }
    };
  return { debug: tee("debug"), info: tee("info"), warn: tee("warn"), error: tee("error") };
}
