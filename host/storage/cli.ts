// `lockstep storage`: runs a storage server until SIGINT or SIGTERM.
//
// stdout gets exactly one line, once listening: READY {"url":"ws://127.0.0.1:PORT","pid":N},
// so that a supervisor or a test can wait for it and learn the port (--port 0 picks one).
// stderr gets the structured logs, one JSON object per line (host/log.ts). A failure to
// start is a LockstepError, which the CLI prints as its usual single line.

import { parseArgs } from "node:util";
import { integer, logLevel, optionalInteger, secret, untilSignal } from "../cli/flags.js";
import { createLogger } from "../log.js";
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
  const token = secret(values.token, STORAGE_TOKEN_ENV, "--token");
  const log = createLogger(logLevel(values["log-level"]));

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

  const signal = await untilSignal();
  log.info("signal received", { signal });
  await server.close();
  return 0;
}
