// The page's side of `lockstep up`'s API: JSON calls with the cluster token, and the live feed
// over a WebSocket (host/dashboard/live.ts), reconnected with a capped backoff.

const TOKEN_KEY = "lockstep-token";
/** Reconnect delays: quick after a blip, at most every 5 s while the cluster is gone. */
const RECONNECT_MS_MIN = 250;
const RECONNECT_MS_MAX = 5000;
/** Close codes of the live feed (host/dashboard/live.ts). */
const CLOSE_UNAUTHORIZED = 4401;

/** The token lives for this tab only: closing it forgets the secret. */
export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function saveToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

/** An API answer that is not 2xx, with the server's stable error code. */
export class ApiFailure extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/** A JSON call; a Blob body (a file) goes as it is, anything else as JSON. */
export async function call(method, path, body) {
  const token = savedToken();
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  const binary = body instanceof Blob;
  if (body !== undefined) headers["content-type"] = binary ? "application/octet-stream" : "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : binary ? body : JSON.stringify(body) });
  } catch (error) {
    throw new ApiFailure("UNREACHABLE", `the cluster did not answer: ${error.message}`, 0);
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // Not JSON: reported below with the HTTP status.
  }
  if (!response.ok) {
    const error = answer?.error ?? {};
    throw new ApiFailure(error.code ?? "HTTP_" + response.status, error.message ?? `HTTP ${response.status}`, response.status);
  }
  return answer;
}

/**
 * The live feed. `handlers`: onMessage(message) for each hello/status/event, and
 * onState(state, detail) with "connecting", "live", "unauthorized" or "offline".
 * Returns { reconnect() } to call once a new token is saved.
 */
export function connectLive(handlers) {
  let delayMs = RECONNECT_MS_MIN;
  let timer = null;
  let socket = null;

  const open = () => {
    clearTimeout(timer);
    timer = null;
    handlers.onState("connecting");
    const url = new URL("/api/live", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = (socket = new WebSocket(url));
    ws.addEventListener("open", () => {
      const token = savedToken();
      // Sent even without a token set here: a cluster that needs none ignores it.
      ws.send(JSON.stringify({ type: "auth", token: token ?? "" }));
    });
    ws.addEventListener("message", (message) => {
      let parsed;
      try {
        parsed = JSON.parse(message.data);
      } catch {
        return;
      }
      if (parsed.type === "hello") {
        delayMs = RECONNECT_MS_MIN;
        handlers.onState("live");
      }
      handlers.onMessage(parsed);
    });
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return;
      socket = null;
      if (event.code === CLOSE_UNAUTHORIZED) {
        // Retrying with the same token cannot help: wait for the operator to give one.
        handlers.onState("unauthorized", event.reason);
        return;
      }
      handlers.onState("offline", `reconnecting in ${(delayMs / 1000).toFixed(1)} s`);
      timer = setTimeout(open, delayMs);
      delayMs = Math.min(delayMs * 2, RECONNECT_MS_MAX);
    });
  };
  open();
  return {
    reconnect() {
      const old = socket;
      socket = null;
      old?.close();
      delayMs = RECONNECT_MS_MIN;
      open();
    },
  };
}
