// `lockstep host`: a hypervisor daemon that runs any number of VMs, each as a primary or a
// backup, on one HTTP port:
//
//   GET    /api/status              this host and each VM's figures (VmStatus); with
//                                   ?eventsFrom=N also its event lines from number N on
//                                   (event-ring.ts: how a standalone cluster service hears them)
//   POST   /api/vms                 start a VM (VmSpec); a backup first, then its primary
//   POST   /api/vms/:vm/control     power-off, pause, resume, memory-max (control entries, §3.3)
//   DELETE /api/vms/:vm             stop the VM here and forget it
//   POST   /api/vms/:vm/clone       {"to": "http://HOST:PORT"}: a live clone of this primary
//                                   becomes its backup on that host (§3.1)
//   POST   /api/vms/:vm/hand-off    a migration's steps (§3.3): end this primary as a crash
//   POST   /api/vms/:vm/take-over   would; make this backup go live now; let this primary
//   POST   /api/vms/:vm/drop-backup run without the backup the operator stopped ({"backup": its
//                                   channel's URL or a prefix}; none: every backup), settled now
//   POST   /api/clones              (application/octet-stream: spec and snapshot, from a
//                                   primary's host) start a backup from a running primary's snapshot
//   POST   /api/network             {"connected": false}: cut this host off from its peers
//                                   (a partition: its VMs lose channels, switch and storage);
//                                   {"connected": true} joins again
//   POST   /api/vms/:vm/digest      a digest probe of this primary: {icount, seq, digest} as logged
//   WS     /channel/:vm?module=HEX  the logging channel of a backup VM on this host
//   WS     /observe/:vm             a read-only replica's feed from this primary (replica/feed.ts)
//
// Loopback by default; any other bind address needs a token, which every API request carries
// as `Authorization: Bearer <token>` and every logging channel in its hello. A bad request or
// a bad peer gets an error answer and a log line; the daemon keeps running.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer } from "ws";
import { z } from "zod";
import { FRAME_BYTES_MAX } from "../../protocol/codec.js";
import { LockstepError } from "../errors.js";
import { channelDeflate, logCompressionDefault } from "../ft/channel.js";
import type { Logger } from "../log.js";
import { NetworkGate } from "../network-gate.js";
import type { StorageClient } from "../storage/client.js";
import type { Arbiter } from "../ft/arbiter.js";
import { type CloneBody, decodeClone, SNAPSHOT_BYTES_MAX } from "../vm/snapshot-wire.js";
import type { VmSnapshot } from "../vm/snapshot.js";
import { ApiError, checkToken, isLoopback, readBody, readJson, sendError, sendJson } from "./http.js";
import { EventRing, keepingEvents } from "./event-ring.js";
import { type HostContext, HostedVm, type VmStatus } from "./hosted-vm.js";
import { ControlSchema, describeIssues, VM_NAME, type VmSpec, VmSpecSchema } from "./vm-spec.js";

/** VMs one host runs at most: each is a worker thread and its memory. */
export const HOST_VMS_MAX = 64;

export interface HostDaemonOptions {
  id: string;
  bind: string;
  port: number;
  token: string | null;
  storage: StorageClient;
  /** The go-live arbiter (`--arbiter`); null: the storage server's registers. */
  arbiter: Arbiter | null;
  log: Logger;
}

export interface HostStatus {
  id: string;
  pid: number;
  url: string;
  storageReachable: boolean;
  /** False while an operator has cut this host off (POST /api/network). */
  connected: boolean;
  vms: VmStatus[];
}

const NetworkSchema = z.object({ connected: z.boolean() }).strict();
const MIGRATION_STEPS: Record<string, ((vm: HostedVm) => void) | undefined> = {
  "hand-off": (vm) => vm.handOff(),
  "take-over": (vm) => vm.takeOver(),
};
/** drop-backup's body: which backup, by its channel's endpoint or a prefix of it (its host's); none: every one. */
const DropBackupSchema = z.object({ backup: z.string().min(1).max(256).optional() }).strict();
const CloneSchema = z.object({ to: z.string().url().startsWith("http") }).strict();

export class HostDaemon {
  private readonly vms = new Map<string, HostedVm>();
  // Log compression is negotiated per connection: accepted here if this host has it on.
  private readonly channels = new WebSocketServer({ noServer: true, maxPayload: 2 * FRAME_BYTES_MAX, perMessageDeflate: channelDeflate(logCompressionDefault()) });
  private readonly context: HostContext;
  /** Replicas' feeds: they send nothing, so their frames are refused past a few bytes. */
  private readonly observers = new WebSocketServer({ noServer: true, maxPayload: 1024, perMessageDeflate: false });

  private constructor(
    private readonly options: HostDaemonOptions,
    private readonly server: Server,
    readonly url: string,
    private readonly events: EventRing,
  ) {
    const network = new NetworkGate();
    network.onChange((connected) => {
      options.storage.setCutOff(!connected);
      // Every logging channel this host accepted goes with the cut, as on a real partition.
      if (!connected) for (const socket of this.channels.clients) socket.terminate();
    });
    this.context = { hostId: options.id, bind: options.bind, storage: options.storage, arbiter: options.arbiter, token: options.token, log: options.log, network };
  }

  static async start(given: HostDaemonOptions): Promise<HostDaemon> {
    const events = new EventRing();
    const options = { ...given, log: keepingEvents(given.log, events) };
    if (!isLoopback(options.bind) && options.token === null) {
      throw new LockstepError("USAGE", `--bind ${options.bind} is not loopback: give a --token (or $LOCKSTEP_TOKEN)`);
    }
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", (error) => reject(new LockstepError("USAGE", `cannot listen on ${options.bind}:${options.port}: ${error.message}`)));
      server.listen(options.port, options.bind, resolve);
    });
    const address = server.address();
    const port = typeof address === "object" && address !== null ? address.port : options.port;
    const host = options.bind.includes(":") ? `[${options.bind}]` : options.bind;
    const daemon = new HostDaemon(options, server, `http://${host}:${port}`, events);
    server.on("request", (req, res) => void daemon.handle(req, res));
    server.on("upgrade", (req, socket, head) => daemon.upgrade(req, socket, head));
    return daemon;
  }

  status(): HostStatus {
    return {
      id: this.options.id,
      pid: process.pid,
      url: this.url,
      storageReachable: this.options.storage.reachable,
      connected: this.context.network.connected,
      vms: [...this.vms.values()].map((vm) => vm.status()),
    };
  }

  /** Stops every VM (no go-live follows from this host's side) and the server. */
  async close(): Promise<void> {
    await Promise.all([...this.vms.values()].map((vm) => vm.stop()));
    for (const socket of this.channels.clients) socket.terminate();
    for (const socket of this.observers.clients) socket.terminate();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      checkToken(req, this.options.token);
      const url = new URL(req.url ?? "/", "http://host");
      const parts = url.pathname.split("/").filter((p) => p.length > 0);
      if (req.method === "GET" && url.pathname === "/api/status") {
        const from = url.searchParams.get("eventsFrom");
        if (from === null) return sendJson(res, 200, this.status());
        if (!/^\d{1,15}$/.test(from)) throw new ApiError("BAD_REQUEST", "eventsFrom=N: an event number");
        return sendJson(res, 200, { ...this.status(), events: this.events.since(Number(from)) });
      }
      if (req.method === "POST" && url.pathname === "/api/vms") return sendJson(res, 201, await this.startVm(await readJson(req)));
      if (req.method === "POST" && url.pathname === "/api/clones") return sendJson(res, 201, await this.startClone(await readBody(req, SNAPSHOT_BYTES_MAX)));
      if (req.method === "POST" && url.pathname === "/api/network") {
        const parsed = NetworkSchema.safeParse(await readJson(req));
        if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
        this.context.network.set(parsed.data.connected);
        this.options.log.warn(parsed.data.connected ? "network joined again" : "network cut off", { event: parsed.data.connected ? "networkJoined" : "networkCut" });
        return sendJson(res, 200, { connected: parsed.data.connected });
      }
      if (parts.length >= 3 && parts[0] === "api" && parts[1] === "vms") {
        const vm = this.vmNamed(parts[2]!);
        if (req.method === "POST" && parts[3] === "control" && parts.length === 4) {
          const parsed = ControlSchema.safeParse(await readJson(req));
          if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
          if (!vm.running) throw new ApiError("CONFLICT", `${vm.spec.vm} is not running here`);
          vm.control(parsed.data);
          this.options.log.info("control", { vm: vm.spec.vm, action: parsed.data.action, value: parsed.data.value ?? null, event: "control" });
          return sendJson(res, 202, { vm: vm.spec.vm, action: parsed.data.action });
        }
        const step = parts.length === 4 && req.method === "POST" ? MIGRATION_STEPS[parts[3]!] : undefined;
        if (step !== undefined) {
          step(vm);
          this.options.log.info("migration step", { vm: vm.spec.vm, step: parts[3], event: "migrationStep" });
          return sendJson(res, 202, { vm: vm.spec.vm, step: parts[3] });
        }
        if (req.method === "POST" && parts[3] === "drop-backup" && parts.length === 4) {
          const parsed = DropBackupSchema.safeParse(await readJson(req));
          if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
          vm.dropBackup(parsed.data.backup);
          this.options.log.info("migration step", { vm: vm.spec.vm, step: "drop-backup", backup: parsed.data.backup ?? null, event: "migrationStep" });
          return sendJson(res, 202, { vm: vm.spec.vm, step: "drop-backup" });
        }
        if (req.method === "POST" && parts[3] === "digest" && parts.length === 4) {
          // Answered once the vCPU has logged it: at its next delivery point.
          return sendJson(res, 200, await vm.digest());
        }
        if (req.method === "POST" && parts[3] === "clone" && parts.length === 4) {
          const parsed = CloneSchema.safeParse(await readJson(req));
          if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
          if (parsed.data.to.replace(/\/$/, "") === this.url) throw new ApiError("CONFLICT", "primary and backup never share a host");
          if (!this.context.network.connected) throw new ApiError("UNAVAILABLE", "this host is cut off from the network");
          return sendJson(res, 201, await vm.clone(parsed.data.to.replace(/\/$/, ""), this.context));
        }
        if (req.method === "DELETE" && parts.length === 3) {
          await vm.stop();
          this.vms.delete(vm.spec.vm);
          return sendJson(res, 200, { vm: vm.spec.vm, result: vm.status().result });
        }
      }
      throw new ApiError("NOT_FOUND", `no route ${req.method} ${url.pathname}`);
    } catch (error) {
      if (!(error instanceof ApiError)) this.options.log.error("control API failure", { error: String(error) });
      else if (error.code === "UNAUTHORIZED") this.options.log.warn("request rejected", { code: error.code, path: req.url });
      sendError(res, error instanceof LockstepError ? new ApiError("BAD_REQUEST", `${error.message} (${error.code})`) : error);
    }
  }

  /** A backup from a running primary's snapshot: the receiving end of a live clone. */
  private async startClone(body: Buffer): Promise<VmStatus & { channelUrl: string | null }> {
    let clone: CloneBody<VmSpec>;
    try {
      clone = decodeClone(body, (spec) => {
        const parsed = VmSpecSchema.safeParse(spec);
        if (!parsed.success) throw new Error(describeIssues(parsed.error));
        return parsed.data;
      });
    } catch (error) {
      throw new ApiError("BAD_REQUEST", (error as Error).message);
    }
    if (clone.spec.role !== "backup") throw new ApiError("BAD_REQUEST", "a clone starts a backup");
    return this.startVm(clone.spec, clone.snapshot);
  }

  private async startVm(body: unknown, restore?: VmSnapshot): Promise<VmStatus & { channelUrl: string | null }> {
    const parsed = VmSpecSchema.safeParse(body);
    if (!parsed.success) throw new ApiError("BAD_REQUEST", describeIssues(parsed.error));
    const spec = parsed.data;
    const existing = this.vms.get(spec.vm);
    if (existing?.running) throw new ApiError("CONFLICT", `${spec.vm} already runs here as ${existing.spec.role}`);
    if (this.vms.size >= HOST_VMS_MAX && existing === undefined) throw new ApiError("UNAVAILABLE", `this host runs ${HOST_VMS_MAX} VMs already`);
    const vm = await HostedVm.start(spec, this.context, restore);
    this.vms.set(spec.vm, vm);
    const channelUrl = spec.role === "backup" ? `${this.url.replace(/^http/, "ws")}/channel/${spec.vm}` : null;
    return { ...vm.status(), channelUrl };
  }

  /** A replica's feed: the control API's token, on the upgrade's Authorization header. */
  private upgradeObserver(req: IncomingMessage, socket: Duplex, head: Buffer, name: string): void {
    socket.on("error", () => socket.destroy());
    const refuse = (status: string, reason: string) => void socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-type: text/plain\r\n\r\n${reason}\n`);
    try {
      checkToken(req, this.options.token);
    } catch (error) {
      this.options.log.warn("replica feed refused", { vm: name, reason: (error as Error).message, peer: req.socket.remoteAddress });
      return refuse("401 Unauthorized", (error as Error).message);
    }
    const vm = VM_NAME.test(name) ? this.vms.get(name) : undefined;
    if (vm === undefined) return refuse("404 Not Found", `no VM ${name} on this host`);
    this.observers.handleUpgrade(req, socket, head, (ws) => {
      this.options.log.info("replica feed opened", { vm: name, event: "replicaOpened" });
      ws.on("close", (code, reason) => this.options.log.info("replica feed closed", { vm: name, code, reason: reason.toString(), event: "replicaClosed" }));
      vm.observe(ws, this.options.id);
    });
  }

  private vmNamed(name: string): HostedVm {
    const vm = VM_NAME.test(name) ? this.vms.get(name) : undefined;
    if (vm === undefined) throw new ApiError("NOT_FOUND", `no VM ${name} on this host`);
    return vm;
  }

  /** A logging channel: routed to its backup VM once the module matches. A replica's feed. */
  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? "/", "http://host");
    const observe = /^\/observe\/([^/]+)$/.exec(url.pathname);
    if (observe !== null) return this.upgradeObserver(req, socket, head, observe[1]!);
    const match = /^\/channel\/([^/]+)$/.exec(url.pathname);
    const vm = match !== null && VM_NAME.test(match[1]!) ? this.vms.get(match[1]!) : undefined;
    const refuse = (status: string, reason: string) => {
      this.options.log.warn("logging channel refused", { vm: match?.[1] ?? null, reason, peer: req.socket.remoteAddress });
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-type: text/plain\r\n\r\n${reason}\n`);
    };
    if (!this.context.network.connected) return refuse("503 Service Unavailable", "this host is cut off from the network");
    if (vm === undefined || !vm.running || vm.spec.role !== "backup") return refuse("404 Not Found", `no backup VM at ${url.pathname}`);
    const module = url.searchParams.get("module");
    if (module !== vm.moduleHash) {
      return refuse("409 Conflict", `module ${module ?? "(none)"} is not this backup's ${vm.moduleHash}: primary and backup must run the same guest and Lockstep build`);
    }
    this.channels.handleUpgrade(req, socket, head, (ws) => vm.accept(ws));
  }
}
