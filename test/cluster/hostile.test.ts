// A host daemon faces the network: API clients without the token, junk on its HTTP port, and
// logging-channel connections for VMs it does not run, with the wrong module, or for a backup
// that already has its primary. Each is refused with a clear answer and a log line, and the
// FT pair on the host keeps running, protected, with its output uninterrupted.

import { createHash } from "node:crypto";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { loadGuest } from "../../host/vm/guest.js";
import { tickGaps, UpCluster } from "../helpers/cluster.js";

let cluster: UpCluster;
let backupUrl: string;
let backupHost: string;

beforeAll(async () => {
  cluster = new UpCluster(["--guest", "counter", "--hosts", "2"]);
  const ready = await cluster.ready;
  backupHost = ready.vms[0]!.backup;
  backupUrl = ready.hosts.find((h) => h.id === backupHost)!.url;
  await cluster.until(() => (cluster.ticks().length >= 5 ? true : undefined), "5 ticks");
});

afterAll(async () => {
  expect((await cluster.stop()).code).toBe(0);
});

/** Opens a logging channel and resolves with the HTTP status or close code it got. */
function channel(path: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = new WebSocket(backupUrl.replace(/^http/, "ws") + path);
    socket.on("unexpected-response", (_req, res) => {
      resolve(`http ${res.statusCode}`);
      socket.terminate();
    });
    socket.on("close", (code, reason) => resolve(`close ${code} ${reason.toString()}`));
    socket.on("error", () => undefined);
  });
}

describe("a host under hostile clients and peers", () => {
  it("refuses API calls without the cluster's token", async () => {
    for (const headers of [{}, { authorization: "Bearer guess" }] as Record<string, string>[]) {
      const status = await fetch(`${backupUrl}/api/status`, { headers });
      expect(status.status).toBe(401);
      expect(((await status.json()) as { error: { code: string } }).error.code).toBe("UNAUTHORIZED");
      const start = await fetch(`${backupUrl}/api/vms`, { method: "POST", headers, body: "{not json" });
      expect(start.status).toBe(401);
    }
  });

  it("answers junk on its port with an error and closes, without harm", async () => {
    const answer = await new Promise<string>((resolve) => {
      const socket = net.connect(Number(new URL(backupUrl).port), "127.0.0.1");
      let text = "";
      socket.on("data", (chunk) => (text += chunk.toString()));
      socket.on("close", () => resolve(text));
      socket.on("error", () => undefined);
      socket.write(Buffer.from("\x16\x03\x01 this is not HTTP\r\n\r\n"));
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400/);
  });

  it("refuses logging channels for an unknown VM, a wrong module, and a backup already paired", async () => {
    const moduleHash = createHash("sha256").update(loadGuest("counter").module.wasm).digest("hex");
    expect(await channel(`/channel/nobody?module=${moduleHash}`)).toBe("http 404");
    expect(await channel(`/channel/counter?module=${"0".repeat(64)}`)).toBe("http 409");
    expect(await channel(`/channel/counter`)).toBe("http 409");
    expect(await channel(`/channel/counter?module=${moduleHash}`)).toMatch(/^close 1008 this backup already has a primary/);
    const refusals = cluster.lines.filter((l) => l.msg === "logging channel refused");
    // The three refused at the upgrade are logged by the backup's host, each naming its VM.
    expect(refusals.map((l) => [l.host, l.vm])).toEqual([
      [backupHost, "nobody"],
      [backupHost, "counter"],
      [backupHost, "counter"],
    ]);
  });

  it("keeps the pair protected and its output whole through all of it", async () => {
    const before = cluster.ticks().length;
    await cluster.until(() => (cluster.ticks().length >= before + 10 ? true : undefined), "10 more ticks");
    expect(tickGaps(cluster.ticks())).toEqual([]);
    const status = await cluster.status();
    expect(status.vms[0]).toMatchObject({ state: "protected", generation: 1 });
    // Both sides heard their peer all along: silences were measured, none reached the timeout.
    for (const side of [status.vms[0]!.primary!, status.vms[0]!.backup!]) {
      expect(side.silenceMsMax).toBeGreaterThan(0);
      expect(side.silenceMsMax).toBeLessThan(1000);
    }
    expect(status.hosts.map((h) => h.state)).toEqual(["up", "up"]);
    expect(status.events.map((e) => e.event)).not.toContain("failureDetected");
  });
});
