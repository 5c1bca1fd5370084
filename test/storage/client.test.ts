// The storage client against a real server that dies, stops and comes back: the `unreachable`
// state is reported and cleared, requests fail with retryable codes that say whether they
// were sent, the client reconnects by itself, and a new session fences the old one.

import net from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { StorageClient, type StorageState } from "../../host/storage/client.js";
import { isStorageError, type StorageError } from "../../host/storage/errors.js";
import { encodeFrame, FrameType, Op, type ResponseFrame, Status } from "../../protocol/storage-frames.js";
import { client, killAll, nextState, pattern, RawPeer, StorageProcess, tempDir } from "./helpers.js";

afterAll(killAll);

async function failure(promise: Promise<unknown>): Promise<StorageError> {
  try {
    await promise;
  } catch (error) {
    expect(isStorageError(error), String(error)).toBe(true);
    return error as StorageError;
  }
  throw new Error("expected a failure");
}

/** A port nobody listens on (bound, then released). */
async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

describe("reconnecting", () => {
  it("reports unreachable when the server dies, fails requests retryably, and clears it after a restart", async () => {
    const dir = tempDir("reconnect");
    const first = await StorageProcess.start({ dir });
    const storage = await client(first.url);
    const states: StorageState[] = [];
    storage.onState((state) => states.push(state));
    await storage.openDisk("kv", 16);
    await storage.write("kv", 1, pattern(1));
    const firstServer = storage.serverId;

    // Stopped first, so that the request is surely in flight when the process dies.
    first.server.child.kill("SIGSTOP");
    const inFlight = failure(storage.write("kv", 2, pattern(2)));
    const unreachable = nextState(storage, "unreachable");
    await first.server.kill("SIGKILL");
    const dropped = await inFlight;
    expect(dropped.code).toBe("DISCONNECTED");
    expect(dropped.retryable).toBe(true);
    await unreachable;
    expect(storage.state).toBe("unreachable");
    expect(storage.reachable).toBe(false);

    // Meanwhile requests are not sent at all.
    const notSent = await failure(storage.read("kv", 1, 1));
    expect(notSent.code).toBe("UNREACHABLE");
    expect(notSent.retryable).toBe(true);
    expect((await failure(storage.waitReachable(50))).code).toBe("UNREACHABLE");

    const ready = nextState(storage, "ready");
    const second = await StorageProcess.start({ dir, port: first.port });
    await ready;
    expect(storage.serverId).not.toBe(firstServer);
    expect(states).toEqual(["unreachable", "ready"]);
    // The caller retries the write that was in flight: idempotent, and durable now.
    await storage.write("kv", 2, pattern(2));
    expect(Buffer.compare(await storage.read("kv", 1, 1), pattern(1))).toBe(0);
    expect(Buffer.compare(await storage.read("kv", 2, 1), pattern(2))).toBe(0);
    await storage.close();
    expect(storage.state).toBe("closed");
    await second.server.kill("SIGTERM");
  });

  it("cut off (a host's network gate), it drops the connection and does not come back until joined again", async () => {
    const server = await StorageProcess.start({ dir: tempDir("cutoff") });
    const storage = await client(server.url);
    await storage.openDisk("kv", 16);
    await storage.write("kv", 1, pattern(1));

    const unreachable = nextState(storage, "unreachable");
    storage.setCutOff(true);
    await unreachable;
    expect((await failure(storage.read("kv", 1, 1))).code).toBe("UNREACHABLE");
    // The server is there all along: only this client's side is cut. Its retries are off, so
    // waiting well past the reconnect backoff (2 s at most) finds it still unreachable.
    expect((await failure(storage.waitReachable(2_500))).code).toBe("UNREACHABLE");

    const ready = nextState(storage, "ready");
    storage.setCutOff(false);
    await ready;
    expect(Buffer.compare(await storage.read("kv", 1, 1), pattern(1))).toBe(0);
    await storage.close();
    await server.server.kill("SIGTERM");
  });

  it("a request with no answer times out, and the suspect connection is replaced", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("timeout") });
    const storage = await client(url, { requestTimeoutMs: 300, keepaliveMs: 60_000 });
    await storage.openDisk("kv", 16);
    server.child.kill("SIGSTOP");
    const unreachable = nextState(storage, "unreachable");
    const timedOut = await failure(storage.read("kv", 0, 1));
    expect(timedOut.code).toBe("TIMEOUT");
    expect(timedOut.retryable).toBe(true);
    expect(await unreachable).toMatch(/request timed out/);
    const ready = nextState(storage, "ready");
    server.child.kill("SIGCONT");
    await ready;
    expect(await storage.read("kv", 0, 1)).toHaveLength(4096);
    // The dropped connection's session was replaced by the new one.
    await server.waitForMsg("client connected", { session: 2 });
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("keepalive notices a server that stopped answering, with no request outstanding", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("keepalive") });
    const storage = await client(url, { keepaliveMs: 100 });
    server.child.kill("SIGSTOP");
    expect(await nextState(storage, "unreachable")).toMatch(/no pong within 100 ms/);
    const ready = nextState(storage, "ready");
    server.child.kill("SIGCONT");
    await ready;
    expect(await storage.readGeneration("kv")).toBeNull();
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("a server shutting down cleanly answers what is in progress, then the client waits for it", async () => {
    const dir = tempDir("shutdown");
    const first = await StorageProcess.start({ dir });
    const storage = await client(first.url);
    await storage.openDisk("kv", 16);
    const unreachable = nextState(storage, "unreachable");
    const write = storage.write("kv", 3, pattern(3));
    first.server.child.kill("SIGTERM");
    // Either answered before the shutdown began, or refused SHUTTING_DOWN: never lost silently.
    await write.catch((error: StorageError) => expect(["SHUTTING_DOWN", "DISCONNECTED"]).toContain(error.code));
    expect(await unreachable).toMatch(/SHUTTING_DOWN|1001/);
    expect((await first.server.exited).code).toBe(0);
    const ready = nextState(storage, "ready");
    const second = await StorageProcess.start({ dir, port: first.port });
    await ready;
    await storage.close();
    await second.server.kill("SIGTERM");
  });
});

describe("connecting", () => {
  it("connect gives up after its limit when nobody listens: UNREACHABLE", async () => {
    const port = await freePort();
    const error = await failure(StorageClient.connect(`ws://127.0.0.1:${port}`, { clientId: "early", connectTimeoutMs: 300 }));
    expect(error.code).toBe("UNREACHABLE");
    expect(error.message).toMatch(/not reachable within 300 ms: ECONNREFUSED/);
  });

  it("connect waits for a server that starts later", async () => {
    const port = await freePort();
    const connecting = StorageClient.connect(`ws://127.0.0.1:${port}`, { clientId: "early", connectTimeoutMs: 60_000 });
    const { server } = await StorageProcess.start({ dir: tempDir("late"), port });
    const storage = await connecting;
    expect(storage.state).toBe("ready");
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("close fails pending requests with CLOSED and stops reconnecting", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("close") });
    const storage = await client(url);
    server.child.kill("SIGSTOP");
    const pending = failure(storage.readGeneration("kv"));
    await storage.close();
    expect((await pending).code).toBe("CLOSED");
    expect((await failure(storage.readGeneration("kv"))).code).toBe("CLOSED");
    expect((await failure(storage.waitReachable())).code).toBe("CLOSED");
    server.child.kill("SIGCONT");
    await server.kill("SIGTERM");
    // Nothing reconnected: the only session ever welcomed is the first.
    expect(server.logs.filter((line) => line.msg === "client connected")).toHaveLength(1);
  });
});

describe("sessions", () => {
  it("a newer session of the same client fences the older: its late requests never run", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("fence") });
    const setup = await client(url);
    await setup.openDisk("kv", 16);
    await setup.close();

    const old = await RawPeer.hello(url, { clientId: "host-a", instance: 9, session: 1 });
    const fenced = server.waitForMsg("session fenced", { client: "host-a", session: 1 });
    const fresh = await RawPeer.hello(url, { clientId: "host-a", instance: 9, session: 2 });
    await fenced;
    // A write of the old session, arriving after the new session began: dropped, not run.
    old.send(encodeFrame({ type: FrameType.Request, id: 1, op: Op.Write, vm: "kv", a: 5, b: 1, text: "", data: pattern(5) }));
    expect((await old.closed).code).toBe(1008);
    fresh.send(encodeFrame({ type: FrameType.Request, id: 1, op: Op.Read, vm: "kv", a: 5, b: 1, text: "", data: new Uint8Array(0) }));
    const read = (await fresh.frame()) as ResponseFrame;
    expect(read.status).toBe(Status.Ok);
    expect(Buffer.compare(read.data, new Uint8Array(4096)), "the fenced write ran").toBe(0);

    // An older session showing up late is refused; another instance is another client.
    const stale = await RawPeer.connect(url);
    stale.send(encodeFrame({ type: FrameType.Hello, clientId: "host-a", instance: 9, session: 1, token: "" }));
    const refusal = await stale.frame();
    expect(refusal).toMatchObject({ type: FrameType.Error, status: Status.Protocol });
    const other = await RawPeer.hello(url, { clientId: "host-a", instance: 10, session: 1 });
    other.ws.close();
    fresh.ws.close();
    await server.kill("SIGTERM");
  });
});
