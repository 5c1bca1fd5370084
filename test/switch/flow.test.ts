// Flow control through the switch, both ways: a client that does not read gets no more output
// than the kernel and the VM's window hold (no CREDIT for bytes not drained); a VM that PAUSEs
// a stream gets no client bytes, and a client whose bytes are not ACKed is paused at 1 MiB.

import { afterEach, describe, expect, it } from "vitest";
import { UNACKED_BYTES_MAX, UNDRAINED_BYTES_MAX } from "../../host/switch/switch.js";
import { Client, FakeVm, startSwitch, type TestSwitch, until } from "./helpers.js";

/** The guest's transmit window, as the NIC gives it (host/vm/limits.ts TX_WINDOW_BYTES). */
const WINDOW_BYTES = 256 * 1024;
const PIECE_BYTES = 64 * 1024;

let t: TestSwitch | null = null;
const cleanup: (() => void)[] = [];

afterEach(async () => {
  for (const step of cleanup.splice(0)) step();
  await t?.sw.close();
  t = null;
});

/** Bytes whose value depends on their offset, so that a repeat or a hole shows. */
function pattern(offset: number, length: number): Buffer {
  const bytes = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) bytes[i] = ((offset + i) * 31 + ((offset + i) >> 16)) & 0xff;
  return bytes;
}

describe("flow control through the switch", () => {
  it("gives no CREDIT for output a client does not read, so the VM stops", async () => {
    t = await startSwitch();
    const fake = new FakeVm(t.sw.url, { generation: 1, echo: false });
    cleanup.push(() => fake.link.terminate());
    await fake.link.welcomed;
    // A guest that sends as fast as its window allows, up to `limit`.
    let id = -1;
    let limit = Number.POSITIVE_INFINITY;
    const pump = () => {
      const stream = fake.streams.get(id);
      if (stream === undefined) return;
      while (stream.tx - stream.credit < WINDOW_BYTES && stream.tx < limit) {
        fake.write(id, pattern(stream.tx, Math.min(PIECE_BYTES, WINDOW_BYTES - (stream.tx - stream.credit), limit - stream.tx)));
      }
    };
    const onOpen = fake.link.onOpen;
    fake.link.onOpen = (stream, vport) => {
      onOpen(stream, vport);
      if (id === -1) id = stream;
      pump();
    };
    const onCredit = fake.link.onCredit;
    fake.link.onCredit = (stream, bytes) => {
      onCredit(stream, bytes);
      pump();
    };

    const reader = new Client(t.address("echo"));
    cleanup.push(() => reader.socket.destroy());
    reader.socket.pause();
    // The guest blocks: its window is full, every drained byte is credited, and the switch
    // holds written bytes the socket could not drain.
    const blocked = await t.statusUntil((s) => {
      const at = s.vms[0]!.streams[0];
      const stream = fake.streams.get(id);
      if (at === undefined || stream === undefined) return null;
      const stuck = stream.tx - stream.credit >= WINDOW_BYTES && at.written === stream.tx && at.delivered === stream.credit && at.written > at.delivered;
      return stuck ? { ...at, tx: stream.tx } : null;
    }, "the guest blocked on credit");
    expect(blocked.written - blocked.delivered).toBeLessThanOrEqual(UNDRAINED_BYTES_MAX);
    // What the kernel buffers took, not an unbounded stream.
    expect(blocked.tx).toBeLessThan(128 * 1024 * 1024);
    // It stays blocked: a new client's OPEN (after any CREDIT the switch had sent) finds no
    // more credit than then.
    const other = new Client(t.address("echo"));
    cleanup.push(() => other.socket.destroy());
    await fake.untilStream((s) => s.id !== id, "the OPEN of another client");
    expect(fake.stream(id).tx).toBeLessThanOrEqual(blocked.tx + UNDRAINED_BYTES_MAX);

    // The client reads again: it gets every byte once, in order, and the guest all its credit.
    limit = fake.stream(id).tx;
    pump();
    reader.socket.resume();
    await reader.untilBytes(limit);
    expect(Buffer.concat(reader.chunks).equals(pattern(0, limit))).toBe(true);
    await until(() => fake.stream(id).credit === limit, "credit for every byte");
  });

  it("sends no client bytes while the VM has PAUSEd the stream, and pauses a client at 1 MiB not ACKed", async () => {
    t = await startSwitch();
    const fake = new FakeVm(t.sw.url, { generation: 1, echo: false, ack: "none" });
    cleanup.push(() => fake.link.terminate());
    await fake.link.welcomed;
    const writer = new Client(t.address("echo"));
    cleanup.push(() => writer.socket.destroy());
    const stream = await fake.untilStream(() => true, "the OPEN");
    fake.link.pause(stream.id);
    await t.statusUntil((s) => s.vms[0]!.streams[0]!.vmPaused, "the PAUSE at the switch");

    const big = pattern(0, 3 * UNACKED_BYTES_MAX);
    writer.socket.write(big);
    await t.logLine((l) => l.msg === "client paused" && l.stream === stream.id, "the client paused");
    const held = await t.statusUntil((s) => (s.vms[0]!.streams[0]!.socketPaused ? s.vms[0]!.streams[0]! : null), "the socket paused");
    expect(held.received).toBeGreaterThanOrEqual(UNACKED_BYTES_MAX - 256);
    expect(held.received).toBeLessThanOrEqual(UNACKED_BYTES_MAX + 64 * 1024);
    expect(held.sent).toBe(0);
    // A new client's OPEN comes after any DATA the switch sent before it: there was none.
    const other = new Client(t.address("echo"));
    cleanup.push(() => other.socket.destroy());
    await fake.untilStream((s) => s.id !== stream.id, "the OPEN of another client");
    expect(fake.stream(stream.id).rx).toBe(0);
    expect(fake.events).not.toContain(`DATA ${stream.id}`);

    // RESUME: the kept bytes flow; not ACKed, the client stays paused at the bound.
    fake.link.resume(stream.id);
    await until(() => fake.stream(stream.id).rx >= held.received, "the kept bytes at the VM");
    const stillHeld = await t.statusUntil((s) => s.vms[0]!.streams[0]!, "status");
    expect(stillHeld.received).toBeLessThanOrEqual(UNACKED_BYTES_MAX + 64 * 1024);
    // ACKs free the bound: everything arrives, once, in order.
    fake.options.ack = "all";
    fake.link.ack(stream.id, fake.stream(stream.id).rx);
    await until(() => fake.stream(stream.id).rx === big.length, "all 3 MiB at the VM");
    expect(Buffer.concat(fake.stream(stream.id).received).equals(big)).toBe(true);
    expect(await t.logLine((l) => l.msg === "client resumed" && l.stream === stream.id, "the client resumed")).toMatchObject({ vm: "vm1", generation: 1 });
  });
});
