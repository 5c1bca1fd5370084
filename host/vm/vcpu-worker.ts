// Entry point of a vCPU worker thread: boots the guest from workerData and runs it to the end.
// Mail comes in on boot.port (read synchronously); everything goes out on parentPort.
import { parentPort, workerData } from "node:worker_threads";
import type { FromVcpu, VcpuBoot } from "./messages.js";
import { Vcpu } from "./vcpu.js";

const boot = workerData as VcpuBoot;
const outbox = parentPort!;
const result = new Vcpu(boot, outbox).run();
outbox.postMessage({ t: "done", result } satisfies FromVcpu);
