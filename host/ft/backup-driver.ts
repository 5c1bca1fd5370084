// The backup's driver: it accepts the primary's logging channel, replays what the BackupCore
// delivers, and does what the core says in the order BackupReady documents: deliver before
// acking, then send, then (when the primary is gone) finish the replay, contend for the
// generation, and go live. Going live ends the replay's log: the vCPU then continues with this
// host's devices, exactly where the primary's log stops (§2.3).

import type { WebSocketServer } from "ws";
import type { LogRecord } from "../../protocol/records.js";
import type { InstrumentedModule } from "../instrument/index.js";
import { Machine, type MachineOptions, type ReplaySource } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import type { Arbiter } from "./arbiter.js";
import { BackupCore } from "./backup.js";
import { Channel, listenForChannels } from "./channel.js";
import { TICK_MS } from "./config.js";
import type { PrimaryToBackup } from "./messages.js";

export interface BackupDriverOptions {
  vmId: string;
  hostId: string;
  module: InstrumentedModule;
  arbiter: Arbiter;
  token?: string;
  /** Where the logging channel listens; loopback by default. */
  host?: string;
  port?: number;
  devices?: Pick<MachineOptions, "listen" | "diskFile" | "diskBlocks" | "memoryPagesMax" | "onConsole" | "onListening">;
  onLive?: (generation: number, icount: bigint) => void;
  log?: (line: Record<string, unknown>) => void;
}

/** Records in order for the replaying vCPU; `end()` once the log is complete (go-live). */
class RecordFeed implements ReplaySource {
  private readonly batches: LogRecord[][] = [];
  private ended = false;
  private wake: (() => void) | null = null;

  push(records: readonly LogRecord[]): void {
    if (records.length === 0) return;
    this.batches.push([...records]);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async next(): Promise<LogRecord[] | null> {
    while (this.batches.length === 0 && !this.ended) {
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
    return this.batches.shift() ?? null;
  }
}

export class BackupDriver {
  readonly core: BackupCore;
  readonly machine: Machine;
  readonly done: Promise<VmResult>;
  /** Resolves with the channel's port once it listens. */
  readonly listening: Promise<number>;
  private readonly feed = new RecordFeed();
  private channel: Channel | null = null;
  private server: WebSocketServer | null = null;
  private live = false;
  private readonly ticker: NodeJS.Timeout;
  private readonly log: (line: Record<string, unknown>) => void;

  constructor(private readonly options: BackupDriverOptions) {
    this.log = (line) => options.log?.({ vm: options.vmId, role: "backup", ...line });
    this.core = new BackupCore({ vmId: options.vmId, generation: 1, hostId: options.hostId });
    const onConsole = options.devices?.onConsole;
    this.machine = new Machine({
      mode: "replay",
      goLiveAs: "live",
      module: options.module,
      ...options.devices,
      // A backup's outputs are dropped (§2.2); once live they are its own.
      onConsole: (text) => {
        if (this.live) onConsole?.(text);
      },
      replay: this.feed,
      onReplayProgress: (seq, icount) => {
        this.core.replayed(BigInt(seq), icount);
        this.pump();
      },
      onLive: () => undefined,
    });
    this.listening = listenForChannels(options.host ?? "127.0.0.1", options.port ?? 0, (socket) => {
      if (this.channel?.open || this.live) {
        socket.close(1008, "this backup already has a primary");
        return;
      }
      const channel: Channel = new Channel(
        socket,
        {
          message: (message) => {
            if (message.t === "hello" && this.options.token !== undefined && message.token !== this.options.token) {
              channel.reject("wrong token");
              return;
            }
            this.core.receive(message as PrimaryToBackup);
            this.pump();
          },
          close: (reason) => {
            this.log({ level: "info", msg: "logging channel down", reason });
            if (this.channel === channel) this.core.channelDown();
            this.pump();
          },
        },
        (line) => this.log(line),
      );
      this.channel = channel;
      this.core.channelUp();
      this.pump();
    }).then(({ server, port }) => {
      this.server = server;
      return port;
    });
    this.ticker = setInterval(() => {
      this.core.tick();
      this.pump();
    }, TICK_MS);
    this.done = this.machine.done.finally(() => {
      clearInterval(this.ticker);
      this.channel?.terminate();
      this.server?.close();
    });
  }

  /** Stops the VM (a live backup, or one told to power off). */
  stop(): void {
    this.machine.stop();
  }

  private pump(): void {
    const ready = this.core.ready();
    this.feed.push(ready.deliver);
    for (const message of ready.messages) this.channel?.send(message);
    if (ready.finishReplay) this.log({ level: "warn", msg: "primary lost: finishing replay" });
    if (ready.testAndSet) {
      void this.options.arbiter.testAndSet(ready.testAndSet).then((result) => {
        this.core.testAndSetResult(result);
        this.pump();
      });
    }
    for (const error of ready.errors) this.log({ level: "warn", msg: "protocol error", error });
    if (ready.goLive) {
      this.log({ level: "warn", msg: "went live", newGeneration: ready.goLive.generation, icount: String(ready.goLive.icount) });
      this.live = true;
      clearInterval(this.ticker);
      this.feed.end();
      this.options.onLive?.(ready.goLive.generation, ready.goLive.icount);
    }
    if (ready.halt) {
      this.log({ level: "warn", msg: "halted", reason: ready.halt });
      // A halted backup never goes live: its replay is of no further use.
      this.machine.kill();
    }
  }
}
