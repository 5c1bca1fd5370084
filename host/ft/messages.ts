// The messages of the FT protocol: what travels on the logging channel between a primary and
// its backup, and what goes to the arbiter (the test-and-set register on the storage server).
//
// Only types live here. The wire codec comes with the WebSocket driver; log records inside an
// `entries` message are encoded with protocol/codec.ts (`encodeRecords`, one batch per message,
// docs/log-format.md "On the logging channel").
//
// Conventions used by every `*Seq` field in host/ft: a seq here is an exclusive bound, "the
// number of records before", exactly like an output's tag. `ackSeq = 10` means records 0..9
// are held; it is also the next seq the backup needs.

import type { LogRecord } from "../../protocol/records.js";

export type Role = "primary" | "backup";

/** Every channel message names its VM and the generation of the pair that sent it. */
export interface Envelope {
  vmId: string;
  /**
   * The sender's generation. The pair that runs generation G contends for the test-and-set
   * register of G + 1 on a failure; whoever wins runs alone as G + 1. A message from a higher
   * generation tells the receiver it has been superseded (it halts); a lower one is stale and
   * ignored.
   */
  generation: number;
}

/** Primary → backup: log records `records[0].seq ..`, dense and ascending, at least one. */
export interface EntriesMessage extends Envelope {
  t: "entries";
  records: LogRecord[];
}

/** Primary → backup, when it has sent nothing else for a heartbeat interval. */
export interface HeartbeatMessage extends Envelope {
  t: "heartbeat";
}

/**
 * Backup → primary. Doubles as the backup's heartbeat: it is sent after every batch received,
 * on replay progress, and at least once per heartbeat interval.
 */
export interface AckMessage extends Envelope {
  t: "ack";
  /** Every record with seq < ackSeq is in the backup's buffer (received, §3.2; not replayed). */
  ackSeq: bigint;
  /**
   * Flow control: the backup accepts records with seq < windowEndSeq. It only grows (it is
   * `replayedSeq + buffer capacity`), so the primary keeps the largest it has seen.
   */
  windowEndSeq: bigint;
  /** The backup's vCPU has consumed every record with seq < replayedSeq... */
  replayedSeq: bigint;
  /** ...and stands at this instruction count: the primary's lag figure (§3.2). */
  replayedIcount: bigint;
  /** The backup saw a gap after ackSeq: resend from ackSeq. */
  resend: boolean;
}

/**
 * Either direction, first on a new connection. `token` is an opaque credential for the
 * driver to check; the protocol core ignores it.
 */
export interface HelloMessage extends Envelope {
  t: "hello";
  role: Role;
  token?: string;
}

/**
 * Primary → backup, with several backups (docs/ft-protocol.md, "More than one backup"): "I am
 * settling generation `generation` at the arbiter, as `owner`, and you stay my backup in it".
 * Unlike every other message, its envelope carries the generation the primary contends for (or
 * has just won), not the one it runs: a backup of generation G records it (it is *prepared*
 * for `generation`) and adopts that generation only with the first other message carrying it,
 * which the primary sends only after it won. A prepared backup whose primary falls silent asks
 * the arbiter for `generation` on behalf of `owner` first: won means the primary owns it (or
 * now does) and this backup is one of its backups there, so it contends for the generation
 * after it; lost means somebody else is live, and it halts.
 */
export interface RenewMessage extends Envelope {
  t: "renew";
  /** The primary's host: the owner it contends with. */
  owner: string;
}

export type PrimaryToBackup = EntriesMessage | HeartbeatMessage | HelloMessage | RenewMessage;
export type BackupToPrimary = AckMessage | HelloMessage;
export type ChannelMessage = PrimaryToBackup | BackupToPrimary;

/**
 * To the arbiter: atomically "if register (vmId, generation) is clear or already owned by
 * `owner`, make `owner` its owner and answer won; otherwise answer lost". Owning it makes the
 * request idempotent, so a retry after a lost answer cannot make the winner lose.
 */
export interface TestAndSetRequest {
  vmId: string;
  generation: number;
  owner: string;
}

/** `unreachable`: the arbiter did not answer (the driver's own deadline); the core retries. */
export type TestAndSetResult = "won" | "lost" | "unreachable";
