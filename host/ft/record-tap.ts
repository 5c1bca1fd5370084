// What a primary's appended records show to those watching it, besides its backups: read-only
// replicas (the dashboard's in-browser replica) and operators waiting for a digest probe.
//
// Neither acknowledges anything: the Output Rule never waits for them, and one that falls
// behind is dropped (its own bound), never buffered here.

import { ControlKind, type LogRecord, RecordKind } from "../../protocol/records.js";
import { LockstepError } from "../errors.js";

/** Read-only replicas of one VM at once: each costs a snapshot and an encoding per batch. */
export const OBSERVERS_MAX = 8;
/** Digest probes waiting for their record at once. */
export const DIGEST_PROBES_MAX = 16;

export interface RecordObserver {
  /** Records in order, dense, from the snapshot the observer started at. Encode before returning. */
  records(batch: readonly LogRecord[]): void;
  /** No record will follow (the VM stopped, or this host's primary ended). */
  end(reason: string): void;
}

export interface DigestProbeResult {
  icount: bigint;
  /** sha256 of memory and mutable globals at `icount`, as logged. */
  digest: Uint8Array;
  /** The log position of the probe's record. */
  seq: bigint;
}

export class RecordTap {
  private readonly observers = new Set<RecordObserver>();
  private readonly probes: { resolve: (result: DigestProbeResult) => void; reject: (error: Error) => void }[] = [];
  private endedReason: string | null = null;

  /** Adds an observer whose first record is the next one appended. Returns its removal. */
  add(observer: RecordObserver): () => void {
    if (this.endedReason !== null) {
      observer.end(this.endedReason);
      return () => {};
    }
    if (this.observers.size >= OBSERVERS_MAX) throw new LockstepError("REPLICA_REFUSED", `this VM has ${OBSERVERS_MAX} replicas watching already`);
    this.observers.add(observer);
    return () => this.observers.delete(observer);
  }

  /** Resolves with the next Digest control appended (probes are answered in order). */
  nextDigest(): Promise<DigestProbeResult> {
    if (this.endedReason !== null) return Promise.reject(new LockstepError("DIGEST_PROBE_FAILED", this.endedReason));
    if (this.probes.length >= DIGEST_PROBES_MAX) return Promise.reject(new LockstepError("DIGEST_PROBE_FAILED", `${DIGEST_PROBES_MAX} digest probes are waiting already`));
    return new Promise((resolve, reject) => this.probes.push({ resolve, reject }));
  }

  /** The primary appended these records. */
  appended(records: readonly LogRecord[]): void {
    for (const observer of this.observers) observer.records(records);
    if (this.probes.length === 0) return;
    for (const record of records) {
      if (record.kind === RecordKind.Control && record.a === ControlKind.Digest) {
        this.probes.shift()?.resolve({ icount: record.icount, digest: record.data, seq: record.seq });
      }
    }
  }

  /** Final: observers are told, probes still waiting fail with `reason`. */
  end(reason: string): void {
    if (this.endedReason !== null) return;
    this.endedReason = reason;
    for (const observer of this.observers) observer.end(reason);
    this.observers.clear();
    for (const probe of this.probes.splice(0)) probe.reject(new LockstepError("DIGEST_PROBE_FAILED", reason));
  }
}
