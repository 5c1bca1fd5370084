// Shared fixtures for the FT core tests: records, messages, and a one-line rendering of each
// Ready so that scripts read as golden transcripts (etcd raft's datadriven style).

import type { BackupReady } from "../../host/ft/backup.js";
import type { AckMessage, BackupToPrimary, PrimaryToBackup } from "../../host/ft/messages.js";
import { SOLE_BACKUP } from "../../host/ft/config.js";
import type { Outgoing, PrimaryReady } from "../../host/ft/primary.js";
import { ControlKind, EMPTY_BYTES, type LogRecord, RecordKind } from "../../protocol/records.js";

export const VM = "vm-1";

/** The cores' settings in the scripted tests: short timeouts, so that a script stays readable. */
export const SCRIPT_PRIMARY_OPTIONS = {
  vmId: VM,
  generation: 1,
  hostId: "A",
  heartbeatTicks: 2,
  timeoutTicks: 10,
  retransmitTicks: 5,
  tasRetryMinTicks: 2,
  tasRetryMaxTicks: 8,
} as const;

export const SCRIPT_BACKUP_OPTIONS = {
  vmId: VM,
  generation: 1,
  hostId: "B",
  heartbeatTicks: 2,
  timeoutTicks: 10,
  tasRetryMinTicks: 2,
  tasRetryMaxTicks: 8,
  bufferRecordsMax: 8,
  windowUpdateRecords: 4,
} as const;

/** Record `seq`, at icount 1000 × (seq + 1) unless given. */
export function rec(seq: number, fields: Partial<LogRecord> = {}): LogRecord {
  return {
    kind: RecordKind.Event,
    seq: BigInt(seq),
    icount: BigInt(1000 * (seq + 1)),
    a: 1,
    b: 0,
    value: 0n,
    data: EMPTY_BYTES,
    ...fields,
  };
}

/** Records from..to-1. */
export function recs(from: number, to: number): LogRecord[] {
  return Array.from({ length: to - from }, (_, index) => rec(from + index));
}

export function control(seq: number, kind: ControlKind): LogRecord {
  return rec(seq, { kind: RecordKind.Control, a: kind });
}

export function ack(ackSeq: number, fields: Partial<AckMessage> = {}): AckMessage {
  return {
    t: "ack",
    vmId: VM,
    generation: 1,
    ackSeq: BigInt(ackSeq),
    windowEndSeq: BigInt(ackSeq + 100),
    replayedSeq: 0n,
    replayedIcount: 0n,
    resend: false,
    ...fields,
  };
}

export function entries(records: LogRecord[], generation = 1): PrimaryToBackup {
  return { t: "entries", vmId: VM, generation, records };
}

export function heartbeat(generation = 1): PrimaryToBackup {
  return { t: "heartbeat", vmId: VM, generation };
}

export function renew(generation: number, owner = "A"): PrimaryToBackup {
  return { t: "renew", vmId: VM, generation, owner };
}

function span(records: readonly LogRecord[]): string {
  const first = records[0]!.seq;
  const last = records[records.length - 1]!.seq;
  return first === last ? `${first}` : `${first}..${last}`;
}

function showPrimaryMessage(message: PrimaryToBackup): string {
  switch (message.t) {
    case "entries":
      return `entries ${span(message.records)}`;
    case "heartbeat":
      return `heartbeat g${message.generation}`;
    case "hello":
      return `hello ${message.role} g${message.generation}`;
    case "renew":
      return `renew g${message.generation} by ${message.owner}`;
  }
}

/** A message to the only backup as itself; to one of several, "id: message". */
function showOutgoing({ to, message }: Outgoing): string {
  return to === SOLE_BACKUP ? showPrimaryMessage(message) : `${to}: ${showPrimaryMessage(message)}`;
}

function showBackupMessage(message: BackupToPrimary): string {
  if (message.t === "hello") return `hello ${message.role} g${message.generation}`;
  return `ack ${message.ackSeq} window ${message.windowEndSeq} replayed ${message.replayedSeq}${message.resend ? " resend" : ""}`;
}

/** The Ready as one line; only what is set. `stall` and `share` show when not the default. */
export function showPrimary(ready: PrimaryReady): string {
  const parts: string[] = ready.messages.map(showOutgoing);
  if (ready.goAlone !== null) parts.push(`goAlone g${ready.goAlone.generation}`);
  if (ready.renewed !== null) parts.push(`renewed g${ready.renewed.generation}`);
  if (ready.release.length > 0) parts.push(`release ${ready.release.join(",")}`);
  if (ready.dropped.length > 0) parts.push(`dropped ${ready.dropped.join(",")}`);
  if (ready.testAndSet !== null) parts.push(`testAndSet g${ready.testAndSet.generation} by ${ready.testAndSet.owner}`);
  if (ready.halt !== null) parts.push(`halt ${ready.halt}`);
  if (ready.stall) parts.push("stall");
  if (ready.cpuShare !== 1) parts.push(`share ${ready.cpuShare.toFixed(2)}`);
  for (const error of ready.errors) parts.push(`error ${error.code}`);
  return parts.join(" | ");
}

export function showBackup(ready: BackupReady): string {
  const parts: string[] = [];
  if (ready.deliver.length > 0) parts.push(`deliver ${span(ready.deliver)}`);
  parts.push(...ready.messages.map(showBackupMessage));
  if (ready.finishReplay) parts.push("finishReplay");
  if (ready.testAndSet !== null) parts.push(`testAndSet g${ready.testAndSet.generation} by ${ready.testAndSet.owner}`);
  if (ready.goLive !== null) {
    parts.push(`goLive g${ready.goLive.generation} at ${ready.goLive.nextSeq} icount ${ready.goLive.icount}`);
  }
  if (ready.halt !== null) parts.push(`halt ${ready.halt}`);
  for (const error of ready.errors) parts.push(`error ${error.code}`);
  return parts.join(" | ");
}

/** Calls `step` n times and returns the non-empty Ready lines, prefixed with their index. */
export function ticks(n: number, step: () => string): string[] {
  const lines: string[] = [];
  for (let index = 1; index <= n; index++) {
    const line = step();
    if (line !== "") lines.push(`${index}: ${line}`);
  }
  return lines;
}
