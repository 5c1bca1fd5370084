// `lockstep cluster`: the cluster service on its own, for hosts on any number of machines.
// It starts no process: hosts join it, by heartbeat (`lockstep host --cluster URL`) or, with an
// etcd arbiter, by the membership keys they keep in etcd. It places VMs on them (POST /api/vms,
// the dashboard), restores a VM's redundancy after a failure with a live clone, migrates, and
// serves the status API and the dashboard, as `lockstep up` does for its own children.
//
// stdout gets one line once it serves: READY {"url":...,"pid":N}; stderr the JSON log lines,
// its hosts' events among them, each with its host.

import { parseArgs } from "node:util";
import { EmbeddedCluster } from "../cluster/embedded.js";
import { LockstepError } from "../errors.js";
import { parseEtcdUrl } from "../ft/etcd-url.js";
import { BACKUPS_MAX, TIMEOUT_MS_MAX, TIMEOUT_MS_MIN } from "../ft/config.js";
import { createLogger } from "../log.js";
import { integer, logLevel, secret, untilSignal } from "./flags.js";
import { HOST_TOKEN_ENV } from "./host-command.js";

export const CLUSTER_PORT_DEFAULT = 7410;

export const CLUSTER_USAGE = `usage:
  lockstep cluster (--storage URL | --arbiter etcd://HOST:PORT) [--port PORT] [--bind HOST] [--token TOKEN]
                   [--backups N] [--no-restore] [--disk-blocks N] [--memory-mib N] [--timeout-ms MS] [--log-level LEVEL]

The cluster service alone: hosts on any machine join it, and it places VMs on them, restores
their redundancy and serves GET /api/status and the dashboard (http://127.0.0.1:${CLUSTER_PORT_DEFAULT}/).
  --storage     the storage server the hosts use (ws://HOST:PORT): hosts join with
                \`lockstep host --storage URL --cluster http://THIS:PORT\` and heartbeat
  --arbiter     or etcd (etcd://HOST:PORT[,...]): hosts started with the same --arbiter join by
                their membership keys there, and no storage server is needed here
  --port        API and dashboard port (default ${CLUSTER_PORT_DEFAULT}; 0 picks a free one); --bind (default 127.0.0.1)
  --token       the hosts' token, required by the API when bound beyond loopback (default: $${HOST_TOKEN_ENV})
  --backups     backups per VM, each on a host of its own (default 1; docs/ft-protocol.md)
  --no-restore  leave a VM that lost its backup without one
  --disk-blocks, --memory-mib, --timeout-ms   for the VMs it starts (defaults 4096, 256, 1000)`;

export async function clusterCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      storage: { type: "string" },
      arbiter: { type: "string" },
      port: { type: "string", default: String(CLUSTER_PORT_DEFAULT) },
      bind: { type: "string", default: "127.0.0.1" },
      token: { type: "string" },
      backups: { type: "string", default: "1" },
      "no-restore": { type: "boolean", default: false },
      "disk-blocks": { type: "string", default: "4096" },
      "memory-mib": { type: "string", default: "256" },
      "timeout-ms": { type: "string", default: "1000" },
      "log-level": { type: "string", default: "info" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(CLUSTER_USAGE + "\n");
    return 0;
  }
  if ((values.storage === undefined) === (values.arbiter === undefined)) {
    throw new LockstepError("USAGE", `give the hosts' --storage URL or their --arbiter etcd://..., one of them\n${CLUSTER_USAGE}`);
  }
  if (values.arbiter !== undefined) parseEtcdUrl(values.arbiter);
  const cluster = new EmbeddedCluster({
    vms: [],
    hosts: 0,
    standalone: { storageUrl: values.storage ?? null },
    switch: false,
    restoreRedundancy: !values["no-restore"],
    backups: integer(values.backups, "--backups", 1, BACKUPS_MAX),
    bind: values.bind,
    port: integer(values.port, "--port", 0, 65535),
    dir: null,
    diskBlocks: integer(values["disk-blocks"], "--disk-blocks", 1, 1 << 24),
    memoryMib: integer(values["memory-mib"], "--memory-mib", 1, 4096),
    timeoutMs: integer(values["timeout-ms"], "--timeout-ms", TIMEOUT_MS_MIN, TIMEOUT_MS_MAX),
    ports: {},
    token: secret(values.token, HOST_TOKEN_ENV, "--token"),
    arbiter: values.arbiter ?? null,
    log: createLogger(logLevel(values["log-level"])),
  });
  const signal = untilSignal();
  let ready: Record<string, unknown> | null;
  try {
    ready = (await Promise.race([cluster.start(), signal.then(() => null)])) as Record<string, unknown> | null;
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  if (ready !== null) {
    process.stdout.write(`READY ${JSON.stringify(ready)}\n`);
    await signal;
  }
  await cluster.stop();
  return 0;
}
