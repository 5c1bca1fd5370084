// The dashboard's server side against a real `lockstep up` with a token: the page's files, the
// live WebSocket (refused with a wrong token, fed with the right one), and the endpoints the
// page's actions call: kill a host, start a guest under FT.

import { afterEach, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type LogLine, UpCluster } from "../helpers/cluster.js";

const TOKEN = "api-test-token";
const auth = { authorization: `Bearer ${TOKEN}` };

let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

const isEvent = (event: string, host?: string) => (line: LogLine) => line.event === event && (host === undefined || line.host === host);

interface LiveMessage {
  type: string;
  status?: { vms: { vm: string; state: string; primary: { host: string } | null; backup: { host: string } | null }[]; events?: unknown };
  events?: { event: string }[];
  event?: { event: string; host: string; vm: string | null };
}

/** A live feed client that keeps every message, and waits on them (never on time). */
class LiveClient {
  readonly messages: LiveMessage[] = [];
  private readonly waiters = new Set<() => void>();
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly opened: Promise<void>;

  constructor(
    readonly ws: WebSocket,
    firstMessage?: unknown,
  ) {
    this.closed = new Promise((resolve) => ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    this.opened = new Promise((resolve, reject) => {
      ws.once("open", () => {
        if (firstMessage !== undefined) ws.send(JSON.stringify(firstMessage));
        resolve();
      });
      ws.once("error", reject);
    });
    ws.on("message", (data) => {
      this.messages.push(JSON.parse(data.toString()) as LiveMessage);
      for (const waiter of [...this.waiters]) waiter();
    });
  }

  until(matches: (message: LiveMessage) => boolean, what: string): Promise<LiveMessage> {
    const found = this.messages.find(matches);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = () => {
        const message = this.messages.find(matches);
        if (message === undefined) return;
        this.waiters.delete(waiter);
        resolve(message);
      };
      this.waiters.add(waiter);
      void this.closed.then(({ code }) => {
        if (this.waiters.delete(waiter)) reject(new Error(`the live feed closed (${code}) while waiting for ${what}`));
      });
    });
  }
}

const liveUrl = (url: string) => `${url.replace(/^http/, "ws")}/api/live`;

/** The HTTP status that refuses a WebSocket upgrade with these headers. */
function upgradeRefusal(url: string, headers: Record<string, string>): Promise<number> {
  const ws = new WebSocket(url, { headers });
  // Aborting the refused handshake reports an error: expected here.
  ws.on("error", () => undefined);
  return new Promise((resolve, reject) => {
    ws.once("open", () => reject(new Error("the upgrade was accepted")));
    ws.once("unexpected-response", (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
  });
}

describe("dashboard API", () => {
  it("serves the page without the token, the API and the live feed only with it", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "2", "--token", TOKEN, "--no-restore", "--timeout-ms", "10000"]);
    const ready = await cluster.ready;

    const page = await fetch(`${ready.url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(page.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(await page.text()).toContain('src="/dashboard/app.js"');
    for (const asset of ["/dashboard/app.js", "/dashboard/style.css", "/dashboard/vendor/uPlot.esm.js", "/dashboard/vendor/uPlot.min.css"]) {
      expect((await fetch(`${ready.url}${asset}`)).status, asset).toBe(200);
    }
    // Only the named files: nothing else on disk is reachable through the dashboard.
    expect((await fetch(`${ready.url}/dashboard/../package.json`)).status).toBe(401);
    expect((await fetch(`${ready.url}/dashboard/secret.txt`, { headers: auth })).status).toBe(404);

    expect((await fetch(`${ready.url}/api/status`)).status).toBe(401);
    expect((await fetch(`${ready.url}/api/hosts/host-1/kill`, { method: "POST" })).status).toBe(401);
    expect((await fetch(`${ready.url}/api/status`, { headers: auth })).status).toBe(200);

    // Time travel refuses what it cannot replay, with the reason.
    const replay = async (query: string, body: string) => {
      const response = await fetch(`${ready.url}/api/replay?${query}`, { method: "POST", headers: { ...auth, "content-type": "application/octet-stream" }, body });
      return `${response.status} ${((await response.json()) as { error?: { code: string } }).error?.code}`;
    };
    expect(await replay("guest=counter", "not a log")).toBe("400 BAD_REQUEST");
    expect(await replay("guest=counter", "")).toBe("400 BAD_REQUEST");
    expect(await replay("guest=../counter", "x")).toBe("400 BAD_REQUEST");
    expect(await replay("guest=counter&until=12x", "x")).toBe("400 BAD_REQUEST");
    expect((await fetch(`${ready.url}/api/replay?guest=counter`, { method: "POST", body: "x" })).status).toBe(401);

    // A wrong token in the first message: closed with 4401, and nothing was sent before.
    const wrong = new LiveClient(new WebSocket(liveUrl(ready.url)), { type: "auth", token: "wrong" });
    expect(await wrong.closed).toMatchObject({ code: 4401 });
    expect(wrong.messages).toEqual([]);
    // A wrong Authorization header: refused at the upgrade.
    expect(await upgradeRefusal(liveUrl(ready.url), { authorization: "Bearer wrong" })).toBe(401);
    // Another site's page may not open the feed.
    expect(await upgradeRefusal(liveUrl(ready.url), { ...auth, origin: "http://evil.example" })).toBe(403);

    // The right token: a hello with the status and the events, then snapshots.
    const live = new LiveClient(new WebSocket(liveUrl(ready.url)), { type: "auth", token: TOKEN });
    const hello = await live.until((m) => m.type === "hello", "hello");
    expect(hello.status!.vms.map((vm) => vm.vm)).toEqual(["counter"]);
    expect(hello.status!.events).toBeUndefined();
    expect(hello.events!.some((e) => e.event === "started")).toBe(true);
    const snapshot = await live.until((m) => m.type === "status" && m.status!.vms[0]?.state === "protected", "a protected snapshot");
    expect(snapshot.status!.vms[0]!.primary!.host).toBe(ready.vms[0]!.primary);
    live.ws.close();
  });

  it("POST /api/hosts/:id/kill sends a real SIGKILL; POST /api/vms starts a guest under FT; the feed pushes their events", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3", "--timeout-ms", "3000"]);
    const ready = await cluster.ready;
    const live = new LiveClient(new WebSocket(liveUrl(ready.url)));
    await live.until((m) => m.type === "hello", "hello");
    const post = (route: string, body?: unknown) =>
      fetch(`${ready.url}${route}`, { method: "POST", headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });

    // Start a second guest: its primary and backup on two different hosts.
    const started = await post("/api/vms", { guest: "counter", vm: "counter-2" });
    expect(started.status).toBe(201);
    const placed = (await started.json()) as { vm: string; generation: number; primary: string; backup: string };
    expect(placed).toMatchObject({ vm: "counter-2", generation: 1 });
    expect(placed.primary).not.toBe(placed.backup);
    await live.until((m) => m.type === "event" && m.event!.event === "vmStarted" && m.event!.vm === "counter-2", "vmStarted on the feed");
    await live.until(
      (m) => m.type === "status" && m.status!.vms.some((vm) => vm.vm === "counter-2" && vm.state === "protected" && vm.primary?.host === placed.primary && vm.backup?.host === placed.backup),
      "counter-2 protected",
    );
    // Bad requests, with stable codes.
    const duplicate = await post("/api/vms", { guest: "counter", vm: "counter-2" });
    expect(duplicate.status).toBe(409);
    expect(((await duplicate.json()) as { error: { code: string } }).error.code).toBe("CONFLICT");
    const path = await post("/api/vms", { guest: "/etc/passwd" });
    expect(path.status).toBe(400);
    expect(((await path.json()) as { error: { code: string } }).error.code).toBe("BAD_REQUEST");
    expect((await post("/api/vms", { guest: "counter", vm: "Bad Name" })).status).toBe(400);
    expect((await post("/api/vms", { guest: "counter", extra: 1 })).status).toBe(400);

    // Kill the first VM's primary host: a real SIGKILL, seen by `up` as the child's exit.
    const { primary, backup } = ready.vms[0]!;
    const pid = ready.hosts.find((h) => h.id === primary)!.pid;
    const from = cluster.seen;
    const killed = await post(`/api/hosts/${primary}/kill`);
    expect(killed.status).toBe(200);
    expect(await killed.json()).toEqual({ host: primary, pid, signal: "SIGKILL" });
    const exited = await cluster.event(isEvent("hostExited", primary), "the host's exit", from);
    expect(exited.msg).toContain("SIGKILL");
    await cluster.event(isEvent("wentLive", backup), "the backup going live", from);
    await live.until((m) => m.type === "event" && m.event!.event === "hostKilled", "hostKilled on the feed");
    await live.until((m) => m.type === "event" && m.event!.event === "wentLive" && m.event!.host === backup, "wentLive on the feed");
    // Killing it again while it restarts, or a host that does not exist: NOT_FOUND.
    expect((await post("/api/hosts/host-9/kill")).status).toBe(404);
    // A browser on another site cannot post it.
    const foreign = await fetch(`${ready.url}/api/hosts/${backup}/kill`, { method: "POST", headers: { origin: "http://evil.example" } });
    expect(foreign.status).toBe(401);
    live.ws.close();
  });
});
