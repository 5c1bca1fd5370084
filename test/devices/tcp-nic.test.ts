// The local TCP NIC of a backup that goes live: the replayed guest still holds the primary's
// connection ids (their NicClosed events are pending), so a client that connects now must get
// an id past them, or the guest's close of the old connection would close the new one.

import net from "node:net";
import { describe, expect, it } from "vitest";
import { TcpNic } from "../../host/devices/tcp-nic.js";
import type { DeviceEvent } from "../../host/vm/messages.js";
import { EventKind } from "../../protocol/records.js";

describe("TcpNic going live", () => {
  it("numbers new connections past the ids the replayed guest still holds", async () => {
    const opened: number[] = [];
    let onOpen: () => void = () => undefined;
    const deliver = (event: DeviceEvent) => {
      if (event.kind !== EventKind.NicAccept) return;
      opened.push(event.arg);
      onOpen();
    };
    const listening = new Promise<number>((resolve) => {
      const nic = new TcpNic(() => ({ host: "127.0.0.1", port: 0 }), deliver, (_port, address) => resolve(address.port), (message) => {
        throw new Error(message);
      });
      nic.goLive([], 7);
      nic.listen(6379);
      after.push(() => nic.shutdown());
    });
    const port = await listening;
    const connect = () =>
      new Promise<net.Socket>((resolve) => {
        const opening = new Promise<void>((done) => (onOpen = done));
        const socket = net.connect(port, "127.0.0.1", () => void opening.then(() => resolve(socket)));
      });
    const sockets = [await connect(), await connect()];
    expect(opened).toEqual([7, 8]);
    for (const socket of sockets) socket.destroy();
    for (const cleanup of after.splice(0)) await cleanup();
  });
});

const after: (() => Promise<void>)[] = [];
