// On-disk cache of instrumented modules, keyed by the input's sha256 and the instrumenter's
// fingerprint (its version, binaryen's version, and the text of the pass's own source files,
// so that an edited pass can never be served a stale entry, bumped version or not).
// Instrumenting a large guest takes a noticeable fraction of a second; a backup or a restarted
// host should not pay it again.
//
// An entry is one file: a fixed header, the JSON metadata, the wasm, and the sha256 of all that.
// An entry that is short, has a bad checksum, or does not parse is treated as absent and
// rewritten. Writes go to a temporary file renamed into place, so a reader never sees half an
// entry and concurrent writers of the same key just race to identical content.

import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash, randomBytes } from "node:crypto";
import { instrument, INSTRUMENTER_VERSION, sha256Hex, type InstrumentedModule } from "./instrument.js";

const MAGIC = "LSIC1\n"; // Lockstep instrument cache, format 1
const DIGEST_BYTES = 32;
/** A header line longer than this is corruption, not metadata. */
const METADATA_BYTES_MAX = 1 << 20;

interface Metadata {
  version: string;
  moduleHash: string;
  globals: InstrumentedModule["globals"];
  wasmBytes: number;
}

let fingerprint: string | null = null;

/**
 * What the output depends on besides the input: INSTRUMENTER_VERSION, the binaryen and wabt
 * versions, and the source of this directory (.ts under tsx/vitest, .js once compiled).
 */
export function instrumenterFingerprint(): string {
  if (fingerprint !== null) return fingerprint;
  const hash = createHash("sha256").update(INSTRUMENTER_VERSION);
  const require = createRequire(import.meta.url);
  for (const pkg of ["binaryen", "wabt"]) {
    const version = (require(`${pkg}/package.json`) as { version: string }).version;
    hash.update(`\0${pkg}@${version}`);
  }
  const dir = dirname(fileURLToPath(import.meta.url));
  const sources = readdirSync(dir).filter((f) => /\.(ts|js)$/.test(f) && !f.endsWith(".d.ts")).sort();
  for (const file of sources) hash.update(`\0${file}\0`).update(readFileSync(join(dir, file)));
  fingerprint = hash.digest("hex");
  return fingerprint;
}

/** `.cache/instrument` under the project root (the nearest package.json up from here), else the OS temp dir. */
export function defaultCacheDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 8; depth++) {
    if (existsSync(join(dir, "package.json"))) return join(dir, ".cache", "instrument");
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return join(tmpdir(), "lockstep-instrument-cache");
}

export function entryPath(cacheDir: string, moduleHash: string): string {
  const key = createHash("sha256").update(`${instrumenterFingerprint()}\0${moduleHash}`).digest("hex");
  return join(cacheDir, `${key}.lsic`);
}

export function encodeEntry(result: InstrumentedModule): Buffer {
  const metadata: Metadata = {
    version: instrumenterFingerprint(),
    moduleHash: result.moduleHash,
    globals: result.globals,
    wasmBytes: result.wasm.byteLength,
  };
  const body = Buffer.concat([Buffer.from(MAGIC), Buffer.from(`${JSON.stringify(metadata)}\n`), result.wasm]);
  const digest = createHash("sha256").update(body).digest();
  return Buffer.concat([body, digest]);
}

/** Returns null for anything that is not a complete, intact entry for this hash and fingerprint. */
function decode(bytes: Buffer, moduleHash: string): InstrumentedModule | null {
  if (bytes.length < MAGIC.length + DIGEST_BYTES) return null;
  const body = bytes.subarray(0, bytes.length - DIGEST_BYTES);
  const digest = bytes.subarray(bytes.length - DIGEST_BYTES);
  if (!createHash("sha256").update(body).digest().equals(digest)) return null;
  if (body.subarray(0, MAGIC.length).toString("latin1") !== MAGIC) return null;
  const newline = body.indexOf(0x0a, MAGIC.length);
  if (newline < 0 || newline - MAGIC.length > METADATA_BYTES_MAX) return null;
  let metadata: Metadata;
  try {
    metadata = JSON.parse(body.subarray(MAGIC.length, newline).toString("utf8")) as Metadata;
  } catch {
    return null;
  }
  const wasm = body.subarray(newline + 1);
  if (metadata.version !== instrumenterFingerprint() || metadata.moduleHash !== moduleHash) return null;
  if (metadata.wasmBytes !== wasm.length || !Array.isArray(metadata.globals)) return null;
  return { wasm: new Uint8Array(wasm), moduleHash, globals: metadata.globals };
}

/**
 * `instrument`, memoized on disk. Refusals are not cached (they are cheap to find again).
 * A cache directory that cannot be written only costs the cache: the result is still returned.
 */
export function instrumentCached(wasm: Uint8Array, cacheDir: string = defaultCacheDir()): InstrumentedModule {
  const moduleHash = sha256Hex(wasm);
  const path = entryPath(resolve(cacheDir), moduleHash);
  let bytes: Buffer | null = null;
  try {
    bytes = readFileSync(path);
  } catch {
    bytes = null; // absent or unreadable: instrument below
  }
  if (bytes !== null) {
    const cached = decode(bytes, moduleHash);
    if (cached !== null) return cached;
  }

  const result = instrument(wasm);
  const temp = `${path}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(temp, encodeEntry(result));
    renameSync(temp, path);
  } catch {
    try {
      rmSync(temp, { force: true });
    } catch {
      // The directory itself is unusable: nothing was written.
    }
  }
  return result;
}
