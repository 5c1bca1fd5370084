// `lockstep up`: an embedded cluster on this machine. It starts a storage server and N host
// daemons as child processes, places a guest's primary and backup on two different hosts, and
// serves the cluster's status:
//
//   GET  /api/status               every VM (generation, primary and backup with host, pid,
//                                  icount, lag, sent/acked seqs, held outputs), every host,
//                                  and recent events (failure detected, went live, halted, ...)
//   POST /api/vms/:vm/control      forwarded to the VM's current primary
//
// The hosts' JSON log lines are copied to this process's stderr with the host's id added.

import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import os from "node:os";
import path from "node:path";
import { LockstepError } from "../errors.js";
import type { Logger } from "../log.js";
import { StorageClient } from "../storage/client.js";
import { loadGuest } from "../vm/guest.js";
import { Child } from "./child.js";
import type { HostStatus } from "./host-daemon.js";
import type { VmStatus } from "./hosted-vm.js";
import { ApiError, checkToken, fetchJson, isLoopback, readJson, sendError, sendJson } from "./http.js";

export const CLUSTER_HOSTS_MAX = 16;
/** Events kept for the status API. */
const EVENTS_MAX = 256;
/** How long a host may take to answer a status poll before it is shown as unresponsive. */
const HOST_POLL_TIMEOUT_MS = 500;
const CHILD_STOP_GRACE_MS = 5_000;
/** A storage server that keeps dying is given up on after this many restarts. */
const STORAGE_RESTARTS_MAX = 100;

export interface ClusterOptions {
  guest: string;
  vm: string;
  hosts: number;
  bind: string;
  port: number;
  /** Where storage keeps disks and registers; a fresh temporary folder when null. */
  dir: string | null;
  diskBlocks: number;
  memoryMib: number;
  /** The pair's failure timeout. */
  timeoutMs: number;
  /** Guest virtual port → TCP port of the primary (0: a free one). */
  ports: Record<string, number>;
  token: string | null;
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
  child: Child;
  /** The last status it answered, and whether the last poll got an answer. */
  last: HostStatus | null;
  responsive: boolean;
}

export class EmbeddedCluster {
  private readonly events: ClusterEvent[] = [];
  private readonly hosts: HostEntry[] = [];
  private readonly waiters = new Set<(event: ClusterEvent) => void>();
  private eventsDropped = 0;
  private storageRestarts = 0;
  private storage: { child: Child; url: string } | null = null;
  private server: Server | null = null;
  private stopping = false;
  /** The hosts' control token: fresh for each cluster, known only to it and its children. */
  private readonly hostToken = randomBytes(24).toString("base64url");
  private readonly dir: string;
  private readonly ownsDir: boolean;
  url = "";

  constructor(private readonly options: ClusterOptions) {
    if (options.hosts < 2 || options.hosts > CLUSTER_HOSTS_MAX) {
      throw new LockstepError("USAGE", `--hosts takes 2 to ${CLUSTER_HOSTS_MAX}: a primary and its backup need two`);
    }
    if (!isLoopback(options.bind) && options.token === null) {
      throw new LockstepError("USAGE", `--bind ${options.bind} is not loopback: give a --token (or $LOCKSTEP_TOKEN)`);
    }
    this.ownsDir = options.dir === null;
    this.dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-up-"));
  }

  /** Starts everything; resolves with what the READY line says. */
  async start(): Promise<Record<string, unknown>> {
    const guest = loadGuest(this.options.guest); // fail fast on a bad guest, before any child
    await this.startStorage("0");

    const started = await Promise.all(
      Array.from({ length: this.options.hosts }, (_, i) => {
        const id = `host-${i + 1}`;
        return Child.start({
          name: id,
          args: ["host", "--storage", this.storage!.url, "--id", id, "--port", "0", "--bind", this.options.bind],
          env: { LOCKSTEP_TOKEN: this.hostToken },
          onLog: (line) => this.childLog(id, line),
          onExit: (code, signal) => this.childExited(id, code, signal),
        }).then(({ child, ready }) => ({ id, url: String(ready.url), child, last: null, responsive: true }));
      }),
    );
    this.hosts.push(...started);

    // A fresh cluster over kept storage continues the VM's generations: the registers of
    // generations already settled belong to earlier runs.
    const generation = await this.storedGeneration();
    const [primaryHost, backupHost] = [this.hosts[0]!, this.hosts[1]!];
    const spec = {
      vm: this.options.vm,
      guest: this.options.guest,
      generation,
      diskBlocks: guest.usesDisk ? this.options.diskBlocks : 0,
      memoryMib: this.options.memoryMib,
      timeoutMs: this.options.timeoutMs,
    };
    const backup = (await this.callHost(backupHost, "POST", "/api/vms", { ...spec, role: "backup" })) as { channelUrl: string };
    const eventsBeforePrimary = this.eventsDropped + this.events.length;
    await this.callHost(primaryHost, "POST", "/api/vms", { ...spec, role: "primary", backupUrl: backup.channelUrl, ports: this.options.ports });

    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", (error) => reject(new LockstepError("USAGE", `cannot listen on ${this.options.bind}:${this.options.port}: ${error.message}`)));
      this.server!.listen(this.options.port, this.options.bind, resolve);
    });
    const address = this.server.address();
    const port = typeof address === "object" && address !== null ? address.port : this.options.port;
    this.url = `http://${this.options.bind.includes(":") ? `[${this.options.bind}]` : this.options.bind}:${port}`;

    const ports = await this.primaryPorts(primaryHost, guest.listens, eventsBeforePrimary);
    return {
      url: this.url,
      status: `${this.url}/api/status`,
      pid: process.pid,
      dir: this.dir,
      storage: { url: this.storage!.url, pid: this.storage!.child.pid },
      hosts: this.hosts.map((h) => ({ id: h.id, pid: h.child.pid, url: h.url })),
      vms: [{ vm: this.options.vm, guest: this.options.guest, generation, primary: primaryHost.id, backup: backupHost.id, ports }],
    };
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

  /** Ctrl-C: every host stops its VMs (none goes live), then storage. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.server?.closeAllConnections();
    this.server?.close();
    await Promise.all(this.hosts.map((h) => h.child.stop(CHILD_STOP_GRACE_MS)));
    await this.storage?.child.stop(CHILD_STOP_GRACE_MS);
    if (this.ownsDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  // ---- internals ----------------------------------------------------------------------------

  private vmView(name: string): Record<string, unknown> {
    const sides = this.hosts
      .filter((h) => h.child.alive && h.responsive && h.last !== null)
      .flatMap((h) => h.last!.vms.filter((vm) => vm.vm === name && vm.result === null).map((vm) => ({ host: h, vm })));
    const isPrimary = (vm: VmStatus) => (vm.role === "primary" && vm.state !== "halted") || (vm.role === "backup" && vm.state === "live");
    const primaries = sides.filter((s) => isPrimary(s.vm)).sort((a, b) => b.vm.generation - a.vm.generation);
    const backups = sides.filter((s) => !isPrimary(s.vm) && s.vm.state !== "halted");
    const describe = (side: { host: HostEntry; vm: VmStatus } | undefined) =>
      side === undefined ? null : { host: side.host.id, pid: side.host.child.pid, ...side.vm };
    const primary = primaries[0];
    return {
      vm: name,
      generation: primary?.vm.generation ?? backups[0]?.vm.generation ?? null,
      state: primary === undefined ? "down" : backups.length > 0 && primary.vm.state === "paired" ? "protected" : "unprotected",
      primary: describe(primary),
      backup: describe(backups[0]),
    };
  }

  private async poll(host: HostEntry): Promise<void> {
    if (!host.child.alive) return;
    try {
      host.last = (await fetchJson(`${host.url}/api/status`, { token: this.hostToken, timeoutMs: HOST_POLL_TIMEOUT_MS })) as HostStatus;
      host.responsive = true;
    } catch {
      host.responsive = false;
    }
  }

  private async callHost(host: HostEntry, method: string, route: string, body?: unknown): Promise<unknown> {
    return fetchJson(`${host.url}${route}`, { token: this.hostToken, timeoutMs: 30_000, method, body });
  }

  private async storedGeneration(): Promise<number> {
    const client = await StorageClient.connect(this.storage!.url, { clientId: "lockstep-up" });
    try {
      const register = await client.readGeneration(this.options.vm);
      return register === null ? 1 : register.generation + 1;
    } finally {
      await client.close();
    }
  }

  /** Where the primary's guest listens, once it does (guests without a NIC: none). */
  private async primaryPorts(host: HostEntry, listens: boolean, since: number): Promise<Record<string, string>> {
    if (!listens) return {};
    await this.nextEvent((e) => e.host === host.id && e.vm === this.options.vm && (e.event === "listening" || e.event === "stopped"), 30_000, since);
    await this.poll(host);
    const vm = host.last?.vms.find((v) => v.vm === this.options.vm);
    if (vm === undefined || vm.result !== null) throw new LockstepError("USAGE", `${this.options.vm} stopped before it listened: ${vm?.result?.message ?? "gone"}`);
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
    const entry = { host, ...line };
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
      });
      if (this.events.length > EVENTS_MAX) {
        this.events.shift();
        this.eventsDropped++;
      }
      for (const waiter of [...this.waiters]) waiter(this.events.at(-1)!);
    }
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
  private clusterEvent(event: string, msg: string, host = "up"): void {
    this.childLog(host, { ts: new Date().toISOString(), level: "warn", msg, event, vm: null, generation: null });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      checkToken(req, this.options.token);
      const url = new URL(req.url ?? "/", "http://up");
      if (req.method === "GET" && url.pathname === "/api/status") return sendJson(res, 200, await this.status());
      const control = /^\/api\/vms\/([^/]+)\/control$/.exec(url.pathname);
      if (req.method === "POST" && control !== null) {
        const body = await readJson(req);
        await Promise.all(this.hosts.map((host) => this.poll(host)));
        const primary = this.vmView(control[1]!).primary as { host: string } | null;
        if (primary === null) throw new ApiError("UNAVAILABLE", `${control[1]} has no live primary`);
        const host = this.hosts.find((h) => h.id === primary.host)!;
        return sendJson(res, 202, await this.callHost(host, "POST", `/api/vms/${control[1]}/control`, body));
      }
      throw new ApiError("NOT_FOUND", `no route ${req.method} ${url.pathname}`);
    } catch (error) {
      sendError(res, error);
    }
  }
}
