#!/usr/bin/env node
// Builds the dashboard's live replica (host/replica/browser/worker.ts) into one classic-worker
// script, build/replica/replica-worker.js, with esbuild. The vCPU and the log codec are the
// host's own TypeScript; the few Node modules they touch are replaced with small browser
// versions (host/replica/browser/shims/), and tsconfig.browser.json type-checks the result.

import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const shims = path.join(root, "host", "replica", "browser", "shims");
const NODE_SHIMS = {
  "node:crypto": path.join(shims, "crypto.ts"),
  "node:zlib": path.join(shims, "zlib.ts"),
  "node:assert/strict": path.join(shims, "assert.ts"),
};

/** Any other Node module reached from the worker is a build error, not a runtime surprise. */
const nodeShims = {
  name: "node-shims",
  setup(build) {
    build.onResolve({ filter: /^node:/ }, (args) => {
      const shim = NODE_SHIMS[args.path];
      if (shim === undefined) return { errors: [{ text: `${args.path} (from ${path.relative(root, args.importer)}) has no browser shim` }] };
      return { path: shim };
    });
  },
};

const result = await esbuild.build({
  entryPoints: [path.join(root, "host", "replica", "browser", "worker.ts")],
  outfile: path.join(root, "build", "replica", "replica-worker.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: true,
  inject: [path.join(shims, "process.ts")],
  plugins: [nodeShims],
  logLevel: "warning",
  metafile: true,
});
const bytes = Object.values(result.metafile.outputs).reduce((sum, output) => sum + (output.bytes ?? 0), 0);
console.log(`build/replica/replica-worker.js: ${Math.round(bytes / 1024)} KiB with its source map`);
