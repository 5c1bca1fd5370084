// Development entry of the vCPU worker when the host runs from its TypeScript source (vitest,
// tsx): a worker does not inherit the parent's loaders, so register tsx here first.
import { register } from "tsx/esm/api";

register();
await import(new URL("./vcpu-worker.ts", import.meta.url).href);
