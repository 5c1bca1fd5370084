// Shared-token checks for every endpoint that takes one (host API, logging channel).

import { createHash, timingSafeEqual } from "node:crypto";

/**
 * Constant-time: compared as SHA-256 digests, which have equal lengths, so neither the time a
 * refusal takes nor an early length check tells an attacker how much of a token matched.
 */
export function sameSecret(given: string | undefined, expected: string): boolean {
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(given ?? ""), digest(expected));
}
