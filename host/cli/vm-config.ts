// The VM configuration a log header carries: what replay must know to rebuild the machine.
import { z } from "zod";
import { LockstepError } from "../errors.js";

const schema = z.object({
  guest: z.string().max(256),
  diskBlocks: z.number().int().min(0).max(1 << 24),
  memoryPagesMax: z.number().int().min(1).max(65536),
});

export type VmConfig = z.infer<typeof schema>;

export const VmConfig = {
  parseJson(text: string): VmConfig {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new LockstepError("LOG_INVALID", "log header config is not JSON");
    }
    const parsed = schema.safeParse(value);
    if (!parsed.success) throw new LockstepError("LOG_INVALID", `log header config: ${parsed.error.issues[0]?.message}`);
    return parsed.data;
  },
};
