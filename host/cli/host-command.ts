// `lockstep host`: runs a host daemon (host/cluster/host-daemon.ts) until SIGINT or SIGTERM.
//
// stdout gets exactly one line once it serves: READY {"id":...,"pid":N,"url":"http://..."};
// stderr gets the structured logs, one JSON object per line, each naming its VM and generation.

import os from "node:os";
import { parseArgs } from "node:util";
import { HostDaemon } from "../cluster/host-daemon.js";
import { registerWithCluster } from "../cluster/registration.js";
import { ETCD_AUTH_ENV, etcdAuthFromEnv, parseEtcdUrl } from "../ft/etcd-url.js";
import { LockstepError } from "../errors.js";
import { createLogger } from "../log.js";
import { StorageClient } from "../storage/client.js";
import { STORAGE_TOKEN_ENV } from "../storage/cli.js";
import { applyLogCompression, integer, logLevel, secret, untilSignal } from "./flags.js";

/** The control API's and logging channels' token, read when --token is not given. */
export const HOST_TOKEN_ENV = "LOCKSTEP_TOKEN";
export const HOST_PORT_DEFAULT = 7430;

export const HOST_USAGE = `usage:
  lockstep host --storage URL [--id ID] [--bind HOST] [--port PORT] [--token TOKEN] [--log-level LEVEL]
                [--log-compression on|off] [--arbiter etcd://HOST:PORT] [--cluster URL]

Runs VMs as primaries and backups; control API and logging channels on one HTTP port.
  --storage  the storage server (ws://HOST:PORT, as its READY line says)
  --id       this host's name, unique in the cluster (default: hostname-pid)
  --bind     address to bind (default 127.0.0.1); any non-loopback address requires a token
  --port     TCP port (default ${HOST_PORT_DEFAULT}; 0 picks a free one, printed in the READY line)
  --token    secret for the control API and logging channels (default: $${HOST_TOKEN_ENV}, else none)
  --log-compression  offer and accept deflate on logging channels (default: $LOCKSTEP_LOG_COMPRESSION,
             else off); a pair compresses only if both hosts have it on
  --arbiter  who settles go-live: etcd://HOST:PORT[,HOST:PORT...] for an etcd cluster (user:password
             from $${ETCD_AUTH_ENV} if it needs one); default: the storage server's registers
  --cluster  a cluster service (\`lockstep cluster\`) to register with: http://HOST:PORT, the same
             token; it places VMs here and restores their redundancy
  The storage server's token is read from $${STORAGE_TOKEN_ENV}.
Prints READY {"id":...,"pid":...,"url":...} on stdout once serving; logs JSON lines on stderr.`;

export async function hostCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      storage: { type: "string" },
      id: { type: "string" },
      bind: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: String(HOST_PORT_DEFAULT) },
      token: { type: "string" },
      arbiter: { type: "string" },
      cluster: { type: "string" },
      "log-level": { type: "string", default: "info" },
      "log-compression": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HOST_USAGE + "\n");
    return 0;
  }
  applyLogCompression(values["log-compression"]);
  if (values.storage === undefined) throw new LockstepError("USAGE", `--storage URL is required\n${HOST_USAGE}`);
  if (values.cluster !== undefined && !/^https?:\/\/[^/]+\/?$/.test(values.cluster)) throw new LockstepError("USAGE", `--cluster takes http://HOST:PORT, not "${values.cluster}"`);
  const id = values.id ?? `${os.hostname()}-${process.pid}`;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(id)) throw new LockstepError("USAGE", `--id takes letters, digits, '.', '_' and '-', not "${id}"`);
  // Checked before anything connects: a bad URL is a usage error, an unreachable etcd is not
  // (the arbiter answers "unreachable" until it is reachable, and nobody goes live meanwhile).
  if (values.arbiter !== undefined) {
    parseEtcdUrl(values.arbiter);
    etcdAuthFromEnv();
  }
  const log = createLogger(logLevel(values["log-level"]));
  const token = secret(values.token, HOST_TOKEN_ENV, "--token");
  const storage = await StorageClient.connect(values.storage, {
    clientId: id,
    token: secret(undefined, STORAGE_TOKEN_ENV, `$${STORAGE_TOKEN_ENV}`),
  }).catch((error: Error) => {
    throw new LockstepError("USAGE", `cannot reach the storage server at ${values.storage}: ${error.message}`);
  });
  storage.onState((state, reason) => log.warn("storage server", { state, reason, event: state === "ready" ? "storageUp" : "storageDown" }));
  // Loaded only when asked for: the gRPC client costs every host ~0.5 s of startup otherwise.
  const arbiter = values.arbiter === undefined ? null : (await import("../ft/etcd-arbiter.js")).etcdArbiter(values.arbiter, { hostId: id, log });
  const daemon = await HostDaemon.start({
    id,
    bind: values.bind,
    port: integer(values.port, "--port", 0, 65535),
    token,
    storage,
    arbiter,
    log,
  }).catch(async (error: unknown) => {
    // The etcd client's keepalives would hold the process open after the error.
    await arbiter?.close();
    throw error;
  });
  process.stdout.write(`READY ${JSON.stringify({ id, pid: process.pid, url: daemon.url })}\n`);
  log.info("host serving", { id, url: daemon.url });
  // With etcd, its membership key says where this host serves: `lockstep cluster` reads it there.
  arbiter?.announce(daemon.url);
  const registration =
    values.cluster === undefined ? null : registerWithCluster({ clusterUrl: values.cluster.replace(/\/$/, ""), id, url: daemon.url, token, log });

  const signal = await untilSignal();
  log.info("signal received", { signal });
  registration?.stop();
  await daemon.close();
  await arbiter?.close();
  await storage.close();
  return 0;
}
