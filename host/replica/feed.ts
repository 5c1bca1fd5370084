// A read-only replica's feed, served by the host that runs a VM's primary, on a WebSocket at
// /observe/:vm (the host's token as `Authorization: Bearer`). The cluster service opens it for
// a browser replica (sessions.ts). In order:
//
//   text    {"t":"start", vm, generation, host, seq, icount, globals, memoryPagesMax,
//            diskBlocks, streamNic, moduleHash}      where the replica starts
//   binary  the instrumented module, exactly as the primary runs it
//   binary  the snapshot at `seq` (snapshot-portable.ts)
//   binary  ...records from `seq` on, a batch per frame (protocol/codec.ts encodeRecords)
//   close   1000 with the reason once no record will follow (the VM stopped here);
//           4429 when the reader fell behind by REPLICA_FEED_BYTES_MAX; 4409 when refused
//
// The replica acknowledges nothing: the primary never waits for it. Bounded by the socket's
// send buffer: a reader that does not keep up is dropped, never buffered for.

import type { WebSocket } from "ws";
import { encodeRecords } from "../../protocol/codec.js";
import type { PrimaryDriver } from "../ft/primary-driver.js";
import type { InstrumentedModule } from "../instrument/index.js";
import { encodePortableSnapshot } from "../vm/snapshot-portable.js";

/** Bytes queued for one replica past which it is dropped: seconds of a busy VM's log. */
export const REPLICA_FEED_BYTES_MAX = 32 * 1024 * 1024;
/** The primary has this long to reach a point where its guest can be snapshotted. */
const SNAPSHOT_TIMEOUT_MS = 10_000;

export const CLOSE_FELL_BEHIND = 4429;
export const CLOSE_REFUSED = 4409;

export interface ReplicaStart {
  t: "start";
  vm: string;
  guest: string;
  generation: number;
  host: string;
  /** The snapshot's log position and count: the first record sent has this seq. */
  seq: number;
  icount: string;
  globals: InstrumentedModule["globals"];
  memoryPagesMax: number;
  diskBlocks: number;
  streamNic: boolean;
  moduleHash: string;
}

export interface FeedVm {
  vm: string;
  guest: string;
  host: string;
  module: InstrumentedModule;
  moduleHash: string;
  memoryPagesMax: number;
  diskBlocks: number;
  streamNic: boolean;
}

/** Serves one replica's feed from `primary` on `socket` until either ends. */
export function serveReplicaFeed(socket: WebSocket, primary: PrimaryDriver, vm: FeedVm): void {
  let closed = false;
  const close = (code: number, reason: string) => {
    if (closed) return;
    closed = true;
    stop();
    // A close reason is at most 123 bytes.
    socket.close(code, reason.slice(0, 120));
  };
  const send = (data: string | Uint8Array) => {
    if (closed) return;
    if (socket.bufferedAmount > REPLICA_FEED_BYTES_MAX) return close(CLOSE_FELL_BEHIND, "the replica fell behind the primary's log");
    socket.send(data);
  };
  let stop: () => void = () => {};
  try {
    stop = primary.observe(
      SNAPSHOT_TIMEOUT_MS,
      (snapshot) => {
        const start: ReplicaStart = {
          t: "start",
          vm: vm.vm,
          guest: vm.guest,
          generation: primary.status().generation,
          host: vm.host,
          seq: snapshot.seq,
          icount: snapshot.icount.toString(),
          globals: vm.module.globals,
          memoryPagesMax: vm.memoryPagesMax,
          diskBlocks: vm.diskBlocks,
          streamNic: vm.streamNic,
          moduleHash: vm.moduleHash,
        };
        send(JSON.stringify(start));
        send(vm.module.wasm);
        send(encodePortableSnapshot(snapshot));
      },
      {
        // Encoded at once: the records' data may be reused once this returns.
        records: (batch) => send(encodeRecords(batch)),
        end: (reason) => close(1000, reason),
      },
    );
  } catch (error) {
    close(CLOSE_REFUSED, (error as Error).message);
    return;
  }
  socket.on("close", () => {
    closed = true;
    stop();
  });
  socket.on("error", () => socket.terminate());
  // A replica sends nothing: anything it does send is ignored, and bounded by maxPayload.
}
