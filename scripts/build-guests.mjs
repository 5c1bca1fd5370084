#!/usr/bin/env node
// Builds every guest in guest/examples/<name>/index.ts to build/guests/<name>.wasm (+ .wat),
// all in this one process with the AssemblyScript compiler API. Options come from the root
// asconfig.json; the ones the host depends on are forced here too (see docs/abi.md).
//
//   node scripts/build-guests.mjs            # all guests, release target
//   node scripts/build-guests.mjs kv http    # some guests
//   node scripts/build-guests.mjs --debug    # asconfig.json's "debug" target
//   node scripts/build-guests.mjs --no-wat   # skip the text files

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import asc from "assemblyscript/asc";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const examplesDir = path.join(root, "guest", "examples");
const outDir = path.join(root, "build", "guests");

// Flags the host relies on, whatever asconfig.json says.
const FORCED = ["--exportStart", "_start", "--runtime", "incremental", "--disable", "simd"];

// The only imports a guest may have (docs/abi.md): anything else would be refused at load.
const ALLOWED_IMPORTS = new Set([
  "lockstep.clock_now", "lockstep.random_fill", "lockstep.console_write", "lockstep.timer_set",
  "lockstep.irq_mask", "lockstep.halt", "lockstep.exit", "lockstep.nic_listen", "lockstep.nic_recv",
  "lockstep.nic_send", "lockstep.nic_close", "lockstep.disk_blocks", "lockstep.disk_read",
  "lockstep.disk_write", "env.abort", "env.trace", "env.seed",
]);

function parseArgs(argv) {
  const args = { names: [], target: "release", wat: true };
  for (const a of argv) {
    if (a === "--debug") args.target = "debug";
    else if (a === "--no-wat") args.wat = false;
    else if (a.startsWith("-")) throw new Error(`unknown option ${a}`);
    else args.names.push(a);
  }
  return args;
}

function listGuests() {
  return fs.readdirSync(examplesDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && fs.existsSync(path.join(examplesDir, d.name, "index.ts")))
    .map((d) => d.name)
    .sort();
}

function checkModule(name, wasmFile) {
  const mod = new WebAssembly.Module(fs.readFileSync(wasmFile));
  const exports = WebAssembly.Module.exports(mod).map((e) => e.name);
  for (const need of ["memory", "_start"]) {
    if (!exports.includes(need)) throw new Error(`${name}: missing export ${need}`);
  }
  const irq = exports.includes("__ls_irq");
  const run = exports.includes("__ls_run");
  if (irq !== run) throw new Error(`${name}: exports one of __ls_irq/__ls_run but not the other`);
  for (const i of WebAssembly.Module.imports(mod)) {
    const key = `${i.module}.${i.name}`;
    if (!ALLOWED_IMPORTS.has(key)) throw new Error(`${name}: import ${key} is not part of the ABI`);
  }
}

async function buildOne(name, args) {
  const entry = path.join("guest", "examples", name, "index.ts");
  const wasmRel = path.join("build", "guests", `${name}.wasm`);
  const argv = [
    entry,
    "--config", "asconfig.json",
    "--target", args.target,
    "--baseDir", root,
    ...FORCED,
    "--outFile", wasmRel,
  ];
  if (args.wat) argv.push("--textFile", path.join("build", "guests", `${name}.wat`));
  const sink = (chunks) => ({
    write(s) {
      chunks.push(typeof s === "string" ? s : Buffer.from(s).toString("utf8"));
      return true;
    },
  });
  const errChunks = [];
  const t0 = performance.now();
  const { error } = await asc.main(argv, { stdout: sink([]), stderr: sink(errChunks) });
  const ms = performance.now() - t0;
  const err = errChunks.join("");
  if (error) {
    process.stderr.write(err);
    throw new Error(`${name}: ${error.message}`);
  }
  if (err.trim()) process.stderr.write(err); // warnings
  const wasmFile = path.join(root, wasmRel);
  checkModule(name, wasmFile);
  return { name, bytes: fs.statSync(wasmFile).size, ms };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const all = listGuests();
  const names = args.names.length ? args.names : all;
  for (const n of names) if (!all.includes(n)) throw new Error(`no guest named ${n} (have: ${all.join(", ")})`);
  fs.mkdirSync(outDir, { recursive: true });
  for (const name of names) {
    const r = await buildOne(name, args);
    console.log(`built build/guests/${r.name}.wasm  ${r.bytes} bytes  ${r.ms.toFixed(0)} ms`);
  }
}

main().catch((e) => {
  console.error(`build-guests: ${e.message}`);
  process.exit(1);
});
