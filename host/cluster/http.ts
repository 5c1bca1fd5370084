// The small HTTP toolkit of the control APIs (host daemon, embedded cluster): JSON in and out,
// bounded request bodies, a shared-token check, and errors with stable codes.
//
// Every error answer has the shape {"error":{"code":"NOT_FOUND","message":"..."}}.

import type { IncomingMessage, ServerResponse } from "node:http";
import { isIP } from "node:net";
import { sameSecret } from "../secret.js";

/** A control request is a few hundred bytes; anything past this is refused unread. */
export const REQUEST_BYTES_MAX = 64 * 1024;

export type ApiErrorCode = "BAD_REQUEST" | "UNAUTHORIZED" | "NOT_FOUND" | "CONFLICT" | "TOO_LARGE" | "UNAVAILABLE" | "INTERNAL";

const STATUS: Record<ApiErrorCode, number> = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  CONFLICT: 409,
  TOO_LARGE: 413,
  UNAVAILABLE: 503,
  INTERNAL: 500,
};

export class ApiError extends Error {
  constructor(
    readonly code: ApiErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }

  get status(): number {
    return STATUS[this.code];
  }
}

/** JSON has no bigint: instruction counts and seqs travel as decimal strings. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? String(v) : v));
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = toJson(body);
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(text + "\n");
}

export function sendError(res: ServerResponse, error: unknown): void {
  const apiError = error instanceof ApiError ? error : new ApiError("INTERNAL", error instanceof Error ? error.message : String(error));
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, apiError.status, { error: { code: apiError.code, message: apiError.message } });
}

/** The request's body, refused once it passes `bytesMax` (a declared length over it, unread). */
export async function readBody(req: IncomingMessage, bytesMax: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > bytesMax) throw new ApiError("TOO_LARGE", `request body of ${declared} bytes, over ${bytesMax}`);
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of req) {
    bytes += (chunk as Buffer).length;
    if (bytes > bytesMax) throw new ApiError("TOO_LARGE", `request body over ${bytesMax} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** The request's JSON body, at most REQUEST_BYTES_MAX bytes; an empty body is `{}`. */
export async function readJson(req: IncomingMessage): Promise<unknown> {
  const text = (await readBody(req, REQUEST_BYTES_MAX)).toString("utf8").trim();
  if (text.length === 0) return {};
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ApiError("BAD_REQUEST", "the request body is not JSON");
  }
}

/** Throws UNAUTHORIZED unless the request carries `Authorization: Bearer <token>` (when one is set). */
export function checkToken(req: IncomingMessage, token: string | null): void {
  if (token === null) return;
  const header = req.headers.authorization ?? "";
  const given = header.startsWith("Bearer ") ? header.slice("Bearer ".length) : "";
  if (!sameSecret(given, token)) throw new ApiError("UNAUTHORIZED", "missing or wrong token (Authorization: Bearer ...)");
}

/** Loopback addresses need no token; every other bind address does (security by default). */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  return host === "::1";
}

/**
 * A request with a JSON answer and a deadline, for the cluster's polling of its hosts. A body
 * that is a Buffer goes as it is (application/octet-stream), anything else as JSON.
 */
export async function fetchJson(url: string, options: { token?: string | null; timeoutMs: number; method?: string; body?: unknown }): Promise<unknown> {
  const binary = Buffer.isBuffer(options.body);
  const response = await fetch(url, {
    method: options.method ?? "GET",
    headers: {
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
      ...(options.body !== undefined ? { "content-type": binary ? "application/octet-stream" : "application/json" } : {}),
    },
    body: options.body === undefined ? undefined : binary ? (options.body as Buffer) : toJson(options.body),
    signal: AbortSignal.timeout(options.timeoutMs),
  });
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text) as unknown;
  } catch {
    throw new ApiError("UNAVAILABLE", `${url}: answer is not JSON (HTTP ${response.status})`);
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: string; message?: string } }).error;
    throw new ApiError(
      (error?.code as ApiErrorCode | undefined) ?? "UNAVAILABLE",
      `${url}: ${error?.message ?? `HTTP ${response.status}`}`,
    );
  }
  return body;
}
