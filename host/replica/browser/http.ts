// Synchronous requests from the replica's worker to the cluster service (allowed in workers).

/** A stretch of the log can take a while on a slow link; the server itself answers within 1 s. */
const REQUEST_TIMEOUT_MS = 30_000;

export interface Answer {
  body: Uint8Array;
  /** x-lockstep-end: why no record will follow. */
  end: string | null;
}

/** Throws an Error with the server's own message on any failure. */
export function request(method: string, url: string, token: string | null, json?: unknown): Answer {
  const xhr = new XMLHttpRequest();
  xhr.open(method, url, false);
  xhr.responseType = "arraybuffer";
  xhr.timeout = REQUEST_TIMEOUT_MS;
  if (token !== null) xhr.setRequestHeader("authorization", `Bearer ${token}`);
  if (json !== undefined) xhr.setRequestHeader("content-type", "application/json");
  try {
    xhr.send(json === undefined ? null : JSON.stringify(json));
  } catch (error) {
    throw new Error(`${method} ${url}: ${(error as Error).message}`);
  }
  const body = new Uint8Array(xhr.response as ArrayBuffer);
  if (xhr.status < 200 || xhr.status > 299) {
    let message = `HTTP ${xhr.status}`;
    try {
      message = (JSON.parse(new TextDecoder().decode(body)) as { error: { message: string } }).error.message;
    } catch {
      // Not our JSON error: the status says enough.
    }
    throw new Error(message);
  }
  const end = xhr.getResponseHeader("x-lockstep-end");
  return { body, end: end === null ? null : decodeURIComponent(end) };
}

export function requestJson<T>(method: string, url: string, token: string | null, json?: unknown): T {
  return JSON.parse(new TextDecoder().decode(request(method, url, token, json).body)) as T;
}
