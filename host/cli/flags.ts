// Parsing of the daemons' flags: integers in a range, secrets, log levels. Every mistake is a
// USAGE error that names the flag.

import { LockstepError } from "../errors.js";
import { LOG_COMPRESSION_ENV } from "../ft/channel.js";
import { LOG_LEVELS, type LogLevel } from "../log.js";

export function integer(text: string, flag: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new LockstepError("USAGE", `${flag} takes an integer from ${min} to ${max}, not "${text}"`);
  }
  return value;
}

export function optionalInteger(text: string | undefined, flag: string, min: number, max: number): number | undefined {
  return text === undefined ? undefined : integer(text, flag, min, max);
}

/** A shared secret from its flag or, so that it need not appear in `ps`, from the environment. */
export function secret(flagValue: string | undefined, envName: string, flag: string): string | null {
  const token = flagValue ?? process.env[envName] ?? null;
  if (token !== null && (token.length === 0 || Buffer.byteLength(token) > 256)) {
    throw new LockstepError("USAGE", `${flag} (or $${envName}) takes 1 to 256 bytes`);
  }
  return token;
}

export function logLevel(text: string): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(text)) {
    throw new LockstepError("USAGE", `--log-level takes one of ${LOG_LEVELS.join(", ")}, not "${text}"`);
  }
  return text as LogLevel;
}

/**
 * `--log-compression on|off`, kept in $LOCKSTEP_LOG_COMPRESSION: both ends of the logging channel
 * read it there (host/ft/channel.ts), and the hosts that `lockstep up` starts inherit it.
 */
export function applyLogCompression(text: string | undefined): void {
  if (text === undefined) return;
  if (text !== "on" && text !== "off") throw new LockstepError("USAGE", `--log-compression takes on or off, not "${text}"`);
  process.env[LOG_COMPRESSION_ENV] = text;
}

/** Resolves with the first SIGINT or SIGTERM. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const stop = (received: NodeJS.Signals) => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve(received);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}
