// The primary's driver: it runs the guest in record mode and does what the PrimaryCore says,
// in the order PrimaryReady documents: stall first, then send, then switch generation, then
// release outputs, then ask the arbiter, then halt.

import type { InstrumentedModule } from "../instrument/index.js";
import { Machine, type MachineOptions } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import type { Arbiter } from "./arbiter.js";
import { Channel, connectChannel } from "./channel.js";
import { TICK_MS } from "./config.js";
import type { BackupToPrimary } from "./messages.js";
import { PrimaryCore } from "./primary.js";

export interface PrimaryDriverOptions {
  vmId: string;
  hostId: string;
  module: InstrumentedModule;
  backupUrl: string;
  arbiter: Arbiter;
  token?: string;
  /** The guest's devices: listen addresses, disk, console. */
  devices?: Pick<MachineOptions, "listen" | "diskFile" | "diskBlocks" | "memoryPagesMax" | "onConsole" | "onListening">;
  /** Called as each output leaves, with the count of records before it and how long it was held. */
  onRelease?: (seq: number, heldMs: number) => void;
  log?: (line: Record<string, unknown>) => void;
}

export class PrimaryDriver {
  readonly core: PrimaryCore;
  readonly machine: Machine;
  readonly done: Promise<VmResult>;
  private channel: Channel;
  private readonly held = new Map<number, { seq: number; release: () => void; heldSinceMs: number }>();
  private nextOutputId = 1;
  private readonly ticker: NodeJS.Timeout;
  private readonly log: (line: Record<string, unknown>) => void;

  constructor(private readonly options: PrimaryDriverOptions) {
    this.log = (line) => options.log?.({ vm: options.vmId, role: "primary", generation: this.core.generation, ...line });
    this.core = new PrimaryCore({ vmId: options.vmId, generation: 1, hostId: options.hostId });
    this.machine = new Machine({
      mode: "record",
      module: options.module,
      ...options.devices,
      onRecords: (records) => {
        this.core.append(records);
        this.pump();
      },
      holdOutput: (seq, release) => {
        const id = this.nextOutputId++;
        this.held.set(id, { seq, release, heldSinceMs: performance.now() });
        this.core.output(id, BigInt(seq));
        this.pump();
      },
    });
    this.channel = this.connect();
    this.ticker = setInterval(() => {
      this.core.tick();
      this.pump();
    }, TICK_MS);
    this.done = this.machine.done.finally(() => {
      clearInterval(this.ticker);
      this.channel.terminate();
    });
  }

  /** Dies as a crashed host would: no End record, no goodbye on the channel. */
  crash(): void {
    clearInterval(this.ticker);
    this.channel.terminate();
    this.machine.kill();
  }

  private connect(): Channel {
    return connectChannel(
      this.options.backupUrl,
      {
        open: () => {
          this.core.channelUp();
          this.pump();
        },
        message: (message) => {
          this.core.receive(message as BackupToPrimary);
          this.pump();
        },
        close: (reason) => {
          this.log({ level: "info", msg: "logging channel down", reason });
          this.core.channelDown();
          this.pump();
        },
      },
      (line) => this.log(line),
    );
  }

  private pump(): void {
    const ready = this.core.ready();
    this.machine.setStall(ready.stall);
    for (const message of ready.messages) {
      this.channel.send(message.t === "hello" && this.options.token ? { ...message, token: this.options.token } : message);
    }
    if (ready.goAlone) this.log({ level: "warn", msg: "backup lost: running alone", newGeneration: ready.goAlone.generation });
    for (const id of ready.release) {
      const output = this.held.get(id)!;
      this.held.delete(id);
      output.release();
      this.options.onRelease?.(output.seq, performance.now() - output.heldSinceMs);
    }
    if (ready.testAndSet) {
      void this.options.arbiter.testAndSet(ready.testAndSet).then((result) => {
        this.core.testAndSetResult(result);
        this.pump();
      });
    }
    for (const error of ready.errors) this.log({ level: "warn", msg: "protocol error", error });
    if (ready.halt) {
      this.log({ level: "warn", msg: "halted", reason: ready.halt });
      this.held.clear();
      this.machine.stop();
    }
  }
}
