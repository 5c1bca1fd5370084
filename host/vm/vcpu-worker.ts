// Entry point of a vCPU worker thread: boots the guest from workerData and runs it to the end.
import { workerData } from "node:worker_threads";
import type { FromVcpu, VcpuBoot } from "./messages.js";
import { Vcpu } from "./vcpu.js";

const boot = workerData as VcpuBoot;
const result = new Vcpu(boot).run();
boot.port.postMessage({ t: "done", result } satisfies FromVcpu);
