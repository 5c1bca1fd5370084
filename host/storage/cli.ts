// `lockstep storage`: runs a storage server until SIGINT or SIGTERM.
//
// stdout gets exactly one line, once listening: READY {"url":"ws://127.0.0.1:PORT","pid":N},
// so that a supervisor or a test can wait for it and learn the port (--port 0 picks one).
// stderr gets the structured logs, one JSON object per line (host/storage/log.ts). A failure to
// start is a LockstepError, which the CLI prints as its usual single line.

import { parseArgs } from "node:util";
import { LockstepError } from "../errors.js";
import { createLogger, LOG_LEVELS, type LogLevel } from "./log.js";
import { STORAGE_DEFAULTS, startStorageServer } from "./server.js";

export const STORAGE_PORT_DEFAULT = 7420;
export const STORAGE_DIR_DEFAULT = ".lockstep/storage";
/** Read when --token is not given, so that the secret need not appear in `ps`. */
export const STORAGE_TOKEN_ENV = "LOCKSTEP_STORAGE_TOKEN";

export const STORAGE_USAGE = `usage:
  lockstep storage [--host HOST] [--port PORT] [--dir DIR] [--token TOKEN]
                   [--connections-max N] [--inflight-max N] [--hello-timeout-ms MS] [--log-level LEVEL]

Serves virtual disks and test-and-set registers over WebSocket (docs/storage.md).
  --host     address to bind (default 127.0.0.1); any non-loopback address requires a token
  --port     TCP port (default ${STORAGE_PORT_DEFAULT}; 0 picks a free one, printed in the READY line)
  --dir      where disks and registers are kept (default ${STORAGE_DIR_DEFAULT})
  --token    secret clients must present (default: $${STORAGE_TOKEN_ENV}, else none)
Prints READY {"url":...,"pid":...} on stdout once listening; logs JSON lines on stderr.`;

export async function storageCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      host: { type: "string", default: STORAGE_DEFAULTS.host },
      port: { type: "string", default: String(STORAGE_PORT_DEFAULT) },
      dir: { type: "string", default: STORAGE_DIR_DEFAULT },
      token: { type: "string" },
      "connections-max": { type: "string" },
      "inflight-max": { type: "string" },
      "hello-timeout-ms": { type: "string" },
      "log-level": { type: "string", default: "info" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(STORAGE_USAGE + "\n");
    return 0;
  }
  const token = values.token ?? process.env[STORAGE_TOKEN_ENV] ?? null;
  if (token !== null && (token.length === 0 || Buffer.byteLength(token) > 256)) {
    throw new LockstepError("USAGE", "--token takes 1 to 256 bytes");
  }
  const level = values["log-level"];
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new LockstepError("USAGE", `--log-level takes one of ${LOG_LEVELS.join(", ")}, not "${level}"`);
  }
  const log = createLogger(level as LogLevel);

  const server = await startStorageServer({
    host: values.host,
    port: integer(values.port, "--port", 0, 65535),
    dir: values.dir,
    token,
    connectionsMax: optionalInteger(values["connections-max"], "--connections-max", 1, 100_000),
    inflightMax: optionalInteger(values["inflight-max"], "--inflight-max", 1, 100_000),
    helloTimeoutMs: optionalInteger(values["hello-timeout-ms"], "--hello-timeout-ms", 1, 3_600_000),
    log,
  });
  process.stdout.write(`READY ${JSON.stringify({ url: server.url, pid: process.pid })}\n`);

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    const stop = (received: NodeJS.Signals) => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      resolve(received);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  log.info("signal received", { signal });
  await server.close();
  return 0;
}

function integer(text: string, flag: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new LockstepError("USAGE", `${flag} takes an integer from ${min} to ${max}, not "${text}"`);
  }
  return value;
}

function optionalInteger(text: string | undefined, flag: string, min: number, max: number): number | undefined {
  return text === undefined ? undefined : integer(text, flag, min, max);
}
