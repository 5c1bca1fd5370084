#!/usr/bin/env -S node --no-liftoff
// The `lockstep` command line. Every failure a user can cause ends in one line on stderr,
// `lockstep: <what happened> (<CODE>)`, and a nonzero exit; never a stack trace.

import v8 from "node:v8";
import { parseArgs } from "node:util";
import { LockstepError } from "../errors.js";
import { exitWith } from "./exit.js";
import { inspectCommand } from "./inspect.js";
import { recordCommand, replayCommand, runCommand, type VmCommandOptions } from "./vm-commands.js";

// V8 11 has no on-stack replacement for Wasm: a long export call that starts in Liftoff stays
// there. Compile with TurboFan up front unless the user chose a tier (the tier tests do).
if (!process.execArgv.some((flag) => /liftoff|turbo/.test(flag))) v8.setFlagsFromString("--no-liftoff");

const USAGE = `usage:
  lockstep run <guest> [--listen [VPORT=]HOST:PORT]... [--disk FILE] [--disk-blocks N] [--memory-mib N]
  lockstep record <guest> --log FILE [--listen [VPORT=]HOST:PORT]... [--max-instructions N] [--seconds S]
                  [--digest-outputs] [--jitter-seed N] [--disk FILE] [--disk-blocks N] [--memory-mib N]
  lockstep replay <guest> --log FILE [--until COUNT] [--console]
  lockstep inspect <log> [--json]
  lockstep storage [--port PORT] [--dir DIR]          (lockstep storage --help)
  lockstep host --storage URL [--id ID] [--port PORT] (lockstep host --help)
  lockstep switch --service NAME=VM:VPORT[@HOST:PORT]... [--port PORT] (lockstep switch --help)
  lockstep up [--guest NAME] [--hosts N]              (lockstep up --help)
  lockstep cluster --storage URL | --arbiter etcd://.. (lockstep cluster --help)
  lockstep migrate <vm> --role primary|backup --to HOST (lockstep migrate --help)

<guest> is an example's name (counter, cpu, kv, http) or a path to an AssemblyScript-built .wasm.
record and replay end by printing {"icount":N,"digest":"sha256:<hex>","entries":N} on stdout.`;

const VM_OPTIONS = {
  listen: { type: "string", multiple: true, default: [] as string[] },
  disk: { type: "string" },
  "disk-blocks": { type: "string", default: "4096" },
  "memory-mib": { type: "string", default: "1024" },
} as const;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "run": {
      const { values, positionals } = parseArgs({ args: rest, options: VM_OPTIONS, allowPositionals: true });
      return runCommand(vmOptions(positionals, values));
    }
    case "record": {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: {
          ...VM_OPTIONS,
          log: { type: "string" },
          "max-instructions": { type: "string" },
          seconds: { type: "string" },
          "digest-outputs": { type: "boolean", default: false },
          "jitter-seed": { type: "string" },
        },
      });
      return recordCommand({
        ...vmOptions(positionals, values),
        log: required(values.log, "--log FILE"),
        maxInstructions: values["max-instructions"] === undefined ? null : count(values["max-instructions"], "--max-instructions"),
        seconds: values.seconds === undefined ? null : number(values.seconds, "--seconds", 0, 1e9),
        digestOutputs: values["digest-outputs"],
        jitterSeed: values["jitter-seed"] === undefined ? null : number(values["jitter-seed"], "--jitter-seed", 0, 2 ** 31),
      });
    }
    case "replay": {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { log: { type: "string" }, until: { type: "string" }, console: { type: "boolean", default: false } },
      });
      return replayCommand({
        guest: onePositional(positionals, "<guest>"),
        log: required(values.log, "--log FILE"),
        until: values.until === undefined ? null : count(values.until, "--until"),
        console: values.console,
      });
    }
    case "inspect": {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { json: { type: "boolean", default: false } },
      });
      return inspectCommand(onePositional(positionals, "<log>"), values.json);
    }
    case "storage":
      return (await import("../storage/cli.js")).storageCommand(rest);
    case "host":
      return (await import("./host-command.js")).hostCommand(rest);
    case "switch":
      return (await import("./switch-command.js")).switchCommand(rest);
    case "up":
      return (await import("./up-command.js")).upCommand(rest);
    case "cluster":
      return (await import("./cluster-command.js")).clusterCommand(rest);
    case "migrate":
      return (await import("./migrate-command.js")).migrateCommand(rest);
    case "help":
    case "--help":
    case "-h":
    case undefined:
      process.stdout.write(USAGE + "\n");
      return command === undefined ? 2 : 0;
    default:
      throw new LockstepError("USAGE", `unknown command "${command}"\n${USAGE}`);
  }
}

function vmOptions(
  positionals: string[],
  values: { listen: string[]; disk?: string; "disk-blocks": string; "memory-mib": string },
): VmCommandOptions {
  return {
    guest: onePositional(positionals, "<guest>"),
    listen: values.listen,
    disk: values.disk ?? null,
    diskBlocks: number(values["disk-blocks"], "--disk-blocks", 1, 1 << 24),
    memoryMiB: number(values["memory-mib"], "--memory-mib", 1, 4096),
  };
}

function onePositional(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new LockstepError("USAGE", `expected ${what}\n${USAGE}`);
  return positionals[0]!;
}

function required(value: string | undefined, what: string): string {
  if (value === undefined) throw new LockstepError("USAGE", `${what} is required`);
  return value;
}

function number(text: string, flag: string, min: number, max: number): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new LockstepError("USAGE", `${flag} takes a number from ${min} to ${max}, not "${text}"`);
  }
  return value;
}

function count(text: string, flag: string): bigint {
  if (!/^\d{1,19}$/.test(text)) throw new LockstepError("USAGE", `${flag} takes an instruction count, not "${text}"`);
  return BigInt(text);
}

// A daemon started by `lockstep up` stops when its parent's end of stdin closes, however the
// parent died (host/cluster/child.ts).
const run = main(process.argv.slice(2));
if (process.env.LOCKSTEP_LIFELINE === "1") {
  process.stdin.on("end", () => process.kill(process.pid, "SIGTERM"));
  process.stdin.resume();
  // Reading stdin keeps the process alive: let go of it once the command is done.
  const letGo = () => process.stdin.destroy();
  run.then(letGo, letGo);
}
exitWith(run);
