// The browser replica's mailbox (VcpuMailbox): the vCPU asks for mail when it has replayed all
// it has; this mailbox then fetches the next stretch of the log from the cluster service with a
// synchronous request (sessions.ts answers within REPLICA_POLL_MS, records or not). A worker
// that runs Wasm never returns to its event loop, so a WebSocket could not be read here.

import { decodeRecords } from "../../../protocol/codec.js";
import { CONTROL_CPU_SHARE, CONTROL_MAIL, CONTROL_SLOTS, CPU_SHARE_FULL, type ToVcpu } from "../../vm/messages.js";
import type { VcpuMailbox } from "../../vm/vcpu.js";
import { request } from "./http.js";

/** Messages fetched and not yet read by the vCPU: one answer's worth at most, then it reads. */
const INBOX_MAX = 64;

export class FeedMailbox implements VcpuMailbox {
  /** Not shared: only this thread reads or writes it. */
  readonly control = new Int32Array(CONTROL_SLOTS);
  private readonly inbox: ToVcpu[] = [];
  private nextSeq: bigint;
  /** Why the log ended, once it has: no record will follow. */
  endReason: string | null = null;

  constructor(
    private readonly replicaUrl: string,
    private readonly token: string | null,
    startSeq: bigint,
    /** Told of each stretch fetched: records and bytes so far. */
    private readonly onFetched: (records: number, bytes: number) => void,
  ) {
    this.nextSeq = startSeq;
    this.control[CONTROL_CPU_SHARE] = CPU_SHARE_FULL;
  }

  receive(port: "urgent" | "device"): ToVcpu | undefined {
    // Nobody sends a replica controls: the page stops it by terminating the worker.
    if (port === "urgent") return undefined;
    return this.inbox.shift();
  }

  wait(index: number, value: number, _timeoutMs: number): void {
    if (index !== CONTROL_MAIL || this.control[CONTROL_MAIL] !== value) return;
    if (this.endReason !== null || this.inbox.length >= INBOX_MAX) return;
    this.fetchMore();
  }

  private fetchMore(): void {
    let answer: { body: Uint8Array; end: string | null };
    try {
      answer = request("GET", `${this.replicaUrl}/records?from=${this.nextSeq}`, this.token);
    } catch (error) {
      return this.end((error as Error).message);
    }
    if (answer.body.length > 0) {
      // Checks every frame's checksum and that no record is missing.
      const records = decodeRecords(answer.body, { expectSeq: this.nextSeq });
      this.nextSeq += BigInt(records.length);
      this.inbox.push({ t: "records", records });
      this.control[CONTROL_MAIL]!++;
      this.onFetched(records.length, answer.body.length);
    }
    if (answer.end !== null && answer.body.length === 0) this.end(answer.end);
  }

  private end(reason: string): void {
    this.endReason = reason;
    this.inbox.push({ t: "records_end" });
    this.control[CONTROL_MAIL]!++;
  }
}
