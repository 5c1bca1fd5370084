// A log file's records as a Machine's replay source: batches of up to REPLAY_BATCH_RECORDS, so
// that the vCPU gets a message per batch rather than per record. A damaged tail ends the feed
// after everything before it, and is reported to `onError`: replay what came before the damage.

import type { LogRecord } from "../../protocol/records.js";
import type { ReplaySource } from "./machine.js";

const REPLAY_BATCH_RECORDS = 1024;

export function batchedReplaySource(records: AsyncGenerator<LogRecord>, onError: (error: unknown) => void): ReplaySource {
  return {
    async next() {
      const batch: LogRecord[] = [];
      try {
        while (batch.length < REPLAY_BATCH_RECORDS) {
          const next = await records.next();
          if (next.done) break;
          batch.push(next.value);
        }
      } catch (error) {
        onError(error);
      }
      return batch.length === 0 ? null : batch;
    },
  };
}
