// A minimal metered host for the instrumenter's tests: the counter protocol of docs/metering.md
// (icount = deadline + __ls_fuel), a checkpoint that records where it landed, and recording
// stubs for every ABI import.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import wabtInit from "wabt";
import { ALLOWED_IMPORTS, FUEL_EXPORT, instrument } from "../../host/instrument/index.js";

const wabt = await wabtInit();

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "wat");

/** A deadline no test reaches: "never checkpoint". */
export const FAR = 1n << 60n;

type Features = Parameters<typeof wabt.parseWat>[2];

export function watToWasm(text: string, features: Features = {}): Uint8Array {
  const module = wabt.parseWat("test.wat", text, features);
  try {
    module.resolveNames();
    (module.validate as (f: Features) => void)(features); // the typings omit the features parameter
    return module.toBinary({}).buffer;
  } finally {
    module.destroy();
  }
}

export function fixture(name: string): Uint8Array {
  return watToWasm(readFileSync(join(FIXTURES, name), "utf8"));
}

export function wasmToWat(wasm: Uint8Array): string {
  const module = wabt.readWasm(new Uint8Array(wasm), { readDebugNames: false, multi_value: true });
  try {
    return module.toText({ foldExprs: false, inlineExport: false });
  } finally {
    module.destroy();
  }
}

export interface ImportCall {
  name: string; // "module.name"
  icount: bigint; // at the call
  args: unknown[];
}

type HostFn = (host: MeteredHost, ...args: never[]) => unknown;

export class MeteredHost {
  deadline = FAR;
  readonly landings: bigint[] = [];
  /** The landings at checkpoint_unwind (loop headers of a module built for unwinding). */
  readonly unwindLandings: bigint[] = [];
  /** During onCheckpoint: the landing is a checkpoint_unwind. */
  atLoopHeader = false;
  readonly calls: ImportCall[] = [];
  fuel!: WebAssembly.Global;
  memory!: WebAssembly.Memory;
  exports!: WebAssembly.Exports;
  /** What a checkpoint does after recording its landing; must leave the deadline in the future. */
  onCheckpoint: (host: MeteredHost) => void = (host) => host.setDeadline(host.icount() + FAR);

  constructor(private readonly overrides: Record<string, HostFn> = {}) {}

  icount(): bigint {
    return this.deadline + (this.fuel.value as bigint);
  }

  /** Moves the deadline without changing icount. */
  setDeadline(deadline: bigint): void {
    const now = this.icount();
    this.deadline = deadline;
    this.fuel.value = now - deadline;
  }

  imports(): WebAssembly.Imports {
    const imports: Record<string, Record<string, (...args: never[]) => unknown>> = {};
    const stub = (qualified: string, result: string | undefined) => (...args: never[]): unknown => {
      this.calls.push({ name: qualified, icount: this.icount(), args });
      const override = this.overrides[qualified];
      if (override !== undefined) return override(this, ...args);
      return result === "i64" ? 0n : result === undefined ? undefined : 0;
    };
    for (const [module, names] of ALLOWED_IMPORTS) {
      imports[module] = {};
      for (const [name, signature] of names) imports[module]![name] = stub(`${module}.${name}`, signature.results[0]);
    }
    imports.lockstep!.checkpoint = (): void => {
      this.landings.push(this.icount());
      this.atLoopHeader = false;
      this.onCheckpoint(this);
    };
    // Loop headers call this one in a module built for unwinding: a checkpoint, noted as such.
    imports.lockstep!.checkpoint_unwind = (): void => {
      this.landings.push(this.icount());
      this.unwindLandings.push(this.icount());
      this.atLoopHeader = true;
      this.onCheckpoint(this);
    };
    imports.lockstep!.memory_grow = ((delta: number): number => {
      this.calls.push({ name: "lockstep.memory_grow", icount: this.icount(), args: [delta] });
      try {
        return this.memory.grow(delta);
      } catch {
        return -1;
      }
    }) as (...args: never[]) => unknown;
    return imports as WebAssembly.Imports;
  }

  static async create(wasm: Uint8Array, overrides: Record<string, HostFn> = {}): Promise<MeteredHost> {
    const host = new MeteredHost(overrides);
    const { instance } = await WebAssembly.instantiate(wasm, host.imports());
    host.exports = instance.exports;
    host.fuel = instance.exports[FUEL_EXPORT] as WebAssembly.Global;
    host.memory = instance.exports.memory as WebAssembly.Memory;
    host.fuel.value = -host.deadline; // icount 0
    return host;
  }

  call(name: string, ...args: unknown[]): unknown {
    const fn = this.exports[name];
    if (typeof fn !== "function") throw new Error(`no export ${name}`);
    return (fn as (...a: unknown[]) => unknown)(...args);
  }

  /** Runs one export call and returns the instructions it took. */
  measure(name: string, ...args: unknown[]): { result: unknown; icount: bigint } {
    const before = this.icount();
    const result = this.call(name, ...args);
    return { result, icount: this.icount() - before };
  }
}

/** Instruments and instantiates. */
export async function meteredInstance(wasm: Uint8Array, overrides: Record<string, HostFn> = {}): Promise<MeteredHost> {
  return MeteredHost.create(instrument(wasm).wasm, overrides);
}

/** A small deterministic PRNG (xorshift32) for seeded tests. */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}
