// A host's switch to its network: cut off, it drops every connection to its peers (logging
// channels, the switch, the storage server) and makes no new ones until it is connected again.
// This is how an operator, the dashboard or a test isolates a host whose process keeps running
// (a partition, not a crash): its own control API stays up, so that it can be reconnected.

export type NetworkListener = (connected: boolean) => void;

export class NetworkGate {
  private connectedNow = true;
  private readonly listeners = new Set<NetworkListener>();

  get connected(): boolean {
    return this.connectedNow;
  }

  set(connected: boolean): void {
    if (connected === this.connectedNow) return;
    this.connectedNow = connected;
    for (const listener of [...this.listeners]) listener(connected);
  }

  /** Returns the function that removes the listener. */
  onChange(listener: NetworkListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
