// Finding and loading a guest: an example's name (built into build/guests/) or a path to any
// AssemblyScript-built .wasm.

import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LockstepError } from "../errors.js";
import { instrumentCached, InstrumentError, type InstrumentedModule } from "../instrument/index.js";

/** The project root: two levels above host/vm, whether running from source or from dist/. */
export const PROJECT_ROOT = findProjectRoot(path.dirname(fileURLToPath(import.meta.url)));
export const GUESTS_DIR = path.join(PROJECT_ROOT, "build", "guests");

export interface Guest {
  name: string;
  file: string;
  /** sha256 of the original .wasm, as a log header carries it. */
  hash: Uint8Array;
  module: InstrumentedModule;
  /** The guest imports the virtual disk, so it wants an image. */
  usesDisk: boolean;
  /** The guest imports nic_listen: it serves TCP. */
  listens: boolean;
}

export function exampleGuests(): string[] {
  if (!fs.existsSync(GUESTS_DIR)) return [];
  return fs
    .readdirSync(GUESTS_DIR)
    .filter((f) => f.endsWith(".wasm"))
    .map((f) => f.slice(0, -".wasm".length))
    .sort();
}

export function resolveGuest(nameOrPath: string): { name: string; file: string } {
  const looksLikePath = nameOrPath.includes("/") || nameOrPath.endsWith(".wasm");
  const file = looksLikePath ? path.resolve(nameOrPath) : path.join(GUESTS_DIR, `${nameOrPath}.wasm`);
  if (!fs.existsSync(file)) {
    if (looksLikePath) throw new LockstepError("FILE_NOT_FOUND", `no such file: ${nameOrPath}`);
    const known = exampleGuests();
    const hint = known.length > 0 ? `examples: ${known.join(", ")}` : "run `npm run build` to build the examples";
    throw new LockstepError("GUEST_UNKNOWN", `unknown guest "${nameOrPath}" (${hint}; or give a path to a .wasm)`);
  }
  return { name: path.basename(file, ".wasm"), file };
}

export function loadGuest(nameOrPath: string): Guest {
  const { name, file } = resolveGuest(nameOrPath);
  const bytes = new Uint8Array(fs.readFileSync(file));
  let module: InstrumentedModule;
  try {
    module = instrumentCached(bytes);
  } catch (error) {
    if (error instanceof InstrumentError) {
      const reason = error.message.replace(/\s*\n\s*/g, "; ");
      throw new LockstepError("GUEST_INVALID", `${file} cannot run under Lockstep: ${reason}`);
    }
    throw error;
  }
  const hash = new Uint8Array(createHash("sha256").update(bytes).digest());
  const imports = WebAssembly.Module.imports(new WebAssembly.Module(bytes)).filter((i) => i.module === "lockstep");
  const usesDisk = imports.some((i) => i.name.startsWith("disk_"));
  const listens = imports.some((i) => i.name === "nic_listen");
  return { name, file, hash, module, usesDisk, listens };
}

function findProjectRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (fs.existsSync(path.join(dir, "package.json")) && fs.existsSync(path.join(dir, "host"))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return start;
    dir = parent;
  }
}
