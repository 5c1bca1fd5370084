// `lockstep cluster`: the cluster service on its own, with every part a process of its own, as
// on several machines: a storage server, the service, and three hosts that join it, by
// heartbeat (`lockstep host --cluster URL`) or through etcd (their membership keys, with
// `--arbiter etcd://`). The service places kv on two of them; kill -9 of the primary's host
// makes the backup go live, the service hears it through the hosts' own event feeds, and gives
// the VM a new backup on the third host; every acknowledged write is there on the new primary.

import { afterEach, describe, expect, it } from "vitest";
import { LockstepProcess, tempDir } from "../helpers/cli.js";
import { EtcdProcess, etcdDataDir, killAllEtcd } from "../helpers/etcd.js";
import { redis } from "../helpers/redis-cli.js";

const TOKEN = "standalone-test-token";
let processes: LockstepProcess[] = [];

afterEach(async () => {
  for (const proc of processes) proc.child.kill("SIGKILL");
  await Promise.all(processes.map((proc) => proc.exited));
  processes = [];
  await killAllEtcd();
});

function start(args: string[]): LockstepProcess {
  const proc = new LockstepProcess(args, { env: { LOCKSTEP_TOKEN: TOKEN } });
  processes.push(proc);
  return proc;
}

async function api<T>(base: string, path: string, method = "GET", body?: unknown): Promise<{ status: number; body: T }> {
  const response = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: (await response.json()) as T };
}

/** The storage server, the service and three hosts, joined one way or the other. */
async function standaloneCluster(join: "heartbeat" | "etcd") {
  const storage = start(["storage", "--port", "0", "--dir", tempDir("standalone-storage")]);
  const storageUrl = String((await storage.ready()).url);
  const etcd = join === "etcd" ? await EtcdProcess.start(etcdDataDir("standalone")) : null;
  const service = start(["cluster", "--port", "0", ...(etcd === null ? ["--storage", storageUrl] : ["--arbiter", etcd.url])]);
  const url = String((await service.ready()).url);
  const hosts = new Map<string, LockstepProcess>();
  for (const id of ["east", "west", "north"]) {
    const joining = etcd === null ? ["--cluster", url] : ["--arbiter", etcd.url];
    hosts.set(id, start(["host", "--storage", storageUrl, "--id", id, "--port", "0", ...joining]));
  }
  await Promise.all([...hosts.values()].map((host) => host.ready()));
  // The service says so as each one joins: no polling of its status needed.
  for (const id of hosts.keys()) await service.waitForStderr(new RegExp(`"host":"${id}"[^\\n]*"event":"hostJoined"`));
  return { url, service, hosts };
}

async function failoverRestoresRedundancy(join: "heartbeat" | "etcd"): Promise<void> {
  const { url, service, hosts } = await standaloneCluster(join);
  const status = await api<{ hosts: { id: string; state: string }[] }>(url, "/api/status");
  expect(status.body.hosts.map((h) => [h.id, h.state]).sort()).toEqual([["east", "up"], ["north", "up"], ["west", "up"]]);

  const started = await api<{ vm: string; primary: string; backup: string; generation: number }>(url, "/api/vms", "POST", { guest: "kv" });
  expect(started.status, JSON.stringify(started.body)).toBe(201);
  const { primary, backup } = started.body;
  expect(primary).not.toBe(backup);
  // Where the guest listens: its primary's host says so in its status, which the service relays.
  const listening = await service.waitForStderr(new RegExp(`"host":"${primary}"[^\\n]*"address":"([\\d.]+:\\d+)"[^\\n]*"event":"listening"`));
  const address = listening[1]!;
  const writes = Array.from({ length: 50 }, (_, i) => `SET key-${i} value-${i}`);
  expect(await redis(address, [...writes, "INCR hits"])).toEqual([...writes.map(() => "OK"), "1"]);

  // A joined host is not the service's to kill: the test kills it, as a machine would die.
  const refused = await api<{ error: { code: string } }>(url, `/api/hosts/${primary}/kill`, "POST");
  expect(refused.status).toBe(409);
  hosts.get(primary)!.child.kill("SIGKILL");

  // The backup's go-live comes from its host's own event feed, then the clone's restore.
  await service.waitForStderr(new RegExp(`"host":"${backup}"[^\\n]*"generation":2[^\\n]*"event":"wentLive"`));
  const third = [...hosts.keys()].find((id) => id !== primary && id !== backup)!;
  const restored = await service.waitForStderr(new RegExp(`"msg":"kv is protected again, its backup on ${third}"[^\\n]*"event":"redundancyRestored"[^\\n]*"unprotectedMs":(\\d+)`));
  console.log(`${join}: redundancy back ${restored[1]} ms after the service saw kv unprotected`);
  const relisting = await service.waitForStderr(new RegExp(`"host":"${backup}"[^\\n]*"address":"([\\d.]+:\\d+)"[^\\n]*"event":"listening"`));
  expect(await redis(relisting[1]!, ["GET key-49", "INCR hits"])).toEqual(["value-49", "2"]);
}

describe("lockstep cluster on its own", () => {
  it("hosts join by heartbeat; kill -9 of the primary's host: the backup goes live and the third host gets a new backup", async () => {
    await failoverRestoresRedundancy("heartbeat");
  });

  it("hosts join through etcd, by their membership keys: the same failover and restore", async () => {
    await failoverRestoresRedundancy("etcd");
  });

  it("refuses a heartbeat without the token, or one that is not a host's", async () => {
    const storage = start(["storage", "--port", "0", "--dir", tempDir("standalone-storage")]);
    const service = start(["cluster", "--port", "0", "--storage", String((await storage.ready()).url)]);
    const url = String((await service.ready()).url);
    const noToken = await fetch(`${url}/api/hosts/heartbeat`, { method: "POST", body: JSON.stringify({ id: "x", url: "http://127.0.0.1:1" }) });
    expect(noToken.status).toBe(401);
    for (const body of [{}, { id: "../etc", url: "http://127.0.0.1:1" }, { id: "ok", url: "file:///etc/passwd" }, { id: "ok", url: "http://127.0.0.1:1", extra: 1 }]) {
      const bad = await api<{ error: { code: string } }>(url, "/api/hosts/heartbeat", "POST", body);
      expect(bad.status, JSON.stringify(body)).toBe(400);
      expect(bad.body.error.code).toBe("BAD_REQUEST");
    }
    expect((await api<{ hosts: unknown[] }>(url, "/api/status")).body.hosts).toEqual([]);
  });
});
