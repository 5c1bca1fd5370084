// Lockstep guest SDK. A guest's entry file does:
//
//     export { __ls_irq, __ls_run } from "../../sdk/index";
//     import { print, startTimer } from "../../sdk/index";
//     export function main(): void { ... }
//
// Everything a guest needs is exported here; the raw ABI lives in ./abi.

export { __ls_irq, __ls_run, afterEvents, eventsPending, dispatchPending, eventCount, eventRefusals } from "./events";
export { halt, maskInterrupts, unmaskInterrupts, restoreInterrupts, exit } from "./system";
export { monotonicNs, monotonicMs, wallNs, wallMs } from "./clock";
export { randomFill, randomFillRaw, randomBytes, randomU32, randomU64, randomF64 } from "./random";
export { print, write, writeBytes, writeRaw } from "./console";
export { startTimer, stopTimer, timerPeriod, timerTickCount } from "./timer";
export { Connection, listen, connectionCount } from "./net";
export {
  BLOCK_SIZE, DiskRequest, diskBlocks, readBlocks, writeBlocks, submit as submitDisk, waitFor,
  diskIosInFlight, diskIosQueued,
} from "./disk";
export { ByteQueue } from "./bytes";
