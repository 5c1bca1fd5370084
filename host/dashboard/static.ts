// The dashboard's files, served by `lockstep up`: the page at `/`, its modules and styles under
// `/dashboard/`, and the chart library (uPlot) from node_modules under `/dashboard/vendor/`.
//
// Only the files named here are served: a request names a key of this table, never a path, so
// nothing else on disk can be reached through the dashboard. The machines running a cluster
// may have no internet: nothing comes from a CDN.

import fs from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import { ApiError } from "../cluster/http.js";
import { PROJECT_ROOT } from "../vm/guest.js";

/** The page's own files live in the source tree (tsc copies no .html/.js/.css to dist/). */
const PUBLIC_DIR = path.join(PROJECT_ROOT, "host", "dashboard", "public");
const UPLOT_DIR = path.join(PROJECT_ROOT, "node_modules", "uplot", "dist");
/** The live replica's worker, bundled by `npm run build:replica` (scripts/build-replica.mjs). */
const REPLICA_DIR = path.join(PROJECT_ROOT, "build", "replica");

const FILES: Record<string, string> = {
  "/": path.join(PUBLIC_DIR, "index.html"),
  "/dashboard/app.js": path.join(PUBLIC_DIR, "app.js"),
  "/dashboard/api.js": path.join(PUBLIC_DIR, "api.js"),
  "/dashboard/charts.js": path.join(PUBLIC_DIR, "charts.js"),
  "/dashboard/render.js": path.join(PUBLIC_DIR, "render.js"),
  "/dashboard/time-travel.js": path.join(PUBLIC_DIR, "time-travel.js"),
  "/dashboard/replica.js": path.join(PUBLIC_DIR, "replica.js"),
  "/dashboard/replica-worker.js": path.join(REPLICA_DIR, "replica-worker.js"),
  "/dashboard/replica-worker.js.map": path.join(REPLICA_DIR, "replica-worker.js.map"),
  "/dashboard/style.css": path.join(PUBLIC_DIR, "style.css"),
  "/dashboard/vendor/uPlot.esm.js": path.join(UPLOT_DIR, "uPlot.esm.js"),
  "/dashboard/vendor/uPlot.min.css": path.join(UPLOT_DIR, "uPlot.min.css"),
};

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json; charset=utf-8",
};

/**
 * Same-origin only: scripts, styles and the WebSocket come from this server, and no other site
 * may frame the page (its buttons kill hosts).
 */
const CSP =
  "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/** Whether this GET is one of the dashboard's files. */
export function isDashboardFile(pathname: string): boolean {
  return Object.hasOwn(FILES, pathname);
}

/**
 * Serves one of the dashboard's files. The page itself carries no secret: it asks for the
 * cluster's token, so it is served without one.
 */
export async function serveDashboardFile(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
  const file = FILES[pathname];
  if (file === undefined) throw new ApiError("NOT_FOUND", `no dashboard file ${pathname}`);
  let body: Buffer;
  try {
    body = await fs.promises.readFile(file);
  } catch {
    throw new ApiError("NOT_FOUND", `${pathname} is missing from this installation (${path.relative(PROJECT_ROOT, file)}): run npm install and npm run build`);
  }
  res.writeHead(200, {
    "content-type": TYPES[path.extname(file)] ?? "application/octet-stream",
    "content-length": body.length,
    // Small files, and a page reloaded after an upgrade must not mix versions.
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "content-security-policy": CSP,
  });
  res.end(req.method === "HEAD" ? undefined : body);
}

/**
 * Refuses a request that a browser sent from another site's page. Without a token (loopback)
 * any page the operator visits could otherwise POST a kill to 127.0.0.1:7400 as a "simple"
 * cross-origin request, or read the live feed over a WebSocket, which browsers do not guard
 * with CORS. Programs (curl, the CLI) send no Origin and are not affected.
 */
export function checkOrigin(req: IncomingMessage): void {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  let host: string;
  try {
    host = new URL(origin).host;
  } catch {
    throw new ApiError("UNAUTHORIZED", `bad Origin ${JSON.stringify(origin)}`);
  }
  if (host !== req.headers.host) throw new ApiError("UNAUTHORIZED", `requests from ${origin} are refused: the dashboard is served by ${req.headers.host ?? "this server"}`);
}
