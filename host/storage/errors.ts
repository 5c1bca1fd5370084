// Errors of the storage client, built here only, with stable codes: callers (RemoteDisk, the FT
// driver) branch on `code` and on `retryable`, never on messages.
//
// A code is either a status the server answered (protocol/storage-frames.ts, STATUS_NAMES) or
// one the client itself decided: TIMEOUT, DISCONNECTED, UNREACHABLE, CLOSED.
//
// `retryable` means "nothing is known to have gone wrong with the request itself": the same
// request may succeed later. Every operation of the protocol is idempotent (a write of the same
// blocks, a test-and-set by the same owner), so repeating one whose answer was lost is safe;
// the caller still decides whether and when (RemoteDisk retries, bounded; the FT layer waits).

import { type StatusName, Status, statusName } from "../../protocol/storage-frames.js";

export type StorageErrorCode =
  | Exclude<StatusName, "OK">
  /** No answer within the request timeout; the connection was dropped as suspect. */
  | "TIMEOUT"
  /** The connection dropped while the request was in flight: it may or may not have run. */
  | "DISCONNECTED"
  /** The client has no connection to the server right now: the request was not sent. */
  | "UNREACHABLE"
  /** The client was closed, or gave up for good (a fatal answer such as UNAUTHORIZED). */
  | "CLOSED";

const RETRYABLE: ReadonlySet<StorageErrorCode> = new Set<StorageErrorCode>([
  "BUSY",
  "SHUTTING_DOWN",
  "TOO_MANY_CONNECTIONS",
  "HELLO_TIMEOUT",
  "TIMEOUT",
  "DISCONNECTED",
  "UNREACHABLE",
]);

export class StorageError extends Error {
  override readonly name = "StorageError";
  readonly retryable: boolean;

  constructor(
    readonly code: StorageErrorCode,
    /** The message without the code, for logs that want it alone. */
    readonly detail: string,
  ) {
    super(`${detail} (${code})`);
    this.retryable = RETRYABLE.has(code);
  }
}

/** The one place StorageErrors are made. Returns the error; the caller throws it. */
export function storageError(code: StorageErrorCode, detail: string): StorageError {
  return new StorageError(code, detail.replace(/[\r\n]+/g, " "));
}

/** The error for a non-OK status answered by the server. */
export function statusError(status: Status, message: string): StorageError {
  const name = statusName(status);
  if (name === "OK") throw new Error("assertion failed: an OK status is not an error");
  return storageError(name, message === "" ? name.toLowerCase().replace(/_/g, " ") : message);
}

export function isStorageError(error: unknown, code?: StorageErrorCode): error is StorageError {
  return error instanceof StorageError && (code === undefined || error.code === code);
}

/**
 * Server side: an operation that failed with a status to answer (BAD_REQUEST, NO_DISK,
 * DISK_MISMATCH, IO_ERROR). Anything else thrown by an operation is a bug.
 */
export class OpError extends Error {
  override readonly name = "OpError";

  constructor(
    readonly status: Exclude<Status, Status.Ok>,
    message: string,
  ) {
    super(message);
  }
}

/** The one place OpErrors are made. */
export function opError(status: Exclude<Status, Status.Ok>, message: string): OpError {
  return new OpError(status, message.replace(/[\r\n]+/g, " "));
}

/** A file-system failure as an IO_ERROR, naming the errno code rather than the whole message. */
export function ioError(what: string, error: unknown): OpError {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  return opError(Status.IoError, `${what} failed: ${code ?? (error as Error)?.message ?? String(error)}`);
}
