// The storage server and its client (docs/storage.md).

export { storageCommand, STORAGE_PORT_DEFAULT, STORAGE_TOKEN_ENV } from "./cli.js";
export {
  CLIENT_DEFAULTS,
  type DiskInfo,
  type GenerationOwner,
  type StateListener,
  StorageClient,
  type StorageClientOptions,
  type StorageState,
  type TestAndSetAnswer,
} from "./client.js";
export { isStorageError, StorageError, type StorageErrorCode } from "./errors.js";
export { createLogger, type Logger, type LogLevel } from "../log.js";
export { isLoopback, STORAGE_DEFAULTS, type StorageServer, type StorageServerOptions, startStorageServer } from "./server.js";
