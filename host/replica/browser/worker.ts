// The dashboard's live replica: a Web Worker that runs the VM's own instrumented module from a
// snapshot of its primary and replays the primary's log as it is written, with the same vCPU
// code a backup host runs (host/vm/vcpu.ts), bundled for the browser (scripts/build-replica.mjs).
// The primary logs digest probes (ControlKind.Digest); this replica computes its own digest at
// each and stops as a divergence if they differ, so every probe it passes shows the browser,
// on its own engine and CPU, in exactly the primary's state.
//
// Page → worker: {t:"start", vm, token}. Worker → page: ReplicaEvent (replica.js shows them).

import type { ReplicaStart } from "../feed.js";
import type { FromVcpu, VcpuBoot } from "../../vm/messages.js";
import { decodePortableSnapshot } from "../../vm/snapshot-portable.js";
import { Vcpu } from "../../vm/vcpu.js";
import { hexOf } from "../../vm/bytes.js";
import { FeedMailbox } from "./feed-mailbox.js";
import { request, requestJson } from "./http.js";

export type ReplicaEvent =
  | { t: "opened"; vm: string; host: string; generation: number; seq: number; icount: string; moduleBytes: number; snapshotBytes: number }
  | { t: "progress"; seq: number; icount: string; records: number; bytes: number }
  | { t: "console"; text: string }
  | { t: "digest"; icount: string; digest: string; checked: boolean }
  | { t: "ended"; stop: string; message: string | null; icount: string; reason: string | null }
  | { t: "error"; message: string };

const scope = self as unknown as { postMessage(event: ReplicaEvent): void; onmessage: ((event: MessageEvent) => void) | null };
const post = (event: ReplicaEvent) => scope.postMessage(event);

scope.onmessage = (event: MessageEvent) => {
  scope.onmessage = null;
  const { vm, token } = event.data as { vm: string; token: string | null };
  try {
    run(vm, token);
  } catch (error) {
    post({ t: "error", message: (error as Error).message });
  }
};

function run(vm: string, token: string | null): void {
  const { id, start } = requestJson<{ id: string; start: ReplicaStart }>("POST", `/api/vms/${encodeURIComponent(vm)}/replicas`, token, {});
  const replicaUrl = `/api/replicas/${id}`;
  const wasm = request("GET", `${replicaUrl}/module`, token).body;
  const snapshotBytes = request("GET", `${replicaUrl}/snapshot`, token).body;
  const snapshot = decodePortableSnapshot(snapshotBytes);
  post({ t: "opened", vm, host: start.host, generation: start.generation, seq: start.seq, icount: start.icount, moduleBytes: wasm.length, snapshotBytes: snapshotBytes.length });

  let records = 0;
  let bytes = 0;
  const mailbox = new FeedMailbox(replicaUrl, token, BigInt(start.seq), (n, b) => {
    records += n;
    bytes += b;
  });
  const boot: VcpuBoot = {
    mode: "replay",
    wasm,
    globals: start.globals,
    diskBlocks: start.diskBlocks,
    // Reads come from the log (the primary's default): a browser has no disk to read.
    diskReads: "logged",
    // No disk copy of its own either: a replay takes every completion from the log.
    diskLocal: false,
    memoryPagesMax: start.memoryPagesMax,
    maxInstructions: null,
    untilIcount: null,
    memoryWindow: null,
    digestAtOutputs: false,
    markOutputs: false,
    jitterSeed: null,
    progressMs: null,
    goLiveAs: null,
    streamNic: start.streamNic,
    snapshotAtIdle: null,
    restore: snapshot,
    // The mailbox stands in for the shared control array and the ports (FeedMailbox).
    control: undefined as unknown as SharedArrayBuffer,
    port: undefined as unknown as VcpuBoot["port"],
    urgentPort: undefined as unknown as VcpuBoot["urgentPort"],
  };
  const text = new TextDecoder();
  const outbox = {
    postMessage(message: FromVcpu): void {
      switch (message.t) {
        case "consumed":
          post({ t: "progress", seq: message.count, icount: message.icount.toString(), records, bytes });
          break;
        case "out":
          if (message.out.o === "console") post({ t: "console", text: text.decode(message.out.text) });
          break;
        case "digest":
          post({ t: "digest", icount: message.icount.toString(), digest: "sha256:" + hexOf(message.digest), checked: message.checked });
          break;
        default:
          break;
      }
    },
  };
  const result = new Vcpu(boot, outbox, mailbox).run();
  post({ t: "ended", stop: result.stop, message: result.message, icount: result.icount.toString(), reason: mailbox.endReason });
  try {
    request("DELETE", replicaUrl, token);
  } catch {
    // Closed already (its feed ended): nothing to release.
  }
}
