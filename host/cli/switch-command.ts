// `lockstep switch`: runs a switch (host/switch/switch.ts, docs/switch.md) until SIGINT or
// SIGTERM.
//
// stdout gets exactly one line once it serves:
//   READY {"url":"http://...","pid":N,"services":{"kv":"127.0.0.1:PORT"}}
// stderr gets the structured logs, one JSON object per line, each naming its VM and generation.

import { parseArgs } from "node:util";
import { LockstepError } from "../errors.js";
import { createLogger } from "../log.js";
import { type ServiceSpec, SWITCH_PORT_DEFAULT, Switch } from "../switch/switch.js";
import { integer, logLevel, secret, untilSignal } from "./flags.js";

/** The token's variable when --token is not given: the same one as the hosts' (host-command.ts). */
export const SWITCH_TOKEN_ENV = "LOCKSTEP_TOKEN";

export const SWITCH_USAGE = `usage:
  lockstep switch --service NAME=VM:VPORT[@HOST:PORT]... [--bind HOST] [--port PORT] [--token TOKEN] [--log-level LEVEL]

Public TCP ports whose client connections survive a failover of the VM behind them.
  --service  a public port: its clients go to virtual port VPORT of VM (repeatable);
             HOST:PORT default to 127.0.0.1 and a free port, printed in the READY line
  --bind     address of the status API and the VMs' links (default 127.0.0.1); any
             non-loopback address requires a token
  --port     its TCP port (default ${SWITCH_PORT_DEFAULT}; 0 picks a free one)
  --token    secret the links' HELLO and the status API must carry (default: $${SWITCH_TOKEN_ENV}, else none)
Prints READY {"url":...,"pid":...,"services":{NAME:"HOST:PORT"}} on stdout once serving; logs JSON lines on stderr.`;

export async function switchCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      service: { type: "string", multiple: true, default: [] },
      bind: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: String(SWITCH_PORT_DEFAULT) },
      token: { type: "string" },
      "log-level": { type: "string", default: "info" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(SWITCH_USAGE + "\n");
    return 0;
  }
  if (values.service.length === 0) throw new LockstepError("USAGE", `--service NAME=VM:VPORT is required\n${SWITCH_USAGE}`);
  const log = createLogger(logLevel(values["log-level"]));
  const sw = await Switch.start({
    bind: values.bind,
    port: integer(values.port, "--port", 0, 65535),
    token: secret(values.token, SWITCH_TOKEN_ENV, "--token"),
    services: values.service.map(parseService),
    log,
  });
  process.stdout.write(`READY ${JSON.stringify({ url: sw.url, pid: process.pid, services: sw.serviceAddresses() })}\n`);

  const signal = await untilSignal();
  log.info("signal received", { signal });
  await sw.close();
  return 0;
}

/** NAME=VM:VPORT[@HOST:PORT], HOST an IPv4 address, a name, or an IPv6 address in brackets. */
export function parseService(text: string): ServiceSpec {
  const match = /^([^=]+)=([^:@]+):(\d+)(?:@(\[[0-9A-Fa-f:.]+\]|[^:@[\]]+):(\d+))?$/.exec(text);
  if (match === null) throw new LockstepError("USAGE", `--service takes NAME=VM:VPORT[@HOST:PORT], not "${text}"`);
  const [, name, vm, vport, host, port] = match;
  return {
    name: name!,
    vm: vm!,
    vport: integer(vport!, `--service ${name} VPORT`, 0, 65535),
    host: host === undefined ? "127.0.0.1" : host.replace(/^\[(.*)\]$/, "$1"),
    port: port === undefined ? 0 : integer(port, `--service ${name} PORT`, 0, 65535),
  };
}
