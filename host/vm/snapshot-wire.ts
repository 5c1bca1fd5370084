// A VM snapshot on the wire, for a live clone (§3.1): the primary's host sends it to the host
// that will run the new backup. v8's structured serialization carries the bigints and byte
// arrays as they are; the receiver checks the shape with zod before anything runs from it,
// so a truncated or foreign body is a clear error, not a vCPU that fails later.

import v8 from "node:v8";
import { z } from "zod";
import type { VmSnapshot } from "./snapshot.js";

/** The largest snapshot body accepted: 4 GiB of guest memory plus device state would not fit a host anyway. */
export const SNAPSHOT_BYTES_MAX = 1024 * 1024 * 1024 + 64 * 1024 * 1024;

const bytes = z.instanceof(Uint8Array);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

const SnapshotSchema = z
  .object({
    icount: z.bigint().min(0n),
    seq: count,
    memory: bytes.refine((m) => m.length % 65536 === 0, "memory is whole 64 KiB pages"),
    globals: z.array(z.union([z.number(), z.bigint()])).max(1 << 16),
    devices: z.object({
      timerPeriodMs: z.number().min(0),
      irqMasked: z.boolean(),
      listening: z.array(z.number().int().min(0).max(65535)).max(1 << 16),
      conns: z
        .array(
          z.object({
            id: count,
            rx: bytes,
            peerClosed: z.boolean(),
            txWindow: count,
            rxTotal: count.optional(),
            txTotal: count.optional(),
            creditTotal: count.optional(),
            unconfirmed: bytes.optional(),
          }),
        )
        .max(1 << 20),
      diskIos: z
        .array(
          z.object({ id: count, tag: z.number().int(), ptr: count, count, write: z.boolean(), block: count, data: bytes.nullable() }),
        )
        .max(1 << 20),
      nextDiskIoId: count,
      memoryPagesMax: count.optional(),
    }),
    stack: z.object({ export: z.enum(["main", "__ls_run"]), data: bytes }).optional(),
    pauseMs: z.number().min(0).optional(),
  })
  .passthrough();

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
