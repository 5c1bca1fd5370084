// Structured logs of every Lockstep daemon (storage, host, up): one JSON object per line on stderr,
//   {"ts":"<ISO 8601>","level":"info","msg":"...","vm":"kv"|null,"generation":3|null, ...}
// `vm` and `generation` are always present (null when the line is about neither), so that
// a reader can filter a VM's history without knowing every message. Other fields depend on
// the message: conn (connection number), client, code (a stable status or error code), ...
//
// Lines are written synchronously (stderr on a pipe or file is synchronous in Node on Linux),
// so the last words before a crash are not lost.

export type LogLevel = "debug" | "info" | "warn" | "error";

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export type LogFields = Record<string, unknown> & { vm?: string | null; generation?: number | null };

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

export function createLogger(level: LogLevel = "info", write: (line: string) => void = (line) => process.stderr.write(line)): Logger {
  const threshold = LOG_LEVELS.indexOf(level);
  const emit = (lineLevel: LogLevel, msg: string, fields: LogFields = {}) => {
    if (LOG_LEVELS.indexOf(lineLevel) < threshold) return;
    const { vm = null, generation = null, ...rest } = fields;
    write(JSON.stringify({ ts: new Date().toISOString(), level: lineLevel, msg, vm, generation, ...rest }, bigintAsString) + "\n");
  };
  return {
    debug: (msg, fields) => emit("debug", msg, fields),
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
  };
}

/** Discards everything (library use without logs). */
export const SILENT_LOGGER: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Instruction counts and seqs are bigints: JSON has no such type, so they are written as strings. */
function bigintAsString(_key: string, value: unknown): unknown {
  return typeof value === "bigint" ? String(value) : value;
}
