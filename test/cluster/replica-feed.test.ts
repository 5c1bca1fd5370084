// The read-only replica's path, from a program instead of a browser: the cluster service opens a
// feed on the primary's host and serves the module, a snapshot and the log by HTTP; the log
// decodes from the snapshot's position on, with no record missing, and replays from the
// snapshot to the digest the primary logs. Bad requests get clear errors, and a feed refuses
// a peer without the hosts' token.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { decodeRecords } from "../../protocol/codec.js";
import { ControlKind, RecordKind, type LogRecord } from "../../protocol/records.js";
import { loadGuest } from "../../host/vm/guest.js";
import { Machine, recordsSource } from "../../host/vm/machine.js";
import { decodePortableSnapshot } from "../../host/vm/snapshot-portable.js";
import { UpCluster } from "../helpers/cluster.js";

let cluster: UpCluster;
let url: string;

beforeAll(async () => {
  cluster = new UpCluster(["--guest", "counter", "--hosts", "2"]);
  url = (await cluster.ready).url;
});

afterAll(async () => {
  expect((await cluster.stop()).code).toBe(0);
});

async function answer(path: string, method = "GET"): Promise<{ status: number; body: Buffer; end: string | null }> {
  const response = await fetch(url + path, { method });
  return { status: response.status, body: Buffer.from(await response.arrayBuffer()), end: response.headers.get("x-lockstep-end") };
}

const errorCode = (body: Buffer) => (JSON.parse(body.toString()) as { error: { code: string } }).error.code;

describe("the replica feed", () => {
  it("serves the module, a snapshot and the log from the snapshot on, which replays to the primary's digest", async () => {
    const opened = await answer("/api/vms/counter/replicas", "POST");
    expect(opened.status).toBe(201);
    const { id, start } = JSON.parse(opened.body.toString()) as { id: string; start: { seq: number; icount: string; host: string; moduleHash: string } };
    expect(start.host).toBe((await cluster.ready).vms[0]!.primary);

    const module = await answer(`/api/replicas/${id}/module`);
    expect(module.body.subarray(0, 4)).toEqual(Buffer.from([0, 0x61, 0x73, 0x6d]));
    const guest = loadGuest("counter");
    expect(Buffer.compare(module.body, Buffer.from(guest.module.wasm))).toBe(0);
    const snapshot = decodePortableSnapshot((await answer(`/api/replicas/${id}/snapshot`)).body);
    expect(snapshot.seq).toBe(start.seq);
    expect(snapshot.icount.toString()).toBe(start.icount);

    // A digest probe, then the log up to it, asked for the way the browser asks.
    const probe = JSON.parse((await answer("/api/vms/counter/digest", "POST")).body.toString()) as { icount: string; digest: string };
    const records: LogRecord[] = [];
    let next = BigInt(start.seq);
    while (!records.some((r) => r.kind === RecordKind.Control && r.a === ControlKind.Digest && r.icount === BigInt(probe.icount))) {
      const batch = await answer(`/api/replicas/${id}/records?from=${next}`);
      expect(batch.status).toBe(200);
      expect(batch.end).toBeNull();
      const decoded = decodeRecords(batch.body, { expectSeq: next });
      records.push(...decoded);
      next += BigInt(decoded.length);
    }
    // Asking from a later position says the records before it are held: they are dropped, and
    // asking for them again is an error.
    const later = await answer(`/api/replicas/${id}/records?from=${next}`);
    expect(later.status).toBe(200);
    next += BigInt(decodeRecords(later.body, { expectSeq: next }).length);
    const again = await answer(`/api/replicas/${id}/records?from=${start.seq}`);
    expect(again.status).toBe(400);
    expect(again.body.toString()).toContain("were dropped");

    const probes: string[] = [];
    const replay = await new Machine({
      mode: "replay",
      module: guest.module,
      restore: snapshot,
      replay: recordsSource(records),
      onDigest: (icount, digest, checked) => probes.push(`${icount} sha256:${Buffer.from(digest).toString("hex")} ${checked}`),
    }).done;
    expect(probes).toContain(`${probe.icount} ${probe.digest} true`);
    expect(replay.stop).toBe("stopped");

    expect((await answer(`/api/replicas/${id}`, "DELETE")).status).toBe(200);
    const gone = await answer(`/api/replicas/${id}/records?from=${next}`);
    expect(gone.status).toBe(404);
    expect(errorCode(gone.body)).toBe("NOT_FOUND");
  });

  it("refuses bad requests with clear errors", async () => {
    const noVm = await answer("/api/vms/nothing-here/replicas", "POST");
    expect(noVm.status).toBe(503);
    expect(errorCode(noVm.body)).toBe("UNAVAILABLE");
    const opened = JSON.parse((await answer("/api/vms/counter/replicas", "POST")).body.toString()) as { id: string };
    for (const from of ["", "abc", "-1", "1".repeat(30)]) {
      const bad = await answer(`/api/replicas/${opened.id}/records?from=${from}`);
      expect(bad.status, from).toBe(400);
      expect(errorCode(bad.body)).toBe("BAD_REQUEST");
    }
    expect((await answer(`/api/replicas/${opened.id}/nonsense`)).status).toBe(404);
    expect((await answer(`/api/replicas/${opened.id}`, "DELETE")).status).toBe(200);
  });

  it("a host's feed refuses a peer without the hosts' token", async () => {
    const host = (await cluster.ready).hosts[0]!;
    const status = await new Promise<string>((resolve) => {
      const socket = new WebSocket(`${host.url.replace(/^http/, "ws")}/observe/counter`);
      socket.on("unexpected-response", (_req, res) => {
        resolve(`http ${res.statusCode}`);
        socket.terminate();
      });
      socket.on("open", () => resolve("open"));
      socket.on("error", () => undefined);
    });
    expect(status).toBe("http 401");
  });
});
