// A host's membership in a standalone cluster service (`lockstep cluster`): it registers by
// heartbeat, `POST /api/hosts/heartbeat {"id","url"}` every HEARTBEAT_MS, with the cluster's
// token. The service counts a host as gone once HOST_SILENCE_MS pass without one, and as back
// with the next. No heartbeat carries state: the service asks each host for that itself
// (GET /api/status), so a heartbeat is small and a lost one costs nothing.

import type { Logger } from "../log.js";
import { fetchJson } from "./http.js";

/** How often a host says it is there. */
export const HEARTBEAT_MS = 500;
/** Without a heartbeat this long, a host is gone (several lost in a row, not one late). */
export const HOST_SILENCE_MS = 3_000;

export interface Registration {
  stop(): void;
}

export function registerWithCluster(options: { clusterUrl: string; id: string; url: string; token: string | null; log: Logger }): Registration {
  const { clusterUrl, id, url, token, log } = options;
  let registered: boolean | null = null;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const beat = async () => {
    try {
      await fetchJson(`${clusterUrl}/api/hosts/heartbeat`, { token, timeoutMs: HEARTBEAT_MS * 2, method: "POST", body: { id, url } });
      if (registered !== true) log.info("registered with the cluster service", { cluster: clusterUrl, event: "registered" });
      registered = true;
    } catch (error) {
      // Said once per outage: the service may be restarting, and hosts run on without it.
      if (registered !== false) log.warn("cluster service unreachable", { cluster: clusterUrl, error: (error as Error).message, event: "clusterUnreachable" });
      registered = false;
    }
    if (!stopped) timer = setTimeout(() => void beat(), HEARTBEAT_MS);
  };
  void beat();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/**
 * A host that joined a cluster service from elsewhere, as the service sees its process: alive
 * while it heartbeats (or while its etcd membership key lives), and not the service's to stop
 * or kill.
 */
export class RemoteHost {
  private lastSeenMs = performance.now();
  /** As its last status said. */
  pid = 0;

  seen(): void {
    this.lastSeenMs = performance.now();
  }

  get alive(): boolean {
    return performance.now() - this.lastSeenMs < HOST_SILENCE_MS;
  }

  /** It runs on its own machine: stopping the service leaves it running. */
  async stop(_graceMs: number): Promise<void> {}
}
