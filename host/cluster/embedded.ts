// `lockstep up`: an embedded cluster on this machine. It starts a storage server and N host
// daemons as child processes, places a guest's primary and its backups (`--backups`, default
// one) each on a different host, and serves the cluster's status:
//
//   GET  /api/status               every VM (generation, primary and backups with host, pid,
//                                  icount, lag, sent/acked seqs, held outputs), every host,
//                                  and recent events (failure detected, went live, halted, ...)
//   POST /api/vms/:vm/control      forwarded to the VM's current primary
//   POST /api/hosts/:id/network    {"connected": false|true}: cut a host off, or join it again
//   POST /api/hosts/:id/kill       a real SIGKILL to the host's process (it restarts empty)
//   POST /api/vms                  {"guest","vm"}: start an example guest under FT
//   POST /api/vms/:vm/migrate      {"role","to"}: move its primary or backup
//   POST /api/replay?guest=&until= a log file as the body: time travel (host/dashboard/time-travel.ts)
//   POST /api/vms/:vm/digest       a digest probe of the VM's primary: {icount, digest} as logged
//   POST /api/vms/:vm/replicas     a read-only replica for a browser, and its resources under
//                                  /api/replicas/:id (host/replica/sessions.ts)
//   GET  /                         the dashboard (host/dashboard/), live over WS /api/live
//
// The hosts' JSON log lines are copied to this process's stderr with the host's id added.

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import os from "node:os";
import path from "node:path";
import { assert, LockstepError } from "../errors.js";
import { parseEtcdUrl } from "../ft/etcd-url.js";
import type { Logger } from "../log.js";
import { StorageClient } from "../storage/client.js";
import { STORAGE_TOKEN_ENV } from "../storage/cli.js";
import { LiveHub } from "../dashboard/live.js";
import { checkOrigin, isDashboardFile, serveDashboardFile } from "../dashboard/static.js";
import { replayRequest } from "../dashboard/time-travel.js";
import { ReplicaSessions, replicaRoute } from "../replica/sessions.js";
import { exampleGuests, loadGuest } from "../vm/guest.js";
import { BACKUPS_MAX } from "../ft/config.js";
import { Child } from "./child.js";
import type { EventsAnswer } from "./event-ring.js";
import { HEARTBEAT_MS, RemoteHost } from "./registration.js";
import type { HostStatus } from "./host-daemon.js";
import type { VmStatus } from "./hosted-vm.js";
import { ApiError, checkToken, fetchJson, isLoopback, readJson, sendError, sendJson } from "./http.js";
import { type CloneAction, planClones } from "./redundancy.js";
import { describeIssues, VM_NAME } from "./vm-spec.js";
import { z } from "zod";

export const CLUSTER_HOSTS_MAX = 16;
/** Events kept for the status API. */
const EVENTS_MAX = 256;
/** How long a host may take to answer a status poll before it is shown as unresponsive: a loaded 2-core machine can stall a host's event loop for most of a second (a snapshot, a compile). */
const HOST_POLL_TIMEOUT_MS = 1_500;
const CHILD_STOP_GRACE_MS = 5_000;
/** A host that keeps dying is given up on after this many restarts. */
const HOST_RESTARTS_MAX = 100;
/** A storage server that keeps dying is given up on after this many restarts. */
const STORAGE_RESTARTS_MAX = 100;

/** A joined host's heartbeat (registration.ts): its id as `lockstep host --id` takes it, and its control API. */
const HeartbeatSchema = z.object({ id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/), url: z.string().url().regex(/^https?:\/\//).max(256) }).strict();
const MigrateSchema = z.object({ role: z.enum(["primary", "backup"]), to: z.string().min(1).max(64) }).strict();
/** A guest started from the dashboard or the API: an example by name, never a path. */
const StartSchema = z.object({ guest: z.string().min(1).max(64), vm: z.string().regex(VM_NAME, "vm: lowercase letters, digits and '-', at most 63").optional() }).strict();
/** Each step of a migration that waits for an event (going alone, going live) gets this long. */
const MIGRATION_STEP_MS = 30_000;

/** The cluster service's own status polls give up sooner than the status API's. */
const REDUNDANCY_POLL_TIMEOUT_MS = 500;
/** How often the cluster service looks for VMs without a backup. */
const REDUNDANCY_CHECK_MS = 200;
/** After a failed clone, wait this long before trying that VM again. */
const CLONE_RETRY_MS = 1_000;
/** Fields of a log line that its event keeps, for the status API and the dashboard. */
const EVENT_FIGURES = ["from", "to", "target", "role", "moved", "ms", "unprotectedMs", "snapshotMs", "totalMs", "bytes", "seq", "icount", "clonedAtSeq"] as const;

/** Where the example guests listen: the services a switch exposes for them, by VM name. */
const EXAMPLE_SERVICE_PORTS: Record<string, number> = { kv: 6379, http: 80 };

export interface ClusterVm {
  /** An example's name or a .wasm path. */
  guest: string;
  vm: string;
}

export interface ClusterOptions {
  vms: ClusterVm[];
  hosts: number;
  /**
   * Clients reach the guests through a switch (docs/switch.md), whose connections survive a
   * failover; without it, each guest port is a TCP port of its primary's host.
   */
  switch: boolean;
  bind: string;
  port: number;
  /** Where storage keeps disks and registers; a fresh temporary folder when null. */
  dir: string | null;
  diskBlocks: number;
  /** Where disk read data come from on a backup (VmSpec.diskReads; default "logged"). */
  diskReads?: "logged" | "backup";
  /** Shared disks on the storage server, or a copy per host (VmSpec.disk; default "shared"). */
  disk?: "shared" | "local";
  memoryMib: number;
  /** The pair's failure timeout. */
  timeoutMs: number;
  /** Guest virtual port → public TCP port (of the switch, or of the primary's host; 0: a free one). */
  ports: Record<string, number>;
  token: string | null;
  /**
   * Give a VM left without a backup a new one, a live clone of its primary on another host
   * (§3.1). Off only to watch a VM run alone.
   */
  restoreRedundancy: boolean;
  /**
   * Backups per VM (`--backups N`, default 1), each on a host of its own: an output leaves
   * once every one holds it, and any one of them can go live. Restoring redundancy clones
   * until a VM has this many again.
   */
  backups?: number;
  /** `--arbiter etcd://...` for every host; null: the storage server's registers. */
  arbiter: string | null;
  /**
   * The service alone (`lockstep cluster`): it starts no process (vms, hosts 0, no switch).
   * Hosts anywhere join it by heartbeat (POST /api/hosts/heartbeat, registration.ts) or, with
   * an etcd arbiter, by their membership keys there. `storageUrl`: the hosts' storage server,
   * whose registers number the generations (null with etcd).
   */
  standalone?: { storageUrl: string | null };
  log: Logger;
}

export interface ClusterEvent {
  ts: string;
  host: string;
  event: string;
  vm: string | null;
  generation: number | null;
  msg: string;
  [field: string]: unknown;
}

interface HostEntry {
  id: string;
  url: string;
  /** A host daemon this service runs (`lockstep up`), or one that joined it (`lockstep cluster`). */
  child: Child | RemoteHost;
  /** A joined host's next event line to read (event-ring.ts); its children's come on stderr. */
  eventsFrom: number;
  /** The last status it answered, and whether the last poll got an answer. */
  last: HostStatus | null;
  responsive: boolean;
  /** Times its process died and was started again. */
  restarts: number;
}

export class EmbeddedCluster {
  private readonly events: ClusterEvent[] = [];
  private readonly hosts: HostEntry[] = [];
  private readonly waiters = new Set<(event: ClusterEvent) => void>();
  private eventsDropped = 0;
  private storageRestarts = 0;
  private storage: { child: Child; url: string } | null = null;
  private switch: { child: Child; url: string; services: Record<string, string> } | null = null;
  private server: Server | null = null;
  private live: LiveHub | null = null;
  private replicas: ReplicaSessions | null = null;
  /** What else stop() ends: the etcd discovery of a standalone service. */
  private readonly closers: (() => Promise<void>)[] = [];
  private stopping = false;
  private redundancyTimer: NodeJS.Timeout | null = null;
  private redundancyChecking = false;
  /** VMs with a clone under way, and VMs whose last clone failed: not before this time (ms). */
  private readonly cloning = new Set<string>();
  private readonly cloneRetryAtMs = new Map<string, number>();
  /** Each VM's protection as last seen, and since when: for the restore events and their figures. */
  private readonly protection = new Map<string, { state: string; sinceMs: number }>();
  /**
   * The hosts' control token: fresh for each cluster, known only to it and its children; or,
   * for hosts that join a standalone service, the token they were all given ("": none).
   */
  private readonly hostToken: string;
  /** Backups each VM should have (ClusterOptions.backups). */
  private readonly backups: number;
  private readonly dir: string;
  private readonly ownsDir: boolean;
  url = "";

  constructor(private readonly options: ClusterOptions) {
    if (options.standalone !== undefined) {
      assert(options.hosts === 0 && options.vms.length === 0 && !options.switch, "a standalone service starts no process");
      if (options.standalone.storageUrl === null && options.arbiter === null) throw new LockstepError("USAGE", "a cluster service needs the hosts' --storage or --arbiter");
    } else if (options.hosts < 2 || options.hosts > CLUSTER_HOSTS_MAX) {
      throw new LockstepError("USAGE", `--hosts takes 2 to ${CLUSTER_HOSTS_MAX}: a primary and its backup need two`);
    }
    this.backups = options.backups ?? 1;
    if (!Number.isInteger(this.backups) || this.backups < 1 || this.backups > BACKUPS_MAX) {
      throw new LockstepError("USAGE", `--backups takes 1 to ${BACKUPS_MAX}`);
    }
    if (options.standalone === undefined && options.hosts < this.backups + 1) {
      throw new LockstepError("USAGE", `--backups ${this.backups} needs --hosts ${this.backups + 1} or more: a primary and each backup on a host of its own`);
    }
    if (!isLoopback(options.bind) && options.token === null) {
      throw new LockstepError("USAGE", `--bind ${options.bind} is not loopback: give a --token (or $LOCKSTEP_TOKEN)`);
    }
    if (options.arbiter !== null) parseEtcdUrl(options.arbiter);
    this.hostToken = options.standalone !== undefined ? (options.token ?? "") : randomBytes(24).toString("base64url");
    this.ownsDir = options.dir === null;
    this.dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-up-"));
  }

  /** Starts everything; resolves with what the READY line says. */
  async start(): Promise<Record<string, unknown>> {
    const guests = this.options.vms.map((vm) => ({ ...vm, loaded: loadGuest(vm.guest) })); // fail fast, before any child
    if (this.options.standalone === undefined) await this.startStorage("0");
    // A switch only for guests with a network: a counter or a cpu run needs none.
    const networked = guests.filter((g) => g.loaded.listens);
    if (this.options.switch && networked.length > 0) await this.startSwitch(networked);

    const started = await Promise.all(Array.from({ length: this.options.hosts }, (_, i) => this.startHost(`host-${i + 1}`)));
    this.hosts.push(...started.map(({ child, url }, i) => ({ id: `host-${i + 1}`, url, child, eventsFrom: 0, last: null, responsive: true, restarts: 0 })));

    // VM i: primary on host i, its backups on the hosts after it, so that no host holds two
    // copies of one VM.
    const placed = [];
    for (const [i, guest] of guests.entries()) {
      const primaryHost = this.hosts[i % this.hosts.length]!;
      const backupHosts = Array.from({ length: this.backups }, (_, b) => this.hosts[(i + 1 + b) % this.hosts.length]!);
      placed.push({ ...guest, ...(await this.startVm(guest, guest.loaded, primaryHost, backupHosts)), primaryHost, backupHosts });
    }

    this.replicas = new ReplicaSessions(this.options.log);
    this.server = createServer((req, res) => void this.handle(req, res));
    const live = (this.live = new LiveHub(this, { token: this.options.token, log: this.options.log }));
    this.server.on("upgrade", (req, socket, head) => live.upgrade(req, socket, head));
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", (error) => reject(new LockstepError("USAGE", `cannot listen on ${this.options.bind}:${this.options.port}: ${error.message}`)));
      this.server!.listen(this.options.port, this.options.bind, resolve);
    });
    const address = this.server.address();
    const port = typeof address === "object" && address !== null ? address.port : this.options.port;
    this.url = `http://${this.options.bind.includes(":") ? `[${this.options.bind}]` : this.options.bind}:${port}`;

    if (this.options.restoreRedundancy) {
      this.redundancyTimer = setInterval(() => void this.checkRedundancy(), REDUNDANCY_CHECK_MS);
    }
    if (this.options.standalone !== undefined && this.options.arbiter !== null) await this.discoverFromEtcd(this.options.arbiter);

    const vms = [];
    for (const vm of placed) {
      const ports = await this.primaryPorts(vm.vm, vm.primaryHost, vm.loaded.listens, vm.eventsBefore);
      const backups = vm.backupHosts.map((h) => h.id);
      vms.push({ vm: vm.vm, guest: vm.guest, generation: vm.generation, primary: vm.primaryHost.id, backup: backups[0], backups, ports });
    }
    return {
      url: this.url,
      status: `${this.url}/api/status`,
      pid: process.pid,
      dir: this.dir,
      storage: this.storage === null ? { url: this.storageUrl() } : { url: this.storage.url, pid: this.storage.child.pid },
      ...(this.switch === null ? {} : { switch: { url: this.switch.url, pid: this.switch.child.pid }, services: this.switch.services }),
      hosts: this.hosts.map((h) => ({ id: h.id, pid: h.child.pid, url: h.url })),
      vms,
    };
  }

  /**
   * Starts one VM under FT: its backups first, then its primary pointed at the backups'
   * channels. A fresh cluster over kept storage continues the VM's generations: the registers
   * of generations already settled belong to earlier runs.
   */
  private async startVm(
    vm: ClusterVm,
    guest: { usesDisk: boolean },
    primaryHost: HostEntry,
    backupHosts: readonly HostEntry[],
  ): Promise<{ generation: number; eventsBefore: number }> {
    const generation = await this.storedGeneration(vm.vm);
    const spec = {
      vm: vm.vm,
      guest: vm.guest,
      generation,
      diskBlocks: guest.usesDisk ? this.options.diskBlocks : 0,
      diskReads: this.options.diskReads ?? "logged",
      disk: this.options.disk ?? "shared",
      memoryMib: this.options.memoryMib,
      timeoutMs: this.options.timeoutMs,
      ...(this.switch === null ? {} : { switchUrl: this.switch.url.replace(/^http/, "ws") }),
    };
    const channelUrls = [];
    for (const backupHost of backupHosts) {
      const backup = (await this.callHost(backupHost, "POST", "/api/vms", { ...spec, role: "backup" })) as { channelUrl: string };
      channelUrls.push(backup.channelUrl);
    }
    const eventsBefore = this.eventsDropped + this.events.length;
    const ports = this.switch === null ? this.options.ports : {};
    const backupUrls = channelUrls.length > 1 ? { backupUrls: channelUrls } : {};
    await this.callHost(primaryHost, "POST", "/api/vms", { ...spec, role: "primary", backupUrl: channelUrls[0], ...backupUrls, ports });
    return { generation, eventsBefore };
  }

  /** The switch, with a service for each port the guests are known to listen on. */
  private async startSwitch(guests: ClusterVm[]): Promise<void> {
    const services: string[] = [];
    for (const vm of guests) {
      const known = EXAMPLE_SERVICE_PORTS[vm.vm] ?? EXAMPLE_SERVICE_PORTS[vm.guest];
      const vports = known !== undefined ? [known] : Object.keys(this.options.ports).map(Number);
      if (vports.length === 0) {
        throw new LockstepError("USAGE", `which port does ${vm.guest} listen on? Name it with --guest-port VPORT=PORT`);
      }
      for (const vport of vports) {
        const name = known !== undefined ? vm.vm : `${vm.vm}-${vport}`;
        const publicPort = this.options.ports[String(vport)] ?? 0;
        services.push("--service", `${name}=${vm.vm}:${vport}@${this.options.bind}:${publicPort}`);
      }
    }
    const { child, ready } = await Child.start({
      name: "switch",
      args: ["switch", "--port", "0", "--bind", this.options.bind, ...services],
      env: { LOCKSTEP_TOKEN: this.hostToken },
      onLog: (line) => this.childLog("switch", line),
      onExit: (code, signal) => this.childExited("switch", code, signal),
    });
    this.switch = { child, url: String(ready.url), services: ready.services as Record<string, string> };
  }

  /** The status API's answer: hosts polled now, VMs assembled from what the hosts say. */
  async status(): Promise<Record<string, unknown>> {
    await Promise.all(this.hosts.map((host) => this.poll(host)));
    const hosts = this.hosts.map((h) => ({
      id: h.id,
      pid: h.child.pid,
      url: h.url,
      state: !h.child.alive ? "dead" : h.responsive ? "up" : "unresponsive",
      storageReachable: h.last?.storageReachable ?? null,
      connected: h.last?.connected ?? null,
      vms: (h.responsive && h.child.alive ? (h.last?.vms ?? []) : []).map((vm) => ({ vm: vm.vm, role: vm.role, state: vm.state })),
    }));
    const names = new Set(this.hosts.flatMap((h) => (h.last?.vms ?? []).map((vm) => vm.vm)));
    const vms = [...names].sort().map((name) => this.vmView(name));
    return {
      storage: this.storage === null ? null : { url: this.storage.url, pid: this.storage.child.pid, state: this.storage.child.alive ? "up" : "dead" },
      hosts,
      vms,
      events: this.events.slice(-100),
    };
  }

  /** Calls `listener` with every event from now on (the dashboard's live feed); returns the unsubscribe. */
  onEvent(listener: (event: ClusterEvent) => void): () => void {
    this.waiters.add(listener);
    return () => this.waiters.delete(listener);
  }

  /** Ctrl-C: every host stops its VMs (none goes live), then storage. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.live?.close();
    this.replicas?.closeAll();
    await Promise.all(this.closers.map((close) => close()));
    if (this.redundancyTimer !== null) clearInterval(this.redundancyTimer);
    this.server?.closeAllConnections();
    this.server?.close();
    await Promise.all(this.hosts.map((h) => h.child.stop(CHILD_STOP_GRACE_MS)));
    await this.switch?.child.stop(CHILD_STOP_GRACE_MS);
    await this.storage?.child.stop(CHILD_STOP_GRACE_MS);
    if (this.ownsDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // ---- internals ----------------------------------------------------------------------------

  /**
   * One round of the cluster service: poll every host, note which VMs lost or regained their
   * backup, and start a live clone for each VM whose primary runs alone (redundancy.ts).
   */
  private async checkRedundancy(): Promise<void> {
    if (this.redundancyChecking || this.stopping) return;
    this.redundancyChecking = true;
    try {
      // A short deadline here: a host too busy to answer is no place for a clone, and one slow
      // host must not hold up the others' redundancy.
      await Promise.all(this.hosts.map((host) => this.poll(host, REDUNDANCY_POLL_TIMEOUT_MS)));
      const nowMs = performance.now();
      const names = new Set(this.hosts.flatMap((h) => (h.child.alive ? (h.last?.vms ?? []) : []).map((vm) => vm.vm)));
      for (const name of names) {
        const view = this.vmView(name, true);
        const state = String(view.state);
        const before = this.protection.get(name);
        if (before !== undefined && before.state === state) continue;
        this.protection.set(name, { state, sinceMs: nowMs });
        if (before === undefined) continue;
        const generation = (view.generation as number | null) ?? null;
        if (state === "protected") {
          const backup = view.backup as { host: string } | null;
          this.clusterEvent("redundancyRestored", `${name} is protected again, its backup on ${backup?.host ?? "?"}`, "up", {
            vm: name,
            generation,
            unprotectedMs: Math.round(nowMs - before.sinceMs),
          });
        } else if (before.state === "protected") {
          this.clusterEvent("redundancyLost", `${name} is ${state}`, "up", { vm: name, generation });
        }
      }
      const busy = new Set([...this.cloning, ...[...this.cloneRetryAtMs].filter(([, atMs]) => atMs > nowMs).map(([vm]) => vm)]);
      const views = this.hosts.map((h) => ({
        id: h.id,
        url: h.url,
        healthy: h.child.alive && h.responsive && h.last !== null && h.last.connected && h.last.storageReachable,
        status: h.last,
      }));
      for (const action of planClones(views, busy, this.backups)) void this.startClone(action);
    } finally {
      this.redundancyChecking = false;
    }
  }

  private async startClone(action: CloneAction): Promise<void> {
    this.cloning.add(action.vm);
    this.clusterEvent("cloneRequested", `cloning ${action.vm} from ${action.from.id} to ${action.to.id}`, "up", { vm: action.vm, from: action.from.id, to: action.to.id });
    try {
      const host = this.hosts.find((h) => h.id === action.from.id)!;
      await this.callHost(host, "POST", `/api/vms/${action.vm}/clone`, { to: action.to.url });
      this.cloneRetryAtMs.delete(action.vm);
    } catch (error) {
      this.cloneRetryAtMs.set(action.vm, performance.now() + CLONE_RETRY_MS);
      this.clusterEvent("cloneFailed", `cloning ${action.vm} to ${action.to.id} failed: ${(error as Error).message}`, "up", { vm: action.vm, to: action.to.id });
      // A backup that may have started there for it belongs to no primary (it was dropped, or
      // never connected): stop it now, rather than let it wait out its first-contact bound
      // holding that host, which the next clone may need. The target held no copy before.
      const target = this.hosts.find((h) => h.id === action.to.id);
      if (target !== undefined && target.child.alive) {
        await this.callHost(target, "DELETE", `/api/vms/${action.vm}`).catch(() => undefined);
      }
    } finally {
      this.cloning.delete(action.vm);
    }
  }

  /**
   * The VM as the hosts report it. `lastKnown`: also from hosts that did not answer the latest
   * poll, by what they said before: a host too busy to answer in time is not a VM that lost a
   * side, and the protection events must not flap with it.
   */
  private vmView(name: string, lastKnown = false): Record<string, unknown> {
    const sides = this.hosts
      .filter((h) => h.child.alive && (lastKnown || h.responsive) && h.last !== null)
      .flatMap((h) => h.last!.vms.filter((vm) => vm.vm === name && vm.result === null).map((vm) => ({ host: h, vm })));
    const isPrimary = (vm: VmStatus) => (vm.role === "primary" && vm.state !== "halted") || (vm.role === "backup" && vm.state === "live");
    const primaries = sides.filter((s) => isPrimary(s.vm)).sort((a, b) => b.vm.generation - a.vm.generation);
    const describe = (side: { host: HostEntry; vm: VmStatus } | undefined) =>
      side === undefined ? null : { host: side.host.id, pid: side.host.child.pid, ...side.vm };
    const primary = primaries[0];
    // In the primary's order (its channels' endpoints name the backups' hosts), then the rest.
    const order = primary?.vm.role === "primary" && "backups" in primary.vm ? primary.vm.backups.map((b) => b.url ?? "") : [];
    const rank = (host: HostEntry) => {
      const index = order.findIndex((url) => url.startsWith(host.url.replace(/^http/, "ws") + "/"));
      return index === -1 ? order.length : index;
    };
    const backups = sides.filter((s) => !isPrimary(s.vm) && s.vm.state !== "halted").sort((a, b) => rank(a.host) - rank(b.host));
    // "protected": some backup can take over; `backups` says how many of the wanted there are.
    const paired = primary?.vm.state === "paired" || primary?.vm.state === "renewing";
    return {
      vm: name,
      generation: primary?.vm.generation ?? backups[0]?.vm.generation ?? null,
      state: primary === undefined ? "down" : backups.length > 0 && paired ? "protected" : "unprotected",
      backupsWanted: this.backups,
      primary: describe(primary),
      backup: describe(backups[0]),
      backups: backups.map(describe),
    };
  }

  private async poll(host: HostEntry, timeoutMs = HOST_POLL_TIMEOUT_MS): Promise<void> {
    if (!host.child.alive) return;
    const joined = host.child instanceof RemoteHost;
    try {
      // A joined host's events come with its status: there is no stderr of it to read.
      const route = joined ? `/api/status?eventsFrom=${host.eventsFrom}` : "/api/status";
      const answer = (await fetchJson(`${host.url}${route}`, { token: this.hostToken, timeoutMs })) as HostStatus & { events?: EventsAnswer };
      host.last = answer;
      host.responsive = true;
      if (host.child instanceof RemoteHost) host.child.pid = answer.pid;
      if (answer.events !== undefined) this.joinedHostEvents(host, answer.events);
    } catch {
      host.responsive = false;
    }
  }

  /** A joined host's event lines, each once although polls overlap. */
  private joinedHostEvents(host: HostEntry, events: EventsAnswer): void {
    if (events.from > host.eventsFrom && host.eventsFrom > 0) {
      this.clusterEvent("eventsMissed", `${events.from - host.eventsFrom} of ${host.id}'s events were gone before they were read`, host.id);
    }
    events.lines.forEach((line, i) => {
      if (events.from + i >= host.eventsFrom) this.childLog(host.id, line);
    });
    host.eventsFrom = Math.max(host.eventsFrom, events.next);
  }

  /**
   * A host joins, or says it is still there (POST /api/hosts/heartbeat, registration.ts; or its
   * etcd membership key). A host that comes back at another address restarted: what it said
   * before is forgotten.
   */
  private hostSeen(id: string, url: string): HostEntry {
    if (this.options.standalone === undefined) throw new ApiError("CONFLICT", "this cluster runs its own hosts: none joins it");
    let host = this.hosts.find((h) => h.id === id);
    if (host === undefined) {
      if (this.hosts.length >= CLUSTER_HOSTS_MAX) throw new ApiError("UNAVAILABLE", `this cluster has ${CLUSTER_HOSTS_MAX} hosts already`);
      host = { id, url, child: new RemoteHost(), eventsFrom: 0, last: null, responsive: true, restarts: 0 };
      this.hosts.push(host);
      this.clusterEvent("hostJoined", `${id} joined at ${url}`, id);
    } else if (host.url !== url || !host.child.alive) {
      this.clusterEvent("hostJoined", `${id} ${host.child.alive ? "moved" : "is back"} at ${url}`, id);
      Object.assign(host, { url, eventsFrom: 0, last: null, responsive: true });
    }
    assert(host.child instanceof RemoteHost, "only joined hosts heartbeat");
    host.child.seen();
    return host;
  }

  /**
   * `lockstep cluster --arbiter etcd://`: the hosts are those whose membership keys live in etcd
   * (host/ft/etcd-arbiter.ts), each at the address it announced there; the lease is the
   * heartbeat. Read every HEARTBEAT_MS.
   */
  private async discoverFromEtcd(url: string): Promise<void> {
    const { etcdArbiter } = await import("../ft/etcd-arbiter.js");
    const etcd = etcdArbiter(url, { hostId: "lockstep-cluster", log: this.options.log, membership: false });
    let reading = false;
    let warned = false;
    const read = async () => {
      if (reading || this.stopping) return;
      reading = true;
      try {
        for (const member of await etcd.members()) if (member.url !== undefined) this.hostSeen(member.hostId, member.url);
        warned = false;
      } catch (error) {
        if (!warned) this.clusterEvent("etcdUnreachable", `cannot list the hosts in etcd: ${(error as Error).message}`);
        warned = true;
      } finally {
        reading = false;
      }
    };
    await read();
    const timer = setInterval(() => void read(), HEARTBEAT_MS);
    this.closers.push(async () => {
      clearInterval(timer);
      await etcd.close();
    });
  }

  private async callHost(host: HostEntry, method: string, route: string, body?: unknown): Promise<unknown> {
    return fetchJson(`${host.url}${route}`, { token: this.hostToken, timeoutMs: 30_000, method, body });
  }

  /** The hosts' storage server: this service's child, or (standalone) the one they were given. */
  private storageUrl(): string | null {
    return this.storage?.url ?? this.options.standalone?.storageUrl ?? null;
  }

  private async storedGeneration(vm: string): Promise<number> {
    if (this.options.arbiter !== null) {
      // The registers are in etcd, and outlive this cluster: continue after the highest set.
      const { etcdArbiter } = await import("../ft/etcd-arbiter.js");
      const etcd = etcdArbiter(this.options.arbiter, { hostId: "lockstep-up", log: this.options.log, membership: false });
      try {
        const register = await etcd.readGeneration(vm).catch((error: Error) => {
          throw new LockstepError("USAGE", `cannot read ${vm}'s generation from etcd at ${this.options.arbiter}: ${error.message}`);
        });
        return register === null ? 1 : register.generation + 1;
      } finally {
        await etcd.close();
      }
    }
    const client = await StorageClient.connect(this.storageUrl()!, { clientId: "lockstep-up", token: process.env[STORAGE_TOKEN_ENV] });
    try {
      const register = await client.readGeneration(vm);
      return register === null ? 1 : register.generation + 1;
    } finally {
      await client.close();
    }
  }

  /** Where the primary's guest listens, once it does (guests without a NIC: none). */
  private async primaryPorts(name: string, host: HostEntry, listens: boolean, since: number): Promise<Record<string, string>> {
    if (!listens) return {};
    await this.nextEvent((e) => e.host === host.id && e.vm === name && (e.event === "listening" || e.event === "stopped"), 30_000, since);
    await this.poll(host);
    const vm = host.last?.vms.find((v) => v.vm === name);
    if (vm === undefined || vm.result !== null) throw new LockstepError("USAGE", `${name} stopped before it listened: ${vm?.result?.message ?? "gone"}`);
    return vm.ports;
  }

  /** The next event (from any host's log) that matches, or a timeout error. */
  private nextEvent(matches: (event: ClusterEvent) => boolean, timeoutMs: number, since: number): Promise<ClusterEvent> {
    // Events kept are a bounded window: `since` counts from the first event ever logged.
    const past = this.events.slice(Math.max(0, since - this.eventsDropped)).find(matches);
    if (past !== undefined) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new LockstepError("USAGE", `no matching event within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = (event: ClusterEvent) => {
        if (!matches(event)) return;
        clearTimeout(timer);
        this.waiters.delete(waiter);
        resolve(event);
      };
      this.waiters.add(waiter);
    });
  }

  private childLog(host: string, line: Record<string, unknown>): void {
    // A line's own `host` field (the switch names a link's host) must not hide who wrote it.
    const entry = { host, ...line, ...(line.host !== undefined ? { host, peerHost: line.host } : {}) };
    process.stderr.write(JSON.stringify(entry) + "\n");
    if (typeof line.event === "string") {
      this.events.push({
        ts: String(line.ts ?? new Date().toISOString()),
        host,
        event: line.event,
        vm: (line.vm as string | null | undefined) ?? null,
        generation: (line.generation as number | null | undefined) ?? null,
        msg: String(line.msg ?? ""),
        ...(line.reason !== undefined ? { reason: line.reason } : {}),
        ...(line.address !== undefined ? { address: line.address } : {}),
        ...Object.fromEntries(EVENT_FIGURES.filter((key) => line[key] !== undefined).map((key) => [key, line[key]])),
      });
      if (this.events.length > EVENTS_MAX) {
        this.events.shift();
        this.eventsDropped++;
      }
      for (const waiter of [...this.waiters]) waiter(this.events.at(-1)!);
    }
  }

  /**
   * A host daemon as a child process. When one dies (kill -9, a crash) it is started again
   * under the same id, empty, as a rebooted machine would come back: its VMs have failed over
   * meanwhile, and the cluster service may place clones on it again.
   */
  private async startHost(id: string): Promise<{ child: Child; url: string }> {
    const { child, ready } = await Child.start({
      name: id,
      args: [
        "host", "--storage", this.storage!.url, "--id", id, "--port", "0", "--bind", this.options.bind,
        ...(this.options.arbiter === null ? [] : ["--arbiter", this.options.arbiter]),
      ],
      env: { LOCKSTEP_TOKEN: this.hostToken },
      onLog: (line) => this.childLog(id, line),
      onExit: (code, signal) => {
        this.childExited(id, code, signal);
        const entry = this.hosts.find((h) => h.id === id);
        if (this.stopping || entry === undefined || entry.restarts >= HOST_RESTARTS_MAX) return;
        entry.restarts++;
        this.startHost(id).then(
          ({ child: restarted, url }) => {
            if (this.stopping) return void restarted.stop(CHILD_STOP_GRACE_MS);
            Object.assign(entry, { child: restarted, url, last: null, responsive: true });
            this.clusterEvent("hostRestarted", `${id} restarted (pid ${restarted.pid})`, id);
          },
          (error: Error) => this.clusterEvent("hostLost", `${id} could not be restarted: ${error.message}`, id),
        );
      },
    });
    return { child, url: String(ready.url) };
  }

  /**
   * The storage server, on `port`. It is the cluster's shared disk and arbiter, so `up` keeps
   * it running: when it dies it is started again on the same port and folder, and the hosts'
   * clients reconnect (meanwhile disk IOs wait and nobody goes live, §2.3).
   */
  private async startStorage(port: string): Promise<void> {
    const { child, ready } = await Child.start({
      name: "storage",
      args: ["storage", "--port", port, "--dir", path.join(this.dir, "storage")],
      onLog: (line) => this.childLog("storage", line),
      onExit: (code, signal) => {
        this.childExited("storage", code, signal);
        if (this.stopping || this.storageRestarts >= STORAGE_RESTARTS_MAX) return;
        this.storageRestarts++;
        const samePort = new URL(this.storage!.url).port;
        this.startStorage(samePort).then(
          () => this.clusterEvent("storageRestarted", `storage restarted (pid ${this.storage!.child.pid})`),
          (error: Error) => this.clusterEvent("storageLost", `storage could not be restarted: ${error.message}`),
        );
      },
    });
    this.storage = { child, url: String(ready.url) };
  }

  private childExited(name: string, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping) return;
    this.clusterEvent(name === "storage" ? "storageExited" : "hostExited", `${name} exited (${signal ?? code})`, name);
  }

  /** An event of the cluster itself, logged like the hosts' events. */
  private clusterEvent(event: string, msg: string, host = "up", fields: Record<string, unknown> = {}): void {
    this.childLog(host, { ts: new Date().toISOString(), level: "warn", msg, event, vm: null, generation: null, ...fields });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = new URL(req.url ?? "/", "http://up");
      // The page carries no secret and asks for the token itself; every API call needs it.
      if ((req.method === "GET" || req.method === "HEAD") && isDashboardFile(url.pathname)) return await serveDashboardFile(req, res, url.pathname);
      checkToken(req, this.options.token);
      if (req.method !== "GET") checkOrigin(req);
      if (req.method === "GET" && url.pathname === "/api/status") return sendJson(res, 200, await this.status());
      if (req.method === "GET" && url.pathname === "/api/guests") return sendJson(res, 200, { guests: exampleGuests() });
      if (req.method === "POST" && url.pathname === "/api/vms") return sendJson(res, 201, await this.startGuest(await readJson(req)));
      if (req.method === "POST" && url.pathname === "/api/replay") return sendJson(res, 200, await replayRequest(req, url));
      if (req.method === "POST" && url.pathname === "/api/hosts/heartbeat") {
        const parsed = HeartbeatSchema.safeParse(await readJson(req));
        if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
        const host = this.hostSeen(parsed.data.id, parsed.data.url.replace(/\/$/, ""));
        return sendJson(res, 200, { host: host.id, hosts: this.hosts.length });
      }
      const kill = /^\/api\/hosts\/([^/]+)\/kill$/.exec(url.pathname);
      if (req.method === "POST" && kill !== null) return sendJson(res, 200, this.killHost(kill[1]!));
      const control = /^\/api\/vms\/([^/]+)\/control$/.exec(url.pathname);
      if (req.method === "POST" && control !== null) {
        const body = await readJson(req);
        const host = await this.primaryHost(control[1]!);
        return sendJson(res, 202, await this.callHost(host, "POST", `/api/vms/${control[1]}/control`, body));
      }
      const digest = /^\/api\/vms\/([^/]+)\/digest$/.exec(url.pathname);
      if (req.method === "POST" && digest !== null) {
        const host = await this.primaryHost(digest[1]!);
        return sendJson(res, 200, { host: host.id, ...((await this.callHost(host, "POST", `/api/vms/${digest[1]}/digest`)) as object) });
      }
      const replicas = /^\/api\/vms\/([^/]+)\/replicas$/.exec(url.pathname);
      if (req.method === "POST" && replicas !== null) {
        const host = await this.primaryHost(replicas[1]!);
        const feedUrl = `${host.url.replace(/^http/, "ws")}/observe/${replicas[1]}`;
        return sendJson(res, 201, await this.replicas!.open(replicas[1]!, feedUrl, this.hostToken));
      }
      const replica = replicaRoute(req, url.pathname);
      if (replica !== null && req.method === "GET" && replica[1] !== "") return await this.replicas!.serve(res, replica[0], replica[1], url);
      if (replica !== null && req.method === "DELETE" && replica[1] === "") {
        this.replicas!.close(replica[0]);
        return sendJson(res, 200, { replica: replica[0], closed: true });
      }
      const network = /^\/api\/hosts\/([^/]+)\/network$/.exec(url.pathname);
      if (req.method === "POST" && network !== null) {
        const host = this.hosts.find((h) => h.id === network[1]);
        if (host === undefined || !host.child.alive) throw new ApiError("NOT_FOUND", `no running host ${network[1]}`);
        return sendJson(res, 200, await this.callHost(host, "POST", "/api/network", await readJson(req)));
      }
      const migrate = /^\/api\/vms\/([^/]+)\/migrate$/.exec(url.pathname);
      if (req.method === "POST" && migrate !== null) {
        const parsed = MigrateSchema.safeParse(await readJson(req));
        if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
        return sendJson(res, 200, await this.migrate(migrate[1]!, parsed.data.role, parsed.data.to));
      }
      throw new ApiError("NOT_FOUND", `no route ${req.method} ${url.pathname}`);
    } catch (error) {
      sendError(res, error);
    }
  }

  /** The host that runs `vm`'s live primary, from a fresh poll of every host. */
  private async primaryHost(vm: string): Promise<HostEntry> {
    await Promise.all(this.hosts.map((host) => this.poll(host)));
    const primary = this.vmView(vm).primary as { host: string } | null;
    if (primary === null) throw new ApiError("UNAVAILABLE", `${vm} has no live primary`);
    return this.hosts.find((h) => h.id === primary.host)!;
  }

  /**
   * A real SIGKILL to a host's process, as a crash would end it: its VMs fail over, and the
   * host is started again empty (startHost), as a rebooted machine comes back.
   */
  private killHost(id: string): Record<string, unknown> {
    const host = this.hosts.find((h) => h.id === id);
    if (host === undefined || !host.child.alive) throw new ApiError("NOT_FOUND", `no running host ${id}`);
    if (!(host.child instanceof Child)) throw new ApiError("CONFLICT", `${id} joined from its own machine: this service cannot kill it`);
    const pid = host.child.pid;
    host.child.process.kill("SIGKILL");
    this.clusterEvent("hostKilled", `${id} (pid ${pid}) killed with SIGKILL`, "up", { target: id });
    return { host: id, pid, signal: "SIGKILL" };
  }

  /**
   * Starts an example guest under FT on the two least loaded healthy hosts (by VMs they run),
   * its backup first, as `lockstep up --guest` does at start. Only examples: a request names
   * no file on this machine. A guest with a network is reachable on its primary's host only
   * when the cluster runs without a switch: the switch's services are fixed at its start.
   */
  private async startGuest(body: unknown): Promise<Record<string, unknown>> {
    const parsed = StartSchema.safeParse(body);
    if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
    const { guest } = parsed.data;
    const examples = exampleGuests();
    if (!examples.includes(guest)) throw new ApiError("BAD_REQUEST", `guest: one of ${examples.join(", ")}, not "${guest}"`);
    const vm = parsed.data.vm ?? guest;
    if (this.cloning.has(vm)) throw new ApiError("CONFLICT", `${vm} is being started, cloned or migrated already`);
    // Held like a clone: the cluster service must not clone a primary whose backup is starting.
    this.cloning.add(vm);
    try {
      await Promise.all(this.hosts.map((host) => this.poll(host)));
      const running = (h: HostEntry) => (h.last?.vms ?? []).filter((v) => v.result === null);
      if (this.hosts.some((h) => h.child.alive && running(h).some((v) => v.vm === vm))) throw new ApiError("CONFLICT", `a VM named ${vm} runs already`);
      const healthy = this.hosts
        .filter((h) => h.child.alive && h.responsive && h.last !== null && h.last.connected && h.last.storageReachable)
        .sort((a, b) => running(a).length - running(b).length || a.id.localeCompare(b.id, "en", { numeric: true }));
      if (healthy.length < this.backups + 1) {
        throw new ApiError("UNAVAILABLE", `${vm} needs ${this.backups + 1} healthy hosts, for its primary and ${this.backups === 1 ? "its backup" : `its ${this.backups} backups`}; ${healthy.length} are`);
      }
      const primaryHost = healthy[0]!;
      const backupHosts = healthy.slice(1, 1 + this.backups);
      const { generation } = await this.startVm({ guest, vm }, loadGuest(guest), primaryHost, backupHosts);
      const backups = backupHosts.map((h) => h.id);
      const result = { vm, guest, generation, primary: primaryHost.id, backup: backups[0], backups };
      this.clusterEvent("vmStarted", `${vm} (${guest}) started: primary on ${primaryHost.id}, backup${backups.length === 1 ? "" : "s"} on ${backups.join(", ")}`, "up", { vm, generation });
      return result;
    } finally {
      this.cloning.delete(vm);
    }
  }

  /**
   * `lockstep migrate` (§3.3): moves the VM's primary or backup to host `toId`, with the live
   * clone of restoring redundancy. A backup: the old one is stopped, the primary runs alone for
   * a moment, and a clone on `toId` becomes its backup. A primary: its backup is first moved to
   * `toId` (unless it is there already), then the primary hands off: it stops as a crash would,
   * and the backup takes over at once, with everything the primary released. Afterwards the
   * cluster service gives the VM a new backup as after any go-live. Primary and backup never
   * share a host. With several backups (`--backups`), "its backup" is the first one, and none
   * moves if one runs on `toId` already; the others stay where they are (for a primary's move
   * they lose the next generation to the one that takes over, and are cloned again).
   */
  private async migrate(name: string, role: "primary" | "backup", toId: string): Promise<Record<string, unknown>> {
    if (this.cloning.has(name)) throw new ApiError("CONFLICT", `${name} is being cloned or migrated already`);
    this.cloning.add(name);
    const startedMs = performance.now();
    try {
      await Promise.all(this.hosts.map((host) => this.poll(host)));
      const to = this.hosts.find((h) => h.id === toId);
      if (to === undefined || !to.child.alive || !to.responsive) throw new ApiError("NOT_FOUND", `no running host ${toId}`);
      const view = this.vmView(name);
      const primarySide = view.primary as (VmStatus & { host: string }) | null;
      if (primarySide === null) throw new ApiError("UNAVAILABLE", `${name} has no live primary`);
      const primaryHost = this.hosts.find((h) => h.id === primarySide.host)!;
      const backupSides = view.backups as (VmStatus & { host: string })[];
      const backupSide = backupSides.find((b) => b.host === toId) ?? backupSides[0] ?? null;
      const from = role === "primary" ? primaryHost.id : (backupSide?.host ?? null);
      this.clusterEvent("migrationStarted", `migrating ${name}'s ${role} from ${from ?? "nowhere"} to ${toId}`, "up", { vm: name, from, to: toId });
      if (to === primaryHost) {
        if (role === "primary") return { vm: name, role, from, to: toId, moved: false };
        throw new ApiError("CONFLICT", `${toId} runs ${name}'s primary: primary and backup never share a host`);
      }
      if (backupSide?.host !== toId) {
        // The backup moves first, for either role: stop it (it must not contend for the next
        // generation), let the primary run alone, and clone the primary onto the target.
        const since = this.eventsDropped + this.events.length;
        if (backupSide !== null) {
          const backupHost = this.hosts.find((h) => h.id === backupSide.host)!;
          await this.callHost(backupHost, "DELETE", `/api/vms/${name}`);
        }
        if (primarySide.state !== "alone" && backupSides.length <= 1) {
          await this.callHost(primaryHost, "POST", `/api/vms/${name}/drop-backup`);
          await this.nextEvent((e) => e.host === primaryHost.id && e.vm === name && (e.event === "wentAlone" || e.event === "halted"), MIGRATION_STEP_MS, since);
        } else if (primarySide.state !== "alone") {
          // It keeps its other backups: it drops the stopped one now and renews the others.
          const backupHost = this.hosts.find((h) => h.id === backupSide!.host)!;
          await this.callHost(primaryHost, "POST", `/api/vms/${name}/drop-backup`, { backup: `${backupHost.url.replace(/^http/, "ws")}/` });
          const settled = (e: ClusterEvent) => e.host === primaryHost.id && e.vm === name && ["renewed", "wentAlone", "halted"].includes(e.event);
          await this.nextEvent(settled, MIGRATION_STEP_MS, since);
        }
        await this.callHost(primaryHost, "POST", `/api/vms/${name}/clone`, { to: to.url });
      }
      if (role === "primary") {
        const since = this.eventsDropped + this.events.length;
        await this.callHost(primaryHost, "POST", `/api/vms/${name}/hand-off`);
        await this.callHost(to, "POST", `/api/vms/${name}/take-over`);
        await this.nextEvent((e) => e.host === toId && e.vm === name && (e.event === "wentLive" || e.event === "halted"), MIGRATION_STEP_MS, since);
      }
      const result = { vm: name, role, from, to: toId, moved: true, ms: Math.round(performance.now() - startedMs) };
      this.clusterEvent("migrationFinished", `${name}'s ${role} now runs on ${toId}`, "up", result);
      return result;
    } catch (error) {
      this.clusterEvent("migrationFailed", `migrating ${name}'s ${role} to ${toId} failed: ${(error as Error).message}`, "up", { vm: name, to: toId });
      throw error;
    } finally {
      this.cloning.delete(name);
    }
  }
}
