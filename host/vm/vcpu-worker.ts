// Entry point of a vCPU worker thread: boots the guest from workerData and runs it to the end.
// Mail comes in on boot.port and boot.urgentPort, read synchronously between stretches of guest
// code; the main thread bumps control[CONTROL_MAIL] after each post and wakes the futex on it.
// Everything goes out on parentPort.
import { parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import type { FromVcpu, ToVcpu, VcpuBoot } from "./messages.js";
import { Vcpu, type VcpuMailbox } from "./vcpu.js";

const boot = workerData as VcpuBoot;
const outbox = parentPort!;
const control = new Int32Array(boot.control);
const mailbox: VcpuMailbox = {
  control,
  receive: (port) => receiveMessageOnPort(port === "urgent" ? boot.urgentPort : boot.port)?.message as ToVcpu | undefined,
  wait: (index, value, timeoutMs) => void Atomics.wait(control, index, value, timeoutMs),
};
const result = new Vcpu(boot, outbox, mailbox).run();
outbox.postMessage({ t: "done", result } satisfies FromVcpu);
