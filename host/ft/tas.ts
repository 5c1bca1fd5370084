// The test-and-set client shared by both cores: one request outstanding at a time, and a
// doubling, capped backoff while the arbiter is unreachable.
//
// The retries have no count limit on purpose: a VM that cannot reach the arbiter "just waits
// until it can" (§2.3). The backoff bounds their rate; the request itself is idempotent
// (TestAndSetRequest), so retrying after a lost answer is safe.

import { assert } from "../errors.js";
import type { TestAndSetRequest, TestAndSetResult } from "./messages.js";

type Phase = "idle" | "requesting" | "backoff" | "done";

export class TestAndSetClient {
  private phase: Phase = "idle";
  private request: TestAndSetRequest | null = null;
  private backoffTicks = 0;
  private waitTicks = 0;
  /** Requests issued so far (first attempt included). */
  attempts = 0;

  constructor(
    private readonly retryMinTicks: number,
    private readonly retryMaxTicks: number,
  ) {}

  get waiting(): boolean {
    return this.phase === "requesting";
  }

  /** Begins contending; returns the request to issue now. */
  start(request: TestAndSetRequest): TestAndSetRequest {
    assert(this.phase === "idle", "test-and-set: started once");
    this.request = request;
    this.phase = "requesting";
    this.attempts = 1;
    return request;
  }

  /** One tick of backoff; returns a request when it is time to retry. */
  tick(): TestAndSetRequest | null {
    if (this.phase !== "backoff") return null;
    this.waitTicks--;
    if (this.waitTicks > 0) return null;
    this.phase = "requesting";
    this.attempts++;
    return this.request;
  }

  /** The answer to the outstanding request: "won"/"lost" are final, "unreachable" backs off. */
  result(result: TestAndSetResult): TestAndSetResult {
    assert(this.phase === "requesting", "test-and-set: a result answers an outstanding request");
    if (result === "unreachable") {
      this.backoffTicks =
        this.backoffTicks === 0 ? this.retryMinTicks : Math.min(this.retryMaxTicks, this.backoffTicks * 2);
      this.waitTicks = this.backoffTicks;
      this.phase = "backoff";
    } else {
      this.phase = "done";
    }
    return result;
  }
}
