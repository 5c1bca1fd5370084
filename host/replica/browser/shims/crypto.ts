// node:crypto for the browser replica's bundle: only what the vCPU uses. sha256 from
// @noble/hashes (synchronous, unlike crypto.subtle, because the vCPU digests mid-execution).
import { sha256 } from "@noble/hashes/sha2.js";

export function createHash(algorithm: string): { update(data: Uint8Array): unknown; digest(): Uint8Array } {
  if (algorithm !== "sha256") throw new Error(`the browser replica has no ${algorithm}`);
  const hash = sha256.create();
  return {
    update(data: Uint8Array) {
      hash.update(data);
      return this;
    },
    digest: () => hash.digest(),
  };
}

/** getRandomValues fills at most 64 KiB a call. */
export function randomFillSync(target: Uint8Array): Uint8Array {
  for (let offset = 0; offset < target.length; offset += 65536) crypto.getRandomValues(target.subarray(offset, offset + 65536));
  return target;
}
