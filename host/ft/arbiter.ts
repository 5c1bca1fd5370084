// The test-and-set arbiter as the FT drivers see it (§2.3). The storage server's registers are
// the default; whatever the backend, an answer that does not come is `unreachable`, and the
// core then waits and retries: it never goes live on a guess.

import type { StorageClient } from "../storage/client.js";
import type { TestAndSetRequest, TestAndSetResult } from "./messages.js";

export interface Arbiter {
  testAndSet(request: TestAndSetRequest): Promise<TestAndSetResult>;
}

export function storageArbiter(client: StorageClient): Arbiter {
  return {
    async testAndSet(request) {
      if (!client.reachable) return "unreachable";
      try {
        const answer = await client.testAndSet(request.vmId, request.generation, request.owner);
        return answer.won ? "won" : "lost";
      } catch {
        // Timed out, disconnected, busy: the register may or may not be set. The core retries,
        // and the register is idempotent per owner, so a retry of a win still wins.
        return "unreachable";
      }
    },
  };
}

/**
 * An arbiter behind the host's network switch (host/network-gate.ts): a host that an operator
 * cut off reaches no arbiter, like it reaches no peer. The storage client is cut off by the
 * same switch; an arbiter elsewhere (etcd) must be too, or a partitioned host could win the
 * register and go live where no client can reach it while its reachable peer halts.
 */
export function gatedArbiter(arbiter: Arbiter, network: { readonly connected: boolean }): Arbiter {
  return {
    async testAndSet(request) {
      return network.connected ? arbiter.testAndSet(request) : "unreachable";
    },
  };
}
