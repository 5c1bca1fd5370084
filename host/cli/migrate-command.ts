// `lockstep migrate <vm> --role primary|backup --to <host>`: asks a running `lockstep up` to
// move one side of a VM to another host (host/cluster/embedded.ts, `migrate`), and prints
// what it did as one JSON line. Exit status 0 once the move is done.

import { parseArgs } from "node:util";
import { ApiError, fetchJson } from "../cluster/http.js";
import { LockstepError } from "../errors.js";
import { secret } from "./flags.js";
import { HOST_TOKEN_ENV } from "./host-command.js";
import { UP_PORT_DEFAULT } from "./up-command.js";

export const MIGRATE_USAGE = `usage:
  lockstep migrate <vm> --role primary|backup --to HOST [--cluster URL] [--token TOKEN]

Moves the VM's primary or backup to HOST (a host id, as GET /api/status names it) with a live
clone; a primary hands over to its clone there. Primary and backup never share a host.
  --cluster  the cluster's status API (default http://127.0.0.1:${UP_PORT_DEFAULT})
  --token    the cluster's token, if it has one (default: $${HOST_TOKEN_ENV})
Prints {"vm":...,"role":...,"from":...,"to":...,"moved":true,"ms":N} when done.`;

/** A migration waits for a clone and a go-live: far longer than a status request. */
const MIGRATE_TIMEOUT_MS = 120_000;

export async function migrateCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      role: { type: "string" },
      to: { type: "string" },
      cluster: { type: "string", default: `http://127.0.0.1:${UP_PORT_DEFAULT}` },
      token: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(MIGRATE_USAGE + "\n");
    return 0;
  }
  if (positionals.length !== 1) throw new LockstepError("USAGE", `name one VM\n${MIGRATE_USAGE}`);
  if (values.role !== "primary" && values.role !== "backup") throw new LockstepError("USAGE", `--role takes primary or backup\n${MIGRATE_USAGE}`);
  if (values.to === undefined) throw new LockstepError("USAGE", `--to HOST is required\n${MIGRATE_USAGE}`);
  const url = `${values.cluster.replace(/\/$/, "")}/api/vms/${encodeURIComponent(positionals[0]!)}/migrate`;
  try {
    const result = await fetchJson(url, {
      method: "POST",
      body: { role: values.role, to: values.to },
      token: secret(values.token, HOST_TOKEN_ENV, "--token"),
      timeoutMs: MIGRATE_TIMEOUT_MS,
    });
    process.stdout.write(JSON.stringify(result) + "\n");
    return 0;
  } catch (error) {
    // The cluster's answer is the user's error: a host that does not exist, a VM without a primary.
    const message = error instanceof ApiError ? `${error.message} (${error.code})` : `cannot reach the cluster at ${values.cluster}: ${(error as Error).message}`;
    throw new LockstepError("USAGE", message);
  }
}
