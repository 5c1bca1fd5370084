// A VM snapshot on the wire, for a live clone (§3.1): the primary's host sends it to the host
// that will run the new backup. v8's structured serialization carries the bigints and byte
// arrays as they are; the receiver checks the shape with zod before anything runs from it,
// so a truncated or foreign body is a clear error, not a vCPU that fails later.

import v8 from "node:v8";
import { SnapshotSchema } from "./snapshot-schema.js";
import type { VmSnapshot } from "./snapshot.js";

/** The largest snapshot body accepted: 4 GiB of guest memory plus device state would not fit a host anyway. */
export const SNAPSHOT_BYTES_MAX = 1024 * 1024 * 1024 + 64 * 1024 * 1024;

/** The clone request: what to run, and where it stands. */
export interface CloneBody<Spec> {
  spec: Spec;
  snapshot: VmSnapshot;
}

export function encodeClone<Spec>(body: CloneBody<Spec>): Buffer {
  return v8.serialize(body);
}

/** Throws an Error naming what is wrong; `parseSpec` checks the spec part. */
export function decodeClone<Spec>(buffer: Buffer, parseSpec: (spec: unknown) => Spec): CloneBody<Spec> {
  let value: unknown;
  try {
    value = v8.deserialize(buffer);
  } catch (error) {
    throw new Error(`the clone body does not decode: ${(error as Error).message}`);
  }
  if (typeof value !== "object" || value === null) throw new Error("the clone body is not an object");
  const { spec, snapshot } = value as Record<string, unknown>;
  const parsed = SnapshotSchema.safeParse(snapshot);
  if (!parsed.success) {
    throw new Error(`the clone's snapshot is malformed: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  }
  return { spec: parseSpec(spec), snapshot: parsed.data as VmSnapshot };
}
