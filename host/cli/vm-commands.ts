// `lockstep run`, `record` and `replay`: one VM on this machine, with or without a log.

import path from "node:path";
import { isCodecError, LOG_VERSION } from "../../protocol/codec.js";
import { LogFileReader, LogFileWriter } from "../../protocol/log-file.js";
import type { ListenAddress } from "../devices/tcp-nic.js";
import { LockstepError } from "../errors.js";
import { loadGuest, type Guest } from "../vm/guest.js";
import { Machine, MEMORY_PAGES_MAX_DEFAULT } from "../vm/machine.js";
import type { VmResult } from "../vm/messages.js";
import { VmConfig } from "./vm-config.js";
import { batchedReplaySource } from "../vm/replay-source.js";

/** Records handed to the replay vCPU per message. */

export interface VmCommandOptions {
  guest: string;
  listen: string[];
  disk: string | null;
  diskBlocks: number;
  memoryMiB: number;
}

export async function runCommand(options: VmCommandOptions): Promise<number> {
  const guest = loadGuest(options.guest);
  const config = vmConfig(guest, options);
  const machine = new Machine({
    mode: "live",
    module: guest.module,
    ...machineDevices(guest, options, config),
    onConsole: (text) => process.stdout.write(text),
  });
  stopOnSignals(machine);
  return reportEnd(await machine.done, false);
}

export async function recordCommand(
  options: VmCommandOptions & {
    log: string;
    maxInstructions: bigint | null;
    seconds: number | null;
    digestOutputs: boolean;
    jitterSeed: number | null;
  },
): Promise<number> {
  const guest = loadGuest(options.guest);
  const config = vmConfig(guest, options);
  const writer = openLogWriter(options.log, guest, config);
  let writeError: string | null = null;
  const machine = new Machine({
    mode: "record",
    module: guest.module,
    ...machineDevices(guest, options, config),
    maxInstructions: options.maxInstructions,
    digestAtOutputs: options.digestOutputs,
    jitterSeed: options.jitterSeed,
    onConsole: (text) => process.stderr.write(text),
    onRecords: (records) => {
      if (writeError !== null) return;
      try {
        for (const record of records) writer.append(record);
      } catch (error) {
        // A full disk: stop recording rather than keep a guest running whose log is lost.
        writeError = `cannot write log ${options.log}: ${(error as Error).message}`;
        machine.stop();
      }
    },
  });
  stopOnSignals(machine);
  const timer = options.seconds === null ? null : setTimeout(() => machine.stop(), options.seconds * 1000);
  const result = await machine.done;
  if (timer) clearTimeout(timer);
  try {
    writer.close();
  } catch (error) {
    writeError ??= `cannot write log ${options.log}: ${(error as Error).message}`;
  }
  if (writeError !== null) throw new LockstepError("LOG_INVALID", writeError);
  return reportEnd(result, true);
}

export async function replayCommand(options: {
  guest: string;
  log: string;
  until: bigint | null;
  console: boolean;
}): Promise<number> {
  const guest = loadGuest(options.guest);
  let reader: LogFileReader;
  try {
    reader = await LogFileReader.open(options.log);
  } catch (error) {
    throw logError(options.log, error);
  }
  const header = reader.header;
  if (Buffer.compare(Buffer.from(header.moduleHash), Buffer.from(guest.hash)) !== 0) {
    await reader.close();
    throw new LockstepError(
      "LOG_MODULE_MISMATCH",
      `${options.log} was recorded from module sha256:${hex(header.moduleHash)}, not ${guest.file} (sha256:${hex(guest.hash)})`,
    );
  }
  const config = VmConfig.parseJson(header.config);
  let feedError: unknown = null;
  const machine = new Machine({
    mode: "replay",
    module: guest.module,
    diskBlocks: config.diskBlocks,
    memoryPagesMax: config.memoryPagesMax,
    untilIcount: options.until,
    replay: batchedReplaySource(reader.records(), (error) => {
      feedError = error;
    }),
    onConsole: options.console ? (text) => process.stderr.write(text) : undefined,
  });
  const result = await machine.done;
  if (feedError !== null) throw logError(options.log, feedError);
  return reportEnd(result, true);
}

function vmConfig(guest: Guest, options: VmCommandOptions): VmConfig {
  return {
    guest: guest.name,
    diskBlocks: guest.usesDisk || options.disk !== null ? options.diskBlocks : 0,
    memoryPagesMax: Math.min(MEMORY_PAGES_MAX_DEFAULT, Math.floor((options.memoryMiB * 1024 * 1024) / 65536)),
  };
}

function machineDevices(guest: Guest, options: VmCommandOptions, config: VmConfig) {
  const diskFile =
    config.diskBlocks === 0 ? null : (options.disk ?? path.join(".lockstep", "disks", `${guest.name}.img`));
  return {
    diskFile,
    diskBlocks: config.diskBlocks,
    memoryPagesMax: config.memoryPagesMax,
    listen: listenMap(options.listen),
    onListening: (port: number, address: ListenAddress) =>
      process.stderr.write(`lockstep: ${guest.name} listening on ${address.host}:${address.port} (virtual port ${port})\n`),
    onDeviceError: (message: string) => process.stderr.write(`lockstep: ${message}\n`),
  };
}

/**
 * `--listen HOST:PORT` serves the guest's first listening port there; `--listen VPORT=HOST:PORT`
 * names the virtual port. Without one, a virtual port is served on 127.0.0.1 at the same number.
 */
export function listenMap(specs: string[]): (virtualPort: number) => ListenAddress {
  const named = new Map<number, ListenAddress>();
  let first: ListenAddress | null = null;
  for (const spec of specs) {
    const match = /^(?:(\d+)=)?(.+):(\d+)$/.exec(spec);
    if (!match) throw new LockstepError("USAGE", `--listen takes HOST:PORT or VPORT=HOST:PORT, not "${spec}"`);
    const address = { host: match[2]!.replace(/^\[|\]$/g, ""), port: Number(match[3]) };
    if (address.port > 65535) throw new LockstepError("USAGE", `port out of range in --listen ${spec}`);
    if (match[1] !== undefined) named.set(Number(match[1]), address);
    else first ??= address;
  }
  return (virtualPort) => {
    const address = named.get(virtualPort) ?? first;
    if (address !== null && !named.has(virtualPort)) first = null;
    return address ?? { host: "127.0.0.1", port: virtualPort };
  };
}

function openLogWriter(file: string, guest: Guest, config: VmConfig): LogFileWriter {
  try {
    return LogFileWriter.create(
      file,
      { version: LOG_VERSION, moduleHash: guest.hash, createdMs: Date.now(), config: JSON.stringify(config) },
      { overwrite: true },
    );
  } catch (error) {
    throw new LockstepError("LOG_INVALID", `cannot create log ${file}: ${(error as Error).message}`);
  }
}


function logError(file: string, error: unknown): LockstepError {
  if (isCodecError(error)) return new LockstepError("LOG_INVALID", `${file}: ${error.message}`);
  const code = (error as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return new LockstepError("FILE_NOT_FOUND", `no such file: ${file}`);
  return new LockstepError("LOG_INVALID", `${file}: ${(error as Error).message}`);
}

/** Prints the result line (record, replay) and any failure; returns the exit code. */
function reportEnd(result: VmResult, printLine: boolean): number {
  if (printLine && result.stop !== "error") {
    process.stdout.write(`{"icount":${result.icount},"digest":"${result.digest}","entries":${result.entries}}\n`);
  }
  if (result.message !== null && result.stop !== "stopped") {
    process.stderr.write(`lockstep: ${result.message} (at icount ${result.icount})\n`);
  }
  if (result.stop === "exit") return result.exitCode;
  if (result.stop === "stopped") return 0;
  return 1;
}

function stopOnSignals(machine: Machine): void {
  const stop = () => machine.stop();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}
