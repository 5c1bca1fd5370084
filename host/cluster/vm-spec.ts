// What a host is asked to run, as the control API receives it (POST /api/vms), and the
// control actions it takes (POST /api/vms/:vm/control). Validated with zod: a bad request is
// a 400 with the field that is wrong, never a crash.

import { z } from "zod";
import { BACKUPS_MAX, TIMEOUT_MS_MAX, TIMEOUT_MS_MIN } from "../ft/config.js";

/** VM names appear in URLs, logs and storage keys: keep them plain. */
export const VM_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export const VmSpecSchema = z
  .object({
    vm: z.string().regex(VM_NAME, "vm: lowercase letters, digits and '-', at most 63"),
    /** An example's name or a path to a .wasm on the host. */
    guest: z.string().min(1).max(4096),
    role: z.enum(["primary", "backup"]),
    /** The pair's generation: 1 for a new VM, one past the last settled one for a restarted VM. */
    generation: z.number().int().min(1).max(2 ** 31).default(1),
    /** Primary: the backup's logging-channel URL, as its host's status names it. */
    backupUrl: z.string().url().startsWith("ws").optional(),
    /**
     * Primary with several backups (`--backups N`): every backup's channel URL, the first being
     * `backupUrl`'s. Outputs then wait for all of them (docs/ft-protocol.md).
     */
    backupUrls: z.array(z.string().url().startsWith("ws")).min(1).max(BACKUPS_MAX).optional(),
    /** Blocks of 4 KiB on the storage server's shared disk; 0: no disk. */
    diskBlocks: z.number().int().min(0).max(1 << 24).default(0),
    /**
     * Disk read data travel in the log ("logged"), or the backup reads the shared disk itself
     * ("backup", §4.2; host/devices/disk-reads.ts). Primary and backup must agree: a backup
     * refuses the other kind of log at its first read (DISK_READS_MISMATCH).
     */
    diskReads: z.enum(["logged", "backup"]).default("logged"),
    /**
     * "shared": the disk is on the storage server. "local": each host keeps a copy of its own
     * (§4.1; docs/local-disks.md) in $LOCKSTEP_LOCAL_DISK_DIR/<host>/<vm>.img, and a clone
     * syncs its copy from the primary's (`diskSyncUrl`) before it starts.
     */
    disk: z.enum(["shared", "local"]).default("shared"),
    /** A clone with a local disk: the primary's one-shot sync source for its copy. */
    diskSyncUrl: z.string().url().startsWith("ws").optional(),
    memoryMib: z.number().int().min(1).max(4096).default(256),
    /** Failure timeout (docs/ft-protocol.md); primary and backup should agree on it. */
    timeoutMs: z.number().int().min(TIMEOUT_MS_MIN).max(TIMEOUT_MS_MAX).default(1000),
    /**
     * Clients reach the guest through this switch (docs/switch.md), whose streams survive a
     * failover; without one, the guest's ports are TCP ports of this host (`ports`).
     */
    switchUrl: z.string().url().startsWith("ws").optional(),
    /** Guest virtual port → real TCP port on this host (0 or absent: a free one). */
    ports: z.record(z.string().regex(/^\d{1,5}$/), z.number().int().min(0).max(65535)).default({}),
  })
  .strict()
  .refine((spec) => spec.role === "backup" || spec.backupUrl !== undefined, {
    message: "a primary needs backupUrl: start the backup first, then name its channel",
    path: ["backupUrl"],
  })
  .refine((spec) => spec.backupUrls === undefined || (spec.role === "primary" && spec.backupUrls[0] === spec.backupUrl && new Set(spec.backupUrls).size === spec.backupUrls.length), {
    message: "backupUrls: a primary's distinct backups, the first one backupUrl",
    path: ["backupUrls"],
  })
  .refine((spec) => spec.disk === "shared" || spec.diskReads === "logged", {
    message: "a local disk takes logged reads: a backup's copy cannot serve its primary's reads",
    path: ["diskReads"],
  });

export type VmSpec = z.infer<typeof VmSpecSchema>;

export const ControlSchema = z
  .object({
    action: z.enum(["power-off", "pause", "resume", "memory-max"]),
    /** memory-max: the new limit in MiB. */
    value: z.number().int().min(1).max(4096).optional(),
  })
  .strict()
  .refine((control) => control.action !== "memory-max" || control.value !== undefined, {
    message: "memory-max needs value (MiB)",
    path: ["value"],
  });

export type ControlRequest = z.infer<typeof ControlSchema>;

/** zod's issues as one line: "backupUrl: Invalid url; role: ...". */
export function describeIssues(error: z.ZodError): string {
  return error.issues.map((issue) => `${issue.path.join(".") || "(body)"}: ${issue.message}`).join("; ");
}
