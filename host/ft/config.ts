// Configuration of the FT protocol cores: limits, timeouts (in ticks) and lag control.
//
// The cores have no clock. The driver calls `tick()` every TICK_MS of wall-clock time and
// converts: every `*Ticks` value below is a count of those calls. docs/ft-protocol.md argues
// for the defaults (heartbeat every 100 ms, failure declared after 1 s of silence).

import { FRAME_BYTES_MAX } from "../../protocol/codec.js";
import { assert } from "../errors.js";

/** The tick the defaults below assume. The core never reads it; the driver does. */
export const TICK_MS = 10;

/** The failure timeout a user may choose: under 200 ms a GC pause fires it; over 60 s it is an outage. */
export const TIMEOUT_MS_MIN = 200;
export const TIMEOUT_MS_MAX = 60_000;

/**
 * How long the drivers let a closed logging channel stay closed before declaring the peer
 * failed (CoreConfig.reconnectGraceTicks): a killed host is noticed in about this long, not
 * the whole timeout, while a reconnect after a blip (every 100 ms) has two or three tries.
 */
export const RECONNECT_GRACE_MS = 300;

/** A failure timeout in ms as the cores count it: whole ticks. */
export function timeoutTicksFor(timeoutMs: number): number {
  assert(Number.isInteger(timeoutMs) && timeoutMs >= TIMEOUT_MS_MIN && timeoutMs <= TIMEOUT_MS_MAX, `timeout ${timeoutMs} ms out of range`);
  return Math.ceil(timeoutMs / TICK_MS);
}

/** Settings common to both cores. */
export interface CoreConfig {
  vmId: string;
  /** The generation this core belongs to (≥ 1). A failure is settled on `generation + 1`. */
  generation: number;
  /** This host's identity as owner of a test-and-set register; unique per host. */
  hostId: string;
  /**
   * The first seq this core handles: 0 for a VM started from its beginning, or the number of
   * records a snapshot already embodies (a backup cloned from a running primary, §3.1).
   */
  startSeq: bigint;
  /** The instruction count at `startSeq`. */
  startIcount: bigint;
  /** Send something (a heartbeat if nothing else) at least this often. */
  heartbeatTicks: number;
  /** Declare the peer failed after this long without any message from it (§2.3). */
  timeoutTicks: number;
  /**
   * Declare the peer failed after its logging channel has been closed this long without coming
   * back (0: only the timeout decides). A host that dies closes its connections at once, so
   * this detects a crash well within the timeout; a blip shorter than it reconnects. Safety
   * does not depend on it: the test-and-set decides who goes on (§2.3), a false alarm costs
   * a generation, never an output.
   */
  reconnectGraceTicks: number;
  /** Backoff between test-and-set attempts while the arbiter is unreachable: doubles. */
  tasRetryMinTicks: number;
  tasRetryMaxTicks: number;
  /** Largest encoded record (frame bytes) the driver will ever hand over. */
  recordBytesMax: number;
}

export interface PrimaryConfig extends CoreConfig {
  /** "paired": recording for backups; "alone": live without one (after a go-live). */
  mode: "paired" | "alone";
  /**
   * mode "paired": the backups recording starts for, by the ids the driver names them with
   * (messages are addressed to them, acks come from them). Default: one, `SOLE_BACKUP`.
   */
  backups: readonly string[];
  /** At most this many backups at once (`pair()` asserts past it). */
  backupsMax: number;
  /**
   * The log buffer (§3.2): unacknowledged records. At or over either limit `stall` is set.
   * The vCPU notices the stall only at its next checkpoint, so the buffer may exceed the
   * limits by the slack; beyond limit + slack `append` asserts (the driver ignored `stall`).
   */
  bufferRecordsMax: number;
  bufferBytesMax: number;
  stallSlackRecords: number;
  stallSlackBytes: number;
  /** Outputs held under the Output Rule. At the limit `stall` is set; limit + slack asserts. */
  heldOutputsMax: number;
  heldOutputsSlack: number;
  /** One `entries` message carries at most this much (one record always fits). */
  batchRecordsMax: number;
  batchBytesMax: number;
  /** Resend everything unacknowledged when acks have made no progress for this long. */
  retransmitTicks: number;
  /**
   * Lag control (§3.2): lag = primary icount − backup replayed icount. Above lagIcountMax the
   * CPU share drops by the down step every lagCheckTicks; at or below half of it, it rises by
   * the up step. The driver derives lagIcountMax from the 1 s target and its measured
   * instructions per second.
   */
  lagIcountMax: bigint;
  lagCheckTicks: number;
  cpuShareMinPermille: number;
  cpuShareStepDownPermille: number;
  cpuShareStepUpPermille: number;
}

export interface BackupConfig extends CoreConfig {
  /**
   * The backup's log buffer: received, not yet replayed. It advertises room for records
   * through `windowEndSeq`; past the byte limit it drops records (the primary resends them).
   */
  bufferRecordsMax: number;
  bufferBytesMax: number;
  /** Send a progress ack at once when replay frees this many records of window. */
  windowUpdateRecords: number;
  /**
   * Silence tolerated before the first message from a primary, in place of timeoutTicks: a
   * backup is started first, and its primary may take seconds to instantiate a large guest.
   * 0: the same as timeoutTicks.
   */
  firstContactTicks: number;
}

const CORE_DEFAULTS = {
  startSeq: 0n,
  startIcount: 0n,
  heartbeatTicks: 10, // 100 ms
  timeoutTicks: 100, // 1 s
  reconnectGraceTicks: 0,
  tasRetryMinTicks: 10, // 100 ms
  tasRetryMaxTicks: 100, // 1 s
  recordBytesMax: FRAME_BYTES_MAX,
} satisfies Partial<CoreConfig>;

/** The id of a primary's backup when there is only one and nobody named it. */
export const SOLE_BACKUP = "backup";

/** More backups than this buy nothing a VM needs (each costs a host and the log's bandwidth). */
export const BACKUPS_MAX = 8;

export const PRIMARY_DEFAULTS = {
  ...CORE_DEFAULTS,
  mode: "paired",
  backups: [SOLE_BACKUP],
  backupsMax: BACKUPS_MAX,
  bufferRecordsMax: 65_536,
  bufferBytesMax: 64 * 1024 * 1024,
  stallSlackRecords: 4_096,
  stallSlackBytes: 2 * FRAME_BYTES_MAX,
  heldOutputsMax: 4_096,
  heldOutputsSlack: 256,
  batchRecordsMax: 1_024,
  batchBytesMax: 1024 * 1024,
  retransmitTicks: 50, // 500 ms: only matters for a lossy transport; a WebSocket never loses
  lagIcountMax: 1_000_000_000n, // ~1 s at 1e9 metered instructions/s; set it from a measured rate
  lagCheckTicks: 50, // 500 ms: a slow loop, as §3.2 wants
  cpuShareMinPermille: 50,
  cpuShareStepDownPermille: 50,
  cpuShareStepUpPermille: 25,
} satisfies Partial<PrimaryConfig>;

export const BACKUP_DEFAULTS = {
  ...CORE_DEFAULTS,
  bufferRecordsMax: 65_536,
  bufferBytesMax: 64 * 1024 * 1024,
  windowUpdateRecords: 16_384,
  firstContactTicks: 0,
} satisfies Partial<BackupConfig>;

/** What a PrimaryCore is constructed with: identity required, everything else defaulted. */
export type PrimaryOptions = Partial<PrimaryConfig> & Pick<PrimaryConfig, "vmId" | "generation" | "hostId">;
export type BackupOptions = Partial<BackupConfig> & Pick<BackupConfig, "vmId" | "generation" | "hostId">;

export function primaryConfig(config: PrimaryOptions): PrimaryConfig {
  const full: PrimaryConfig = { ...PRIMARY_DEFAULTS, ...config };
  checkCore(full);
  assert(full.mode === "paired" || full.mode === "alone", "primary mode");
  positive(full.backupsMax, "backupsMax");
  if (full.mode === "paired") {
    assert(full.backups.length >= 1 && full.backups.length <= full.backupsMax, "paired: 1..backupsMax backups");
    assert(new Set(full.backups).size === full.backups.length, "backup ids differ");
  }
  positive(full.bufferRecordsMax, "bufferRecordsMax");
  positive(full.stallSlackRecords, "stallSlackRecords");
  positive(full.heldOutputsMax, "heldOutputsMax");
  positive(full.heldOutputsSlack, "heldOutputsSlack");
  positive(full.batchRecordsMax, "batchRecordsMax");
  positive(full.batchBytesMax, "batchBytesMax");
  positive(full.retransmitTicks, "retransmitTicks");
  positive(full.lagCheckTicks, "lagCheckTicks");
  // One record must fit in the byte limits, or a single large record would stall forever.
  assert(full.bufferBytesMax >= full.recordBytesMax, "bufferBytesMax holds the largest record");
  assert(full.stallSlackBytes >= full.recordBytesMax, "stallSlackBytes holds the largest record");
  assert(full.lagIcountMax > 0n, "lagIcountMax > 0");
  assert(
    Number.isSafeInteger(full.cpuShareMinPermille) && full.cpuShareMinPermille > 0 && full.cpuShareMinPermille <= 1000,
    "cpuShareMinPermille in 1..1000",
  );
  positive(full.cpuShareStepDownPermille, "cpuShareStepDownPermille");
  positive(full.cpuShareStepUpPermille, "cpuShareStepUpPermille");
  return full;
}

export function backupConfig(config: BackupOptions): BackupConfig {
  const full: BackupConfig = { ...BACKUP_DEFAULTS, ...config };
  checkCore(full);
  positive(full.bufferRecordsMax, "bufferRecordsMax");
  positive(full.windowUpdateRecords, "windowUpdateRecords");
  assert(full.bufferBytesMax >= full.recordBytesMax, "bufferBytesMax holds the largest record");
  assert(Number.isSafeInteger(full.firstContactTicks) && full.firstContactTicks >= 0, "firstContactTicks ≥ 0");
  return full;
}

function checkCore(config: CoreConfig): void {
  assert(config.vmId.length > 0, "vmId is set");
  assert(config.hostId.length > 0, "hostId is set");
  assert(Number.isSafeInteger(config.generation) && config.generation >= 1, "generation ≥ 1");
  assert(config.startSeq >= 0n && config.startIcount >= 0n, "start position ≥ 0");
  positive(config.heartbeatTicks, "heartbeatTicks");
  positive(config.timeoutTicks, "timeoutTicks");
  assert(Number.isSafeInteger(config.reconnectGraceTicks) && config.reconnectGraceTicks >= 0, "reconnectGraceTicks ≥ 0");
  // A timeout shorter than two heartbeats fires on one late heartbeat.
  assert(config.timeoutTicks >= 2 * config.heartbeatTicks, "timeoutTicks ≥ 2 × heartbeatTicks");
  positive(config.tasRetryMinTicks, "tasRetryMinTicks");
  assert(config.tasRetryMaxTicks >= config.tasRetryMinTicks, "tasRetryMaxTicks ≥ tasRetryMinTicks");
  positive(config.recordBytesMax, "recordBytesMax");
}

function positive(value: number, what: string): void {
  assert(Number.isSafeInteger(value) && value > 0, `${what} is a positive integer`);
}
