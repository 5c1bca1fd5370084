// One VM on a host daemon: a primary or a backup driver with this host's devices (TCP ports
// on the host's bind address, the shared disk on the storage server, the console as log
// lines), and the figures the status API shows.

import { createHash } from "node:crypto";
import type { WebSocket } from "ws";
import { ControlKind } from "../../protocol/records.js";
import { RemoteDisk } from "../devices/remote-disk.js";
import { SwitchNic } from "../devices/switch-nic.js";
import type { Logger } from "../log.js";
import type { NetworkGate } from "../network-gate.js";
import type { StorageClient } from "../storage/client.js";
import { storageArbiter } from "../ft/arbiter.js";
import { BackupDriver, type BackupStatus } from "../ft/backup-driver.js";
import { PrimaryDriver, type PrimaryStatus, type VmDevices } from "../ft/primary-driver.js";
import { loadGuest } from "../vm/guest.js";
import { type NicFactory, openDisk } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import { ApiError } from "./http.js";
import type { ControlRequest, VmSpec } from "./vm-spec.js";

const PAGES_PER_MIB = 16;

export interface HostContext {
  hostId: string;
  /** Where guest ports listen (the host's bind address). */
  bind: string;
  storage: StorageClient;
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

export class HostedVm {
  /** sha256 of the instrumented module: primary and backup must run exactly the same code. */
  readonly moduleHash: string;
  readonly done: Promise<VmResult>;
  private readonly ports: Record<string, string> = {};
  private result: VmStatus["result"] = null;

  private constructor(
    readonly spec: VmSpec,
    readonly driver: PrimaryDriver | BackupDriver,
    moduleHash: string,
  ) {
    this.moduleHash = moduleHash;
    this.done = driver.done.then((result) => {
      this.result = { stop: result.stop, message: result.message, icount: result.icount };
      return result;
    });
  }

  static async start(spec: VmSpec, context: HostContext): Promise<HostedVm> {
    const guest = loadGuest(spec.guest);
    const moduleHash = createHash("sha256").update(guest.module.wasm).digest("hex");
    const fields = { vm: spec.vm };
    const log = (line: Record<string, unknown>) => {
      const { level = "info", msg = "", ...rest } = line;
      context.log[level as "info" | "warn"](String(msg), rest);
    };
    // The shared disk on the storage server (§2.2): the primary writes it, a backup that goes
    // live re-issues the IOs its primary left in flight. The Machine closes it.
    const disk =
      spec.diskBlocks > 0
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
      disk,
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
      arbiter: storageArbiter(context.storage),
      token: context.token ?? undefined,
      devices,
      log,
    };
    const driver =
      spec.role === "primary"
        ? new PrimaryDriver({ ...common, backupUrl: withModule(spec.backupUrl!, moduleHash) })
        : new BackupDriver({ ...common, ownListener: false });
    vm = new HostedVm(spec, driver, moduleHash);
    void vm.done.then((result) => {
      context.log.info("vm stopped", { ...now(), event: "stopped", stop: result.stop, message: result.message, icount: result.icount });
    });
    context.log.info("vm started", { ...fields, generation: spec.generation, role: spec.role, guest: spec.guest, event: "started" });
    return vm;
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

  control(request: ControlRequest): void {
    const kind = {
      "power-off": ControlKind.PowerOff,
      pause: ControlKind.Pause,
      resume: ControlKind.Resume,
      "memory-max": ControlKind.MemoryMax,
    }[request.action];
    const value = request.action === "memory-max" ? request.value! * PAGES_PER_MIB : 0;
    if (this.driver instanceof PrimaryDriver) {
      this.driver.control(kind, value);
    } else {
      // A replaying backup takes its controls from the primary's log, never from an operator.
      if (this.driver.core.state !== "live") throw new ApiError("CONFLICT", `${this.spec.vm} is a backup here: send controls to its primary`);
      this.driver.machine.control(kind, value);
    }
  }

  /** Stops the VM here (an operator's stop, or the host shutting down): no go-live follows. */
  async stop(): Promise<void> {
    if (this.driver instanceof PrimaryDriver || this.driver.core.state === "live") this.driver.machine.stop();
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

function withModule(url: string, moduleHash: string): string {
  return `${url}${url.includes("?") ? "&" : "?"}module=${moduleHash}`;
}
