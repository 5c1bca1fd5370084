// `lockstep up`: the embedded demo cluster (host/cluster/embedded.ts) until Ctrl-C.
//
// stdout gets exactly one line once the guest runs under FT: READY {json} with every endpoint,
// each host's id and pid, and where the guest's ports are. On a terminal, a few lines of
// how-to follow it. stderr gets every daemon's JSON log lines, each with its host.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { EmbeddedCluster } from "../cluster/embedded.js";
import { VM_NAME } from "../cluster/vm-spec.js";
import { LockstepError } from "../errors.js";
import { createLogger } from "../log.js";
import { applyLogCompression, integer, logLevel, secret, untilSignal } from "./flags.js";
import { HOST_TOKEN_ENV } from "./host-command.js";
import { BACKUPS_MAX, TIMEOUT_MS_MAX, TIMEOUT_MS_MIN } from "../ft/config.js";

export const UP_PORT_DEFAULT = 7400;

export const UP_USAGE = `usage:
  lockstep up [--guest NAME]... [--hosts N] [--backups N] [--vm NAME] [--no-switch] [--no-restore] [--port PORT] [--bind HOST] [--dir DIR]
              [--guest-port VPORT=PORT]... [--disk-blocks N] [--memory-mib N] [--timeout-ms MS]
              [--token TOKEN] [--log-compression on|off] [--arbiter etcd://HOST:PORT] [--disk-reads logged|backup] [--disk shared|local]

Starts a storage server, a switch and N hosts (default 3) as child processes, runs each
guest's primary and its backups each on a host of its own, and serves GET /api/status and the
dashboard (http://127.0.0.1:7400/) until Ctrl-C.
  --guest       an example's name or a .wasm path; repeat for more VMs (default: kv and http)
  --vm          the VM's name, with one --guest (default: the guest's name)
  --backups     backups per VM (default 1; --hosts must be at least one more): an output leaves
                once every backup holds its log, and any one of them can go live
  --no-switch   no switch: clients connect to the primary's host and reconnect after a failover
  --no-restore  leave a VM that lost its backup without one (default: a live clone of its
                primary becomes its backup on the least loaded other host)
  --port        status API port (default ${UP_PORT_DEFAULT}; 0 picks a free one); --bind (default 127.0.0.1)
  --dir         keep disks and registers here (default: a temporary folder, removed at exit)
  --guest-port  serve the guests' virtual port VPORT on this TCP port (default: a free one)
  --timeout-ms  declare a silent primary or backup failed after this long (default 1000)
  --disk-reads  "logged" (default): disk read data travel in the log; "backup": the backup reads
                the shared disk itself, which takes them off the logging channel (§4.2)
  --disk        "shared" (default): disks on the storage server; "local": each host keeps its own
                copy under $LOCKSTEP_LOCAL_DISK_DIR (default DIR/local-disks, or a temporary
                folder), and a new backup gets only the blocks that differ (§4.1)
  --log-compression  deflate on the logging channels (default: $LOCKSTEP_LOG_COMPRESSION, else off)
  --arbiter     settle go-live on etcd (etcd://HOST:PORT[,...]; user:password from $LOCKSTEP_ETCD_TOKEN)
                rather than on the storage server's registers; passed to every host
  --token       required by the status API when bound beyond loopback (default: $${HOST_TOKEN_ENV})`;

export async function upCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      guest: { type: "string", multiple: true, default: ["kv", "http"] },
      "no-switch": { type: "boolean", default: false },
      "no-restore": { type: "boolean", default: false },
      vm: { type: "string" },
      hosts: { type: "string", default: "3" },
      backups: { type: "string", default: "1" },
      port: { type: "string", default: String(UP_PORT_DEFAULT) },
      bind: { type: "string", default: "127.0.0.1" },
      dir: { type: "string" },
      "guest-port": { type: "string", multiple: true, default: [] },
      "disk-blocks": { type: "string", default: "4096" },
      "memory-mib": { type: "string", default: "256" },
      "timeout-ms": { type: "string", default: "1000" },
      token: { type: "string" },
      arbiter: { type: "string" },
      "disk-reads": { type: "string", default: "logged" },
      disk: { type: "string", default: "shared" },
      "log-level": { type: "string", default: "info" },
      "log-compression": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(UP_USAGE + "\n");
    return 0;
  }
  // Before any host starts: they inherit the setting from this process's environment.
  applyLogCompression(values["log-compression"]);
  if (values.vm !== undefined && values.guest.length !== 1) throw new LockstepError("USAGE", "--vm names the VM of a single --guest");
  const vms = values.guest.map((guest) => ({ guest, vm: values.vm ?? guest.replace(/^.*\//, "").replace(/\.wasm$/, "").toLowerCase() }));
  for (const { vm } of vms) {
    if (!VM_NAME.test(vm)) throw new LockstepError("USAGE", `a VM name takes lowercase letters, digits and '-', not "${vm}" (--vm)`);
  }
  if (new Set(vms.map((v) => v.vm)).size !== vms.length) throw new LockstepError("USAGE", "each --guest once: VM names must differ");
  const ports: Record<string, number> = {};
  for (const mapping of values["guest-port"]) {
    const match = /^(\d{1,5})=(\d{1,5})$/.exec(mapping);
    if (match === null) throw new LockstepError("USAGE", `--guest-port takes VPORT=PORT, not "${mapping}"`);
    ports[String(integer(match[1]!, "--guest-port VPORT", 1, 65535))] = integer(match[2]!, "--guest-port PORT", 0, 65535);
  }
  const diskReads = values["disk-reads"];
  if (diskReads !== "logged" && diskReads !== "backup") throw new LockstepError("USAGE", `--disk-reads takes logged or backup, not "${diskReads}"`);
  const disk = values.disk;
  if (disk !== "shared" && disk !== "local") throw new LockstepError("USAGE", `--disk takes shared or local, not "${disk}"`);
  if (disk === "local" && diskReads === "backup") throw new LockstepError("USAGE", "--disk local takes --disk-reads logged: a backup's own copy cannot serve its primary's reads");
  // The hosts inherit it: each keeps its copies under <it>/<host id>/.
  let temporaryLocalDisks: string | null = null;
  if (disk === "local" && process.env.LOCKSTEP_LOCAL_DISK_DIR === undefined) {
    if (values.dir === undefined) temporaryLocalDisks = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-local-disks-"));
    process.env.LOCKSTEP_LOCAL_DISK_DIR = temporaryLocalDisks ?? path.join(values.dir!, "local-disks");
  }
  const cluster = new EmbeddedCluster({
    vms,
    switch: !values["no-switch"],
    restoreRedundancy: !values["no-restore"],
    hosts: integer(values.hosts, "--hosts", 2, 16),
    backups: integer(values.backups, "--backups", 1, BACKUPS_MAX),
    bind: values.bind,
    port: integer(values.port, "--port", 0, 65535),
    dir: values.dir ?? null,
    diskBlocks: integer(values["disk-blocks"], "--disk-blocks", 1, 1 << 24),
    memoryMib: integer(values["memory-mib"], "--memory-mib", 1, 4096),
    timeoutMs: integer(values["timeout-ms"], "--timeout-ms", TIMEOUT_MS_MIN, TIMEOUT_MS_MAX),
    ports,
    token: secret(values.token, HOST_TOKEN_ENV, "--token"),
    arbiter: values.arbiter ?? null,
    diskReads,
    disk,
    log: createLogger(logLevel(values["log-level"])),
  });
  // Ctrl-C while starting stops what has started.
  const signal = untilSignal();
  let ready: Record<string, unknown>;
  try {
    ready = await Promise.race([cluster.start(), signal.then(() => null)]) as Record<string, unknown>;
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  if (ready === null) {
    await cluster.stop();
    return 0;
  }
  process.stdout.write(`READY ${JSON.stringify(ready)}\n`);
  if (process.stdout.isTTY) process.stdout.write(howTo(ready));
  await signal;
  await cluster.stop();
  if (temporaryLocalDisks !== null) fs.rmSync(temporaryLocalDisks, { recursive: true, force: true });
  return 0;
}

function howTo(ready: Record<string, unknown>): string {
  const vms = ready.vms as { vm: string; primary: string; backups: string[]; ports: Record<string, string> }[];
  const services = (ready.services ?? {}) as Record<string, string>;
  const lines = [`\ndashboard: ${String(ready.url)}/  (live status, charts, events; kill, cut, migrate from the page)`, `status: curl -s ${String(ready.status)}`];
  const client = (service: string, vport: string, address: string) => {
    const [host, port] = [address.slice(0, address.lastIndexOf(":")), address.slice(address.lastIndexOf(":") + 1)];
    if (vport === "6379" || service === "kv") return `  redis-cli -h ${host} -p ${port} SET greeting hello`;
    if (vport === "80" || service === "http") return `  curl http://${address}/`;
    return `  ${service} at ${address}`;
  };
  for (const vm of vms) {
    lines.push(`${vm.vm}: primary on ${vm.primary}, backup${vm.backups.length === 1 ? "" : "s"} on ${vm.backups.join(", ")}`);
    for (const [service, address] of Object.entries(services)) if (service === vm.vm || service.startsWith(`${vm.vm}-`)) lines.push(client(service, "", address));
    for (const [vport, address] of Object.entries(vm.ports)) lines.push(client(vm.vm, vport, address));
  }
  lines.push(
    Object.keys(services).length > 0
      ? "kill -9 a primary's host (pids in the READY line): the backup takes over and client connections stay open. Ctrl-C stops everything.\n"
      : "kill -9 the primary's host (pids in the READY line) and watch the backup take over. Ctrl-C stops everything.\n",
  );
  return lines.join("\n");
}
