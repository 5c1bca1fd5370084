// One VM on a host daemon: a primary or a backup driver with this host's devices (TCP ports
// on the host's bind address, the shared disk on the storage server, the console as log
// lines), and the figures the status API shows.

import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import type { WebSocket } from "ws";
import { ControlKind } from "../../protocol/records.js";
import { type DiskSyncSource, serveDiskSync, syncDisk } from "../devices/disk-sync.js";
import { RemoteDisk } from "../devices/remote-disk.js";
import { SwitchNic } from "../devices/switch-nic.js";
import type { Logger } from "../log.js";
import type { NetworkGate } from "../network-gate.js";
import type { StorageClient } from "../storage/client.js";
import { type Arbiter, gatedArbiter, storageArbiter } from "../ft/arbiter.js";
import { BackupDriver, type BackupStatus } from "../ft/backup-driver.js";
import { PrimaryDriver, type PrimaryStatus, type VmDevices } from "../ft/primary-driver.js";
import { loadGuest } from "../vm/guest.js";
import { type NicFactory, openDisk } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import { encodeClone } from "../vm/snapshot-wire.js";
import type { InstrumentedModule } from "../instrument/index.js";
import { CLOSE_REFUSED, serveReplicaFeed } from "../replica/feed.js";
import type { VmSnapshot } from "../vm/snapshot.js";
import { ApiError, fetchJson } from "./http.js";
import type { ControlRequest, VmSpec } from "./vm-spec.js";

const PAGES_PER_MIB = 16;

export interface HostContext {
  hostId: string;
  /** Where guest ports listen (the host's bind address). */
  bind: string;
  storage: StorageClient;
  /** The go-live test-and-set (`--arbiter`); null: the storage server's registers. */
  arbiter: Arbiter | null;
  /** The shared secret of the logging channel, if any. */
  token: string | null;
  /** The host's network, which an operator may cut (network-gate.ts). */
  network: NetworkGate;
  log: Logger;
}

export type VmStatus = (PrimaryStatus | BackupStatus) & {
  vm: string;
  guest: string;
  /** Virtual port → "host:port" where the guest is reachable on this host. */
  ports: Record<string, string>;
  /** Set once the VM stopped on this host: how. */
  result: { stop: VmResult["stop"]; message: string | null; icount: bigint } | null;
};

/** The primary has this long to reach a point where the guest can be snapshotted. */
const CLONE_SNAPSHOT_TIMEOUT_MS = 10_000;
/** Sending the snapshot and starting the backup from it (the driver's own bound is longer). */
const CLONE_TRANSFER_TIMEOUT_MS = 50_000;

export interface CloneResult {
  vm: string;
  generation: number;
  target: string;
  /** The log position and count the new backup starts from. */
  seq: number;
  icount: bigint;
  /** The snapshot as sent. */
  bytes: number;
  /** From the request to the snapshot (the guest is paused only for part of it), and overall. */
  snapshotMs: number;
  totalMs: number;
}

export class HostedVm {
  /** sha256 of the instrumented module: primary and backup must run exactly the same code. */
  readonly moduleHash: string;
  readonly done: Promise<VmResult>;
  private readonly ports: Record<string, string> = {};
  private result: VmStatus["result"] = null;
  /** spec.disk "local": this host's copy of the disk (§4.1). */
  private localDisk: string | null = null;

  private constructor(
    readonly spec: VmSpec,
    readonly driver: PrimaryDriver | BackupDriver,
    private readonly module: InstrumentedModule,
    moduleHash: string,
  ) {
    this.moduleHash = moduleHash;
    this.done = driver.done.then((result) => {
      this.result = { stop: result.stop, message: result.message, icount: result.icount };
      return result;
    });
  }

  /** Starts `spec` here; a backup from `restore` is a live clone of its running primary (§3.1). */
  static async start(spec: VmSpec, context: HostContext, restore?: VmSnapshot): Promise<HostedVm> {
    const guest = loadGuest(spec.guest);
    const moduleHash = createHash("sha256").update(guest.module.wasm).digest("hex");
    const fields = { vm: spec.vm };
    const log = (line: Record<string, unknown>) => {
      const { level = "info", msg = "", ...rest } = line;
      context.log[level as "info" | "warn"](String(msg), rest);
    };
    // A disk of its own (§4.1): a clone first brings its copy to the primary's, sending only
    // the blocks that differ (disk-sync.ts), before the backup starts.
    const localDisk = spec.disk === "local" && spec.diskBlocks > 0 ? localDiskFile(context.hostId, spec.vm) : null;
    // A first pair must start from equal copies; only empty ones are known to be. Copies kept
    // from an earlier life may differ (a dead primary's lags), and which is right is not known
    // here: that restart would start the primary alone and clone (not done yet).
    if (localDisk !== null && restore === undefined && fs.existsSync(localDisk)) {
      throw new ApiError("CONFLICT", `${spec.vm} has a local disk copy here from an earlier life (${localDisk}): a new pair starts from fresh copies only`);
    }
    if (localDisk !== null && restore !== undefined) {
      if (spec.diskSyncUrl === undefined) throw new ApiError("BAD_REQUEST", `a clone of ${spec.vm} with a local disk needs diskSyncUrl`);
      const startedMs = performance.now();
      const { blocksReceived } = await syncDisk(spec.diskSyncUrl, localDisk, spec.diskBlocks);
      context.log.info("disk copy synced", { ...fields, blocksReceived, ms: Math.round(performance.now() - startedMs), event: "diskSynced" });
    }
    // The shared disk on the storage server (§2.2): the primary writes it, a backup that goes
    // live re-issues the IOs its primary left in flight. The Machine closes it.
    const disk =
      spec.diskBlocks > 0 && localDisk === null
        ? await openDisk((deliver) =>
            RemoteDisk.open(context.storage, spec.vm, spec.diskBlocks, deliver, {
              onError: (error, io, final) =>
                context.log[final ? "error" : "warn"]("disk IO failed", { ...fields, io, final, error: (error as Error).message }),
            }),
          )
        : undefined;
    let vm: HostedVm | null = null;
    // A backup that went live runs at a newer generation than its spec: ask the driver.
    const now = () => ({ ...fields, generation: vm?.driver.status().generation ?? spec.generation });
    const devices: VmDevices = {
      memoryPagesMax: spec.memoryMib * PAGES_PER_MIB,
      diskBlocks: spec.diskBlocks,
      diskReads: spec.diskReads,
      ...(localDisk === null ? { disk } : { diskFile: localDisk, diskLocal: true }),
      listen: (port) => ({ host: context.bind, port: spec.ports[String(port)] ?? 0 }),
      nic: spec.switchUrl === undefined ? undefined : switchNic(spec.switchUrl, context, now),
      onListening: (port, address) => {
        const where = `${address.host}:${address.port}`;
        if (vm !== null) vm.ports[String(port)] = where;
        context.log.info("guest port listening", { ...now(), port, address: where, event: "listening" });
      },
      onConsole: (text) => {
        const line = Buffer.from(text).toString("utf8").replace(/\n$/, "");
        context.log.info("console", { ...now(), text: line });
      },
      onDeviceError: (message) => context.log.warn("device error", { ...now(), error: message }),
      onPaused: (paused) => context.log.info(paused ? "guest paused" : "guest resumed", { ...now(), event: paused ? "paused" : "resumed" }),
    };
    const common = {
      vmId: spec.vm,
      hostId: context.hostId,
      generation: spec.generation,
      timeoutMs: spec.timeoutMs,
      network: context.network,
      module: guest.module,
      arbiter: context.arbiter === null ? storageArbiter(context.storage) : gatedArbiter(context.arbiter, context.network),
      token: context.token ?? undefined,
      devices,
      log,
    };
    const driver =
      spec.role === "primary"
        ? new PrimaryDriver({
            ...common,
            backupUrl: withModule(spec.backupUrl!, moduleHash),
            ...(spec.backupUrls === undefined ? {} : { backupUrls: spec.backupUrls.map((url) => withModule(url, moduleHash)) }),
          })
        : new BackupDriver({ ...common, ownListener: false, ...(restore === undefined ? {} : { restore }) });
    vm = new HostedVm(spec, driver, guest.module, moduleHash);
    vm.localDisk = localDisk;
    void vm.done.then((result) => {
      context.log.info("vm stopped", { ...now(), event: "stopped", stop: result.stop, message: result.message, icount: result.icount });
    });
    context.log.info("vm started", {
      ...fields,
      generation: spec.generation,
      role: spec.role,
      guest: spec.guest,
      event: "started",
      ...(restore === undefined ? {} : { clonedAtSeq: restore.seq, clonedAtIcount: restore.icount }),
    });
    return vm;
  }

  /** The primary running this VM here: the one it was started as, or the backup's successor. */
  get primary(): PrimaryDriver | null {
    return this.driver instanceof PrimaryDriver ? this.driver : this.driver.successor;
  }

  /**
   * Live clone (§3.1): snapshot this primary, start a backup from the snapshot on the host at
   * `targetUrl`, and connect the logging channel to it. The guest runs on throughout, except
   * while the snapshot is taken; its records and outputs wait in the log buffer until the new
   * backup acknowledges them (the Output Rule holds from the snapshot on).
   */
  async clone(targetUrl: string, context: HostContext): Promise<CloneResult> {
    const primary = this.primary;
    if (primary === null || !this.running) throw new ApiError("CONFLICT", `${this.spec.vm} is not a running primary here`);
    const startedMs = performance.now();
    let snapshot: VmSnapshot;
    try {
      snapshot = await primary.beginClone(CLONE_SNAPSHOT_TIMEOUT_MS);
    } catch (error) {
      throw new ApiError("CONFLICT", `cannot clone ${this.spec.vm}: ${(error as Error).message}`);
    }
    const snapshotMs = performance.now() - startedMs;
    const generation = primary.status().generation;
    const spec: VmSpec = { ...this.spec, role: "backup", generation, backupUrl: undefined, ports: {} };
    delete spec.backupUrl;
    delete spec.backupUrls;
    delete spec.diskSyncUrl;
    // A disk of its own: the clone syncs its copy from this one, after the snapshot (disk-sync.ts).
    let source: DiskSyncSource | null = null;
    try {
      if (this.localDisk !== null) {
        source = await serveDiskSync(this.localDisk, this.spec.diskBlocks, context.bind);
        spec.diskSyncUrl = source.url;
      }
      const body = encodeClone({ spec, snapshot });
      const answer = (await fetchJson(`${targetUrl}/api/clones`, { token: context.token, timeoutMs: CLONE_TRANSFER_TIMEOUT_MS, method: "POST", body })) as {
        channelUrl: string;
      };
      // Answered once the logging channel is up: the VM is protected again from here on.
      if (!(await primary.connectBackup(withModule(answer.channelUrl, this.moduleHash)))) {
        throw new ApiError("UNAVAILABLE", `the clone of ${this.spec.vm} on ${targetUrl} never connected`);
      }
      const result = { vm: this.spec.vm, generation, target: targetUrl, seq: snapshot.seq, icount: snapshot.icount, bytes: body.length, snapshotMs, totalMs: performance.now() - startedMs };
      context.log.info("clone started", { ...result, ...(source === null ? {} : { diskBlocksSent: source.blocksSent }), event: "cloneStarted" });
      return result;
    } catch (error) {
      primary.abandonClone((error as Error).message);
      throw error instanceof ApiError ? error : new ApiError("UNAVAILABLE", `cannot clone ${this.spec.vm} to ${targetUrl}: ${(error as Error).message}`);
    } finally {
      await source?.close();
    }
  }

  get running(): boolean {
    return this.result === null;
  }

  /** A logging-channel connection for this VM (backups only), already checked for the module. */
  accept(socket: WebSocket): void {
    if (!(this.driver instanceof BackupDriver)) {
      socket.close(1008, `${this.spec.vm} is a primary here`);
      return;
    }
    this.driver.accept(socket);
  }

  /** A read-only replica's feed (replica/feed.ts), from this VM's primary if it runs here. */
  observe(socket: WebSocket, hostId: string): void {
    const primary = this.primary;
    if (primary === null || !this.running) {
      socket.close(CLOSE_REFUSED, `${this.spec.vm} is not a running primary here`);
      return;
    }
    serveReplicaFeed(socket, primary, {
      vm: this.spec.vm,
      guest: this.spec.guest,
      host: hostId,
      module: this.module,
      moduleHash: this.moduleHash,
      memoryPagesMax: this.spec.memoryMib * PAGES_PER_MIB,
      diskBlocks: this.spec.diskBlocks,
      streamNic: this.spec.switchUrl !== undefined,
    });
  }

  /** A digest probe (ControlKind.Digest) of this VM's primary: what it logged, and where. */
  async digest(): Promise<{ vm: string; icount: bigint; seq: bigint; digest: string }> {
    const primary = this.primary;
    if (primary === null || !this.running) throw new ApiError("CONFLICT", `${this.spec.vm} is not a running primary here`);
    const probe = await primary.digestProbe();
    return { vm: this.spec.vm, icount: probe.icount, seq: probe.seq, digest: "sha256:" + Buffer.from(probe.digest).toString("hex") };
  }

  control(request: ControlRequest): void {
    const kind = {
      "power-off": ControlKind.PowerOff,
      pause: ControlKind.Pause,
      resume: ControlKind.Resume,
      "memory-max": ControlKind.MemoryMax,
    }[request.action];
    const value = request.action === "memory-max" ? request.value! * PAGES_PER_MIB : 0;
    // A replaying backup takes its controls from the primary's log, never from an operator.
    const primary = this.primary;
    if (primary === null) throw new ApiError("CONFLICT", `${this.spec.vm} is a backup here: send controls to its primary`);
    primary.control(kind, value);
  }

  /**
   * A migration's steps (§3.3): `handOff` ends the primary here as a crash would (no End
   * record, so its backup may take over), `takeOver` makes the backup here go live at once,
   * and `dropBackup` lets a primary whose backup was stopped run alone without waiting.
   */
  handOff(): void {
    const primary = this.primary;
    if (primary === null || !this.running) throw new ApiError("CONFLICT", `${this.spec.vm} is not a running primary here`);
    primary.crash();
  }

  takeOver(): void {
    if (!(this.driver instanceof BackupDriver) || this.driver.successor !== null || !this.running) {
      throw new ApiError("CONFLICT", `${this.spec.vm} is not a replaying backup here`);
    }
    this.driver.takeOver();
  }

  /** `backup`: its channel's endpoint or a prefix of it (its host's); none: every backup. */
  dropBackup(backup?: string): void {
    const primary = this.primary;
    if (primary === null || !this.running) throw new ApiError("CONFLICT", `${this.spec.vm} is not a running primary here`);
    primary.dropBackup(backup);
  }

  /** Stops the VM here (an operator's stop, or the host shutting down): no go-live follows. */
  async stop(): Promise<void> {
    if (this.primary !== null) this.driver.machine.stop();
    else this.driver.machine.kill();
    await this.done;
  }

  status(): VmStatus {
    return { vm: this.spec.vm, guest: this.spec.guest, ...this.driver.status(), ports: { ...this.ports }, result: this.result };
  }
}

/** The NIC of a VM whose clients come through a switch, logging as the VM does. */
function switchNic(url: string, context: HostContext, now: () => { vm: string; generation: number }): NicFactory {
  return (deliver) =>
    new SwitchNic(
      {
        url,
        vm: now().vm,
        host: context.hostId,
        token: context.token ?? undefined,
        network: context.network,
        generation: () => now().generation,
        onError: (message) => context.log.warn("switch link", { ...now(), error: message }),
        onListening: (port) => context.log.info("guest port listening", { ...now(), port, address: "switch", event: "listening" }),
        onLink: (up, detail) =>
          context.log.info(up ? "switch link up" : "switch link down", { ...now(), detail, event: up ? "switchLinkUp" : "switchLinkDown" }),
      },
      deliver,
    );
}

/** Where this host keeps its copy of a VM's local disk (spec.disk "local"). */
function localDiskFile(hostId: string, vm: string): string {
  return path.join(process.env.LOCKSTEP_LOCAL_DISK_DIR ?? path.join(".lockstep", "local-disks"), hostId, `${vm}.img`);
}

function withModule(url: string, moduleHash: string): string {
  return `${url}${url.includes("?") ? "&" : "?"}module=${moduleHash}`;
}

