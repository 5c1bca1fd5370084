// etcd as the go-live arbiter across a real network partition (issue 5): the primary's host
// runs in a network namespace of its own, joined to the rest by a veth pair; the backup's host,
// the storage server and etcd run outside it. Taking the veth link down isolates the primary
// from etcd and from its backup at once, as a switch port failing would. The backup must win
// the next generation in etcd and go live; the isolated primary can reach neither its backup
// nor etcd, so it must release nothing more, and when the link comes back it must find the
// newer generation and halt. Needs root for `ip netns` (setup.sh runs as root or with sudo).

import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { etcdArbiter } from "../../host/ft/etcd-arbiter.js";
import { createLogger } from "../../host/log.js";
import { LockstepProcess, tempDir } from "../helpers/cli.js";
import { EtcdProcess, etcdDataDir, killAllEtcd } from "../helpers/etcd.js";

const TOKEN = "partition-test-token";
const id = process.pid % 100_000;
const NETNS = `lockstep-${id}`;
const VETH_OUTSIDE = `lso${id}`;
const VETH_INSIDE = `lsi${id}`;
const SUBNET = 100 + (process.pid % 150);
const OUTSIDE_IP = `10.231.${SUBNET}.1`;
const INSIDE_IP = `10.231.${SUBNET}.2`;

const processes: LockstepProcess[] = [];

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: "pipe" });
}

beforeAll(() => {
  ip("netns", "add", NETNS);
  ip("link", "add", VETH_OUTSIDE, "type", "veth", "peer", "name", VETH_INSIDE);
  ip("link", "set", VETH_INSIDE, "netns", NETNS);
  ip("addr", "add", `${OUTSIDE_IP}/30`, "dev", VETH_OUTSIDE);
  ip("link", "set", VETH_OUTSIDE, "up");
  ip("netns", "exec", NETNS, "ip", "addr", "add", `${INSIDE_IP}/30`, "dev", VETH_INSIDE);
  ip("netns", "exec", NETNS, "ip", "link", "set", VETH_INSIDE, "up");
  ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up");
});

afterAll(async () => {
  for (const proc of processes) proc.child.kill("SIGKILL");
  await Promise.all(processes.map((proc) => proc.exited));
  await killAllEtcd();
  // Deleting the namespace deletes the veth pair with it.
  ip("netns", "del", NETNS);
});

function start(args: string[], inside = false): LockstepProcess {
  const proc = new LockstepProcess(args, {
    env: { LOCKSTEP_TOKEN: TOKEN, LOCKSTEP_STORAGE_TOKEN: TOKEN },
    ...(inside ? { wrap: ["ip", "netns", "exec", NETNS] } : {}),
  });
  processes.push(proc);
  return proc;
}

async function api(url: string, body: unknown): Promise<Record<string, unknown>> {
  const response = await fetch(url, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = (await response.json()) as Record<string, unknown>;
  if (!response.ok) throw new Error(`${url}: ${JSON.stringify(answer)}`);
  return answer;
}

/** Resolves once `check` holds, looked at again whenever the process writes to stderr. */
async function until(proc: LockstepProcess, check: () => boolean, what: string): Promise<void> {
  while (!check()) {
    const more = await Promise.race([
      new Promise<boolean>((resolve) => proc.child.stderr!.once("data", () => resolve(true))),
      proc.exited.then(() => false),
    ]);
    if (!more) throw new Error(`exited while waiting for ${what}:\n${proc.stderr.slice(-3000)}`);
  }
}

/** The counter's ticks a host printed, from its JSON log lines on stderr. */
function ticks(proc: LockstepProcess): number[] {
  return [...proc.stderr.matchAll(/"text":"tick (\d+) /g)].map((m) => Number(m[1]));
}

describe("etcd arbitration across a network partition (ip netns)", () => {
  it("the isolated primary releases nothing more; the backup wins in etcd and goes live; healed, the primary halts", async () => {
    const etcd = await EtcdProcess.start(etcdDataDir("partition"), undefined, OUTSIDE_IP);
    const storage = start(["storage", "--host", OUTSIDE_IP, "--port", "0", "--dir", tempDir("partition-storage")]);
    const storageUrl = String((await storage.ready()).url);
    const common = ["--storage", storageUrl, "--port", "0", "--arbiter", etcd.url];
    const backupHost = start(["host", "--id", "host-b", "--bind", OUTSIDE_IP, ...common]);
    const primaryHost = start(["host", "--id", "host-a", "--bind", INSIDE_IP, ...common], true);
    const backupUrl = String((await backupHost.ready()).url);
    const primaryUrl = String((await primaryHost.ready()).url);

    const spec = { vm: "counter", guest: "counter", timeoutMs: 1000 };
    const backup = await api(`${backupUrl}/api/vms`, { ...spec, role: "backup" });
    await api(`${primaryUrl}/api/vms`, { ...spec, role: "primary", backupUrl: backup.channelUrl });
    await until(primaryHost, () => ticks(primaryHost).length >= 10, "10 ticks from the primary");

    // The partition: the primary's host loses etcd and its backup at the same moment.
    ip("link", "set", VETH_OUTSIDE, "down");
    await backupHost.waitForStderr(/"event":"wentLive"[^\n]*"generation":2|"generation":2[^\n]*"event":"wentLive"/);
    await until(backupHost, () => ticks(backupHost).length >= 5, "5 ticks from the new primary");
    await primaryHost.waitForStderr(/"event":"failureDetected"/);

    // Healed: the old primary reaches etcd, finds generation 2 taken, and halts.
    ip("link", "set", VETH_OUTSIDE, "up");
    await primaryHost.waitForStderr(/"event":"halted"/);
    expect(primaryHost.stderr).toMatch(/"event":"halted","reason":"(lostTestAndSet|superseded)"/);

    // Nothing the isolated primary held could leave once its backup stopped acknowledging: no
    // tick number is printed by both sides, and the new primary goes on after the old one's last.
    const primaryTicks = ticks(primaryHost);
    const backupTicks = ticks(backupHost);
    expect(primaryTicks.filter((tick) => backupTicks.includes(tick)), "ticks printed by both sides").toEqual([]);
    expect(Math.min(...backupTicks)).toBeGreaterThan(Math.max(...primaryTicks));
    expect(primaryHost.stderr).not.toMatch(/"event":"wentAlone"/);

    // etcd holds the decision: generation 2 belongs to the backup's host.
    const arbiter = etcdArbiter(etcd.url, { hostId: "test-reader", log: createLogger("error"), membership: false });
    try {
      expect(await arbiter.readGeneration("counter")).toEqual({ generation: 2, owner: "host-b" });
    } finally {
      await arbiter.close();
    }
  });
});
