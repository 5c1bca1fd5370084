// The longest silence from the peer so far, in ms: how close a pair came to the failure
// timeout (§2.3). Shown by the status API, so an operator can tell whether a shorter timeout
// would have fired falsely on this machine.

export class SilenceMeter {
  private lastHeardMs: number | null = null;
  private maxMs = 0;

  /** A connection to the peer is up: silence counts from here. */
  connected(nowMs: number): void {
    this.lastHeardMs = nowMs;
  }

  /** Anything arrived from the peer. */
  heard(nowMs: number): void {
    if (this.lastHeardMs !== null) this.maxMs = Math.max(this.maxMs, nowMs - this.lastHeardMs);
    this.lastHeardMs = nowMs;
  }

  /** The pair is over (a failover, a stop): later silence is not a peer's. */
  stop(): void {
    this.lastHeardMs = null;
  }

  get longestMs(): number {
    return Math.round(this.maxMs);
  }
}
