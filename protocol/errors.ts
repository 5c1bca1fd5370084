// Errors of the log codec. Every CodecError is built here, by `codecError`, so that codes and
// message shapes stay stable: callers (the recorder, the backup, the CLI) branch on `code`,
// and humans read one line that says what, where, and which code.
//
// CodecError is for *operating* errors: bytes that came from a file or a socket and are
// wrong. Programmer errors (encoding a record whose fields are out of range, appending to a
// closed writer) are assertions instead, and never surface as a CodecError.

/** Stable error codes. Values are part of the interface: never rename. */
export type CodecErrorCode =
  /** The bytes do not start with the log magic: not a Lockstep log at all. */
  | "LOG_BAD_MAGIC"
  /** The header names a format version this reader does not know (newer, or 0). */
  | "LOG_BAD_VERSION"
  /** A header or record checksum does not match its bytes. */
  | "LOG_CHECKSUM"
  /** The bytes end inside the header or inside a record frame. */
  | "LOG_TRUNCATED"
  /** A length field exceeds its limit; rejected before anything is allocated for it. */
  | "LOG_TOO_LARGE"
  /** The checksum matched but the contents break the format (unknown kind, bad varint...). */
  | "LOG_MALFORMED"
  /** Sequence numbers are not dense and increasing: records were lost, duplicated or reordered. */
  | "LOG_BAD_SEQ";

/** How the first words of the message read for each code. */
const SUMMARY: Record<CodecErrorCode, string> = {
  LOG_BAD_MAGIC: "not a Lockstep log",
  LOG_BAD_VERSION: "log version unsupported",
  LOG_CHECKSUM: "log corrupt",
  LOG_TRUNCATED: "log truncated",
  LOG_TOO_LARGE: "log limit exceeded",
  LOG_MALFORMED: "log malformed",
  LOG_BAD_SEQ: "log sequence broken",
};

export class CodecError extends Error {
  override readonly name = "CodecError";

  constructor(
    readonly code: CodecErrorCode,
    /**
     * Byte offset in the stream (file, or all bytes received on a channel) where the problem
     * is: for record errors the first byte of the offending frame, so that everything before
     * `offset` is a sequence of good frames; for header errors the offending field.
     */
    readonly offset: number,
    /** Complete, valid records decoded before the error (0 for header errors). */
    readonly recordCount: number,
    /** The message without the prefix and code, for tests and logs that want it alone. */
    readonly detail: string,
  ) {
    super(`${SUMMARY[code]} at byte ${offset}: ${detail} (${code})`);
  }
}

/** The one place CodecErrors are made. Returns the error; the caller throws it. */
export function codecError(
  code: CodecErrorCode,
  offset: number,
  detail: string,
  recordCount = 0,
): CodecError {
  // A message is one line: details are built from numbers and fixed words, never from
  // decoded strings, but guard anyway so that a log line can never be split.
  return new CodecError(code, offset, recordCount, detail.replace(/[\r\n]+/g, " "));
}

export function isCodecError(error: unknown, code?: CodecErrorCode): error is CodecError {
  return error instanceof CodecError && (code === undefined || error.code === code);
}
