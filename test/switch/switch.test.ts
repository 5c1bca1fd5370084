// The switch with real TCP clients and fake VMs on real WebSockets (loopback): echo through
// it, the status API, a failover that the client's connection does not notice, stale and
// repeated generations, clients that come while no VM is linked, and refusals of bad peers.

import { afterEach, describe, expect, it } from "vitest";
import { WebSocket } from "ws";
import { LockstepError } from "../../host/errors.js";
import { encodeLinkFrame, LINK_DATA_BYTES_MAX, LINK_FRAME_BYTES_MAX, LinkType } from "../../host/switch/link-frames.js";
import { Switch } from "../../host/switch/switch.js";
import { Client, FakeVm, startSwitch, type TestSwitch, until } from "./helpers.js";

let t: TestSwitch | null = null;
const vms: FakeVm[] = [];
const clients: Client[] = [];

function vm(options: ConstructorParameters<typeof FakeVm>[1]): FakeVm {
  const fake = new FakeVm(t!.sw.url, options);
  vms.push(fake);
  return fake;
}

function client(service = "echo"): Client {
  const c = new Client(t!.address(service));
  clients.push(c);
  return c;
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.socket.destroy();
  for (const fake of vms.splice(0)) fake.link.terminate();
  await t?.sw.close();
  t = null;
});

/** A raw WebSocket on /link/VM: sends what `start` sends, resolves with how it ended. */
function rawLink(vmName: string, start: (ws: WebSocket) => void): Promise<string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${t!.sw.url.replace(/^http/, "ws")}/link/${vmName}`, { maxPayload: 16 * LINK_FRAME_BYTES_MAX });
    ws.on("open", () => start(ws));
    ws.on("unexpected-response", (_req, res) => {
      resolve(`http ${res.statusCode}`);
      ws.terminate();
    });
    ws.on("close", (code, reason) => resolve(`close ${code} ${reason.toString()}`));
    ws.on("error", () => undefined);
  });
}

const hello = (generation: number, extra: Record<string, unknown> = {}) =>
  encodeLinkFrame({ type: LinkType.Hello, hello: { vm: "vm1", generation, host: "raw", listening: [7], streams: [], ...extra } });

describe("the switch", () => {
  it("carries client connections to the VM and back, and shows them in /api/status", async () => {
    t = await startSwitch();
    const fake = vm({ generation: 1 });
    expect(await fake.link.welcomed).toBe(1);
    const c = client();
    c.socket.write("hello");
    expect(await c.untilBytes(5)).toBe("HELLO");
    const [id] = [...fake.streams.keys()];
    const status = await t.statusUntil((s) => (s.vms[0]!.streams[0]?.delivered === 5 && s.vms[0]!.streams[0]!.acked === 5 ? s : null), "the echo drained");
    expect(status.services).toEqual([{ name: "echo", vm: "vm1", vport: 7, address: t.sw.serviceAddresses().echo }]);
    expect(status.vms[0]).toMatchObject({ vm: "vm1", generation: 1, linkConnected: true, host: "fake-1", listening: [7], streamCount: 1 });
    expect(status.vms[0]!.streams[0]).toMatchObject({
      stream: id,
      service: "echo",
      vport: 7,
      state: "open",
      received: 5,
      acked: 5,
      sent: 5,
      written: 5,
      delivered: 5,
      credit: 5,
      clientEnded: false,
      closeAt: null,
    });
    await until(() => fake.stream(id!).credit === 5, "CREDIT for the drained echo");

    // The client ends its side: FIN, the guest closes after its output, the client sees the end.
    c.socket.end();
    expect(await c.untilEnded()).toBe("HELLO");
    expect(fake.stream(id!).fin).toBe(5);
    await t.statusUntil((s) => s.vms[0]!.streamCount === 0, "the stream gone");
    expect(t.lines.find((l) => l.event === "linkUp")).toMatchObject({ vm: "vm1", generation: 1, host: "fake-1" });

    // A client that leaves (a reset: no FIN for the guest to answer) is GONE for the VM.
    const leaving = client();
    leaving.socket.write("x");
    await leaving.untilBytes(1);
    const leavingId = [...fake.streams.keys()].find((k) => k !== id)!;
    leaving.socket.resetAndDestroy();
    await until(() => fake.stream(leavingId).gone, "GONE for the client that left");
  });

  it("splits large writes into frames of at most 256 KiB both ways", async () => {
    t = await startSwitch();
    const fake = vm({ generation: 1, echo: false });
    await fake.link.welcomed;
    const c = client();
    const up = Buffer.alloc(700 * 1024, "abcdefg");
    c.socket.write(up);
    const stream = await fake.untilStream((s) => s.rx === up.length, "700 KiB at the VM");
    expect(Buffer.concat(stream.received).equals(up)).toBe(true);
    const down = Buffer.alloc(600 * 1024, "XYZ");
    fake.write(stream.id, down); // one call: three frames
    await c.untilBytes(down.length);
    expect(Buffer.concat(c.chunks).equals(down)).toBe(true);
    expect(down.length).toBeGreaterThan(2 * LINK_DATA_BYTES_MAX);
  });

  it("moves streams to the backup that went live: the client's connection stays open and sees an exact byte stream", async () => {
    t = await startSwitch();
    // The primary ACKs only the first 2 client bytes: the backup's log holds no more.
    const primary = vm({ generation: 1, ack: (s) => Math.min(s.rx, 2) });
    await primary.link.welcomed;
    const c = client();
    c.socket.write("hello");
    expect(await c.untilBytes(5)).toBe("HELLO");
    const id = [...primary.streams.keys()][0]!;
    await t.statusUntil((s) => s.vms[0]!.streams[0]!.acked === 2 && s.vms[0]!.streams[0]!.delivered === 5, "ACK 2, 5 bytes delivered");

    // The primary's host dies mid-conversation.
    primary.link.terminate();
    await t.logLine((l) => l.event === "linkDown" && l.generation === 1, "linkDown");
    // Meanwhile the client goes on, and a new client comes: both are kept.
    c.socket.write(" world");
    const late = client();
    late.socket.write("late");
    const waiting = await t.statusUntil((s) => {
      const [first, second] = s.vms[0]!.streams;
      return first?.received === 11 && second?.received === 4 ? s.vms[0]! : null;
    }, "bytes kept without a link");
    expect(waiting).toMatchObject({ generation: 1, linkConnected: false, streamCount: 2 });
    expect(waiting.streams.map((s) => s.state)).toEqual(["detached", "detached"]);

    // The backup goes live at generation 2. Its log has the stream up to 3 client bytes and 3
    // output bytes (less than the switch has), and a stream whose client the switch lost.
    const backup = vm({ generation: 2, streams: [{ stream: id, rx: 3, tx: 3, credit: 0 }, { stream: 999_999, rx: 0, tx: 0, credit: 0 }] });
    expect(await backup.link.welcomed).toBe(2);
    // Client bytes from rx = 3 again; its echo "LO WORLD" from tx = 3, of which the switch
    // drops "LO" (the client has it).
    expect(await c.untilBytes(11)).toBe("HELLO WORLD");
    expect(backup.text(id)).toBe("lo world");
    expect(backup.stream(id).gaps).toEqual([]);
    await until(() => backup.stream(999_999).gone, "GONE for the stream the switch does not know");
    // The late client was never accepted by a VM: OPEN, from offset 0.
    const lateStream = await backup.untilStream((s) => s.id !== id && s.id !== 999_999, "OPEN of the late client");
    expect(backup.events.indexOf(`OPEN ${lateStream.id}`)).toBeLessThan(backup.events.indexOf(`DATA ${lateStream.id}`));
    expect(await late.untilBytes(4)).toBe("LATE");
    // Credit: the 5 bytes the client took before the HELLO, then the 6 new ones.
    await until(() => backup.stream(id).credit === 11, "credit 11");

    expect(c.ended || c.closed || c.error !== null).toBe(false);
    const failover = await t.logLine((l) => l.event === "failover", "the failover line");
    expect(failover).toMatchObject({ vm: "vm1", generation: 2, previousGeneration: 1, streamsMoved: 1, bytesResent: 8, streamsOpened: 1, bytesOpened: 4, streamsGone: 1, streamsReset: 0 });

    // The stream goes on and ends normally on the backup.
    c.socket.end("!");
    expect(await c.untilEnded()).toBe("HELLO WORLD!");
    expect(backup.stream(id).fin).toBe(12);
    // The dead primary got nothing after its death.
    expect(primary.text(id)).toBe("hello");
  });

  it("refuses a stale generation and takes a reconnect of the current one", async () => {
    t = await startSwitch();
    const current = vm({ generation: 2 });
    await current.link.welcomed;
    const c = client();
    c.socket.write("a");
    expect(await c.untilBytes(1)).toBe("A");
    const id = [...current.streams.keys()][0]!;

    const stale = vm({ generation: 1 });
    await expect(stale.link.welcomed).rejects.toThrow(/stale generation/);
    expect(stale.closed).toEqual({ code: 1008, reason: "stale generation 1: the VM is at generation 2" });
    expect(await t.logLine((l) => l.msg === "stale generation refused", "the refusal's log line")).toMatchObject({
      vm: "vm1",
      generation: 1,
      current: 2,
      code: "STALE_GENERATION",
    });
    // The current link still carries the stream.
    c.socket.write("b");
    expect(await c.untilBytes(2)).toBe("AB");

    // The same primary reconnects (a network blip): the old link is closed, the stream moves.
    const again = vm({ generation: 2, streams: [{ stream: id, rx: 2, tx: 2, credit: 0 }] });
    await again.link.welcomed;
    await until(() => current.closed, "the replaced link closed");
    expect(current.closed).toMatchObject({ code: 1008, reason: expect.stringMatching(/replaced/) });
    c.socket.write("c");
    expect(await c.untilBytes(3)).toBe("ABC");
    expect(again.stream(id).rx).toBe(3);
    expect(t.lines.filter((l) => l.event === "failover")).toEqual([]);
  });

  it("keeps clients that come while the VM has no link, and opens them once it listens on their port", async () => {
    t = await startSwitch();
    const early = client();
    early.socket.write("early");
    await t.statusUntil((s) => s.vms[0]!.streams[0]?.received === 5, "the early client's bytes kept");
    const fake = vm({ generation: 1, listening: [] });
    await fake.link.welcomed;
    const second = client();
    second.socket.write("x");
    await t.statusUntil((s) => s.vms[0]!.streams[1]?.received === 1, "the second client's byte kept");
    // Not listening on vport 7 yet: nothing was opened. LISTEN opens both, in order.
    expect(fake.events).toEqual(["WELCOME"]);
    fake.link.listen(7);
    expect(await early.untilBytes(5)).toBe("EARLY");
    expect(await second.untilBytes(1)).toBe("X");
    expect(fake.events.filter((e) => e.startsWith("OPEN"))).toEqual([...fake.streams.keys()].map((k) => `OPEN ${k}`));
  });

  it("resets a stream that a new primary cannot resume, and tells the VM it is GONE", async () => {
    t = await startSwitch();
    const primary = vm({ generation: 1 });
    await primary.link.welcomed;
    const c = client();
    c.socket.write("abc");
    await c.untilBytes(3);
    const id = [...primary.streams.keys()][0]!;
    await t.statusUntil((s) => s.vms[0]!.streams[0]!.acked === 3, "ACK 3");
    primary.link.terminate();
    await t.logLine((l) => l.event === "linkDown", "linkDown");
    // A backup whose log has only 1 client byte: bytes 1..3 were ACKed, so they are forgotten.
    const backup = vm({ generation: 2, streams: [{ stream: id, rx: 1, tx: 3, credit: 0 }] });
    await backup.link.welcomed;
    await until(() => backup.stream(id).gone, "GONE");
    await until(() => c.closed, "the client reset");
    expect(c.error).toBe("ECONNRESET");
    expect(await t.logLine((l) => l.msg === "stream reset", "the reset line")).toMatchObject({ vm: "vm1", generation: 2, stream: id, code: "STREAM_RESET" });
    expect(await t.logLine((l) => l.event === "failover", "failover")).toMatchObject({ streamsReset: 1, streamsMoved: 0 });
  });

  it("takes output a dead link lost from a new primary that resends it, and resets a stream with a hole", async () => {
    t = await startSwitch();
    const primary = vm({ generation: 1, echo: false });
    await primary.link.welcomed;
    const [a, b] = [client(), client()];
    await primary.untilStream((s) => s.id > 0 && primary.streams.size === 2, "two OPENs");
    const [idA, idB] = [...primary.streams.keys()] as [number, number];
    primary.write(idA, Buffer.from("abc"));
    primary.write(idB, Buffer.from("abc"));
    expect(await a.untilBytes(3)).toBe("abc");
    expect(await b.untilBytes(3)).toBe("abc");
    primary.link.terminate();
    await t.logLine((l) => l.event === "linkDown", "linkDown");
    // Its log says 6 output bytes were released on both streams: "def" never reached the switch.
    const backup = vm({
      generation: 2,
      echo: false,
      streams: [
        { stream: idA, rx: 0, tx: 6, credit: 0 },
        { stream: idB, rx: 0, tx: 6, credit: 0 },
      ],
    });
    await backup.link.welcomed;
    expect((await t.logLine((l) => l.msg === "stream output behind", "the warning"))).toMatchObject({ stream: idA, tx: 6, written: 3 });
    // Stream A: the new primary resends from its credit (never past what the client got).
    backup.link.data(idA, 0, Buffer.from("abcdef"));
    expect(await a.untilBytes(6)).toBe("abcdef");
    // Stream B: the next output starts past a hole. The client must not see "abcghi".
    backup.link.data(idB, 6, Buffer.from("ghi"));
    await until(() => b.closed, "stream B reset");
    expect(b.error).toBe("ECONNRESET");
    expect(b.text()).toBe("abc");
    await until(() => backup.stream(idB).gone, "GONE for stream B");
    expect(a.closed).toBe(false);
  });

  it("requires the token in HELLO and on /api/status when one is set", async () => {
    t = await startSwitch({ token: "s3cret" });
    expect((await fetch(`${t.sw.url}/api/status`)).status).toBe(401);
    expect((await fetch(`${t.sw.url}/api/status`, { headers: { authorization: "Bearer guess" } })).status).toBe(401);
    for (const token of [undefined, "guess"]) {
      const wrong = vm({ generation: 1, token });
      await expect(wrong.link.welcomed).rejects.toThrow(/wrong token/);
      expect(wrong.closed?.code).toBe(1008);
    }
    const right = vm({ generation: 1, token: "s3cret" });
    await right.link.welcomed;
    await t.statusUntil((s) => s.vms[0]!.linkConnected && s.vms[0]!.generation === 1, "the link up");
    await expect(Switch.start({ bind: "0.0.0.0", port: 0, token: null, services: [{ name: "a", vm: "a", vport: 1, host: "127.0.0.1", port: 0 }] })).rejects.toThrow(
      LockstepError,
    );
  });

  it("closes a link that sends garbage with 1008 and a reason, and goes on serving", async () => {
    t = await startSwitch();
    expect(await rawLink("nobody", () => undefined)).toBe("http 404");
    expect(await rawLink("vm1", (ws) => ws.send("hello"))).toMatch(/^close 1008 a text message/);
    expect(await rawLink("vm1", (ws) => ws.send(Buffer.of(0xff, 1, 2)))).toMatch(/^close 1008 .*LINK_UNKNOWN_TYPE/);
    expect(await rawLink("vm1", (ws) => ws.send(Buffer.of(LinkType.Listen, 7, 0)))).toMatch(/^close 1008 expected HELLO first/);
    expect(await rawLink("vm1", (ws) => ws.send(Buffer.of(LinkType.Hello, 0x7b)))).toMatch(/^close 1008 .*LINK_MALFORMED/);
    const afterHello = (frame: Buffer) => rawLink("vm1", (ws) => (ws.send(hello(5)), ws.send(frame)));
    expect(await afterHello(Buffer.of(LinkType.VmData, 1, 2))).toMatch(/^close 1008 .*LINK_TRUNCATED/);
    expect(await afterHello(encodeLinkFrame({ type: LinkType.Open, stream: 1, vport: 7 }))).toMatch(/^close 1008 .*LINK_WRONG_DIRECTION/);
    expect(await afterHello(hello(5))).toMatch(/^close 1008 a second HELLO/);
    expect(await afterHello(Buffer.alloc(LINK_FRAME_BYTES_MAX + 1, LinkType.VmData))).toMatch(/^close 1009/);
    expect(await rawLink("vm1", (ws) => ws.send(encodeLinkFrame({ type: LinkType.Hello, hello: { vm: "other", generation: 9, host: "h", listening: [], streams: [] } })))).toMatch(
      /^close 1008 the HELLO names another VM/,
    );
    const lost = vm({ generation: 1, vm: "nobody" });
    await expect(lost.link.welcomed).rejects.toThrow(/HTTP 404/);
    expect(lost.closed?.reason).toBe("the switch answered HTTP 404");
    const errors = t.lines.filter((l) => l.msg === "link protocol error");
    expect(errors.length).toBeGreaterThanOrEqual(9);
    expect(errors.every((l) => l.vm === "vm1")).toBe(true);

    // A VM that ACKs client bytes it was never sent is a protocol error too.
    const fake = vm({ generation: 6, ack: "none" });
    await fake.link.welcomed;
    const c = client();
    c.socket.write("abc");
    const stream = await fake.untilStream((s) => s.rx === 3, "3 bytes at the VM");
    fake.link.ack(stream.id, 4);
    await until(() => fake.closed, "the link closed");
    expect(fake.closed).toEqual({ code: 1008, reason: `ACK of stream ${stream.id} at 4, past the 3 bytes sent` });

    // The switch still serves: a good VM and the same client, which stayed connected.
    const good = vm({ generation: 7, streams: [{ stream: stream.id, rx: 3, tx: 3, credit: 0 }] });
    await good.link.welcomed;
    c.socket.write("d");
    expect(await c.untilBytes(4)).toBe("ABCD");
  });

  it("closes a link that says no HELLO in time", async () => {
    t = await startSwitch({ limits: { helloTimeoutMs: 200 } });
    expect(await rawLink("vm1", () => undefined)).toBe("close 1008 no HELLO within 200 ms");
    const fake = vm({ generation: 1 });
    expect(await fake.link.welcomed).toBe(1);
  });

  it("refuses clients beyond the streams-per-VM bound", async () => {
    t = await startSwitch({ limits: { streamsPerVmMax: 2 } });
    const fake = vm({ generation: 1 });
    await fake.link.welcomed;
    const [a, b] = [client(), client()];
    a.socket.write("a");
    b.socket.write("b");
    await a.untilBytes(1);
    await b.untilBytes(1);
    const refused = client();
    await until(() => refused.ended, "the third client's connection ended");
    expect(refused.bytes).toBe(0);
    expect(await t.logLine((l) => l.msg === "clients refused", "the refusal line")).toMatchObject({ vm: "vm1", generation: 1, service: "echo", streams: 2 });
    a.socket.end();
    await a.untilEnded();
    await t.statusUntil((s) => s.vms[0]!.streamCount === 1, "a slot free");
    const d = client();
    d.socket.write("d");
    expect(await d.untilBytes(1)).toBe("D");
  });

  it("serves 1000 concurrent short connections", async () => {
    t = await startSwitch();
    const fake = vm({ generation: 1 });
    await fake.link.welcomed;
    const answers = await Promise.all(
      Array.from({ length: 1000 }, async (_, i) => {
        const c = client();
        await c.connected;
        c.socket.end(`ping ${i}\n`);
        return c.untilEnded();
      }),
    );
    answers.forEach((answer, i) => expect(answer).toBe(`PING ${i}\n`));
    await t.statusUntil((s) => s.vms[0]!.streamCount === 0, "every stream gone");
    expect(fake.streams.size).toBe(1000);
    expect([...fake.streams.values()].every((s) => s.gaps.length === 0)).toBe(true);
  });
});
