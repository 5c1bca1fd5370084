// Every handled operating error of the host is built here, with a stable code, so that the
// CLI, the logs and the tests can tell them apart without parsing messages. Programmer
// errors are assertions (see assert below), not LockstepErrors.

export type ErrorCode =
  | "FILE_NOT_FOUND"
  | "GUEST_UNKNOWN"
  | "GUEST_INVALID"
  | "GUEST_TRAP"
  | "GUEST_OOM"
  | "LOG_MODULE_MISMATCH"
  | "LOG_INVALID"
  | "REPLAY_DIVERGED"
  | "USAGE"
  | "DISK_IO"
  | "CLONE_REFUSED"
  | "REPLICA_REFUSED"
  | "DIGEST_PROBE_FAILED";

export class LockstepError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "LockstepError";
  }
}

/** A broken invariant of our own code: never caught, never shown as a user error. */
export function assert(condition: unknown, what: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${what}`);
}
