// The FT protocol core: pure state machines for the primary and the backup (docs/ft-protocol.md).

export { BackupCore, type BackupReady, type BackupState } from "./backup.js";
export { type HaltReason, isTerminal, type ProtocolError, READY_ERRORS_MAX } from "./common.js";
export {
  BACKUP_DEFAULTS,
  type BackupConfig,
  type BackupOptions,
  backupConfig,
  type CoreConfig,
  PRIMARY_DEFAULTS,
  type PrimaryConfig,
  type PrimaryOptions,
  primaryConfig,
  TICK_MS,
} from "./config.js";
export type * from "./messages.js";
export { PrimaryCore, type PrimaryReady, type PrimaryState } from "./primary.js";
