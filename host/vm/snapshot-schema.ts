// The shape of a VM snapshot (snapshot.ts), checked before anything runs from one that came
// over a network: a live clone's (snapshot-wire.ts), a browser replica's (snapshot-portable.ts).

import { z } from "zod";

const bytes = z.instanceof(Uint8Array);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const SnapshotSchema = z
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
