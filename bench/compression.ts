// Log compression (issue 5): the kv guest under FT on the embedded cluster (`lockstep up`, real
// processes on loopback, no switch), once with permessage-deflate on the logging channel and
// once with `--log-compression off`, alternating so that drift in the machine's speed hits both
// alike. Per run: logging bandwidth as TCP carried it (wire bytes) and as channel frames,
// requests/s, the Output Rule's hold, and the CPU time of the primary's and the backup's host
// processes per request (deflate runs on the primary's host, inflate on the backup's).

import fs from "node:fs";
import zlib from "node:zlib";
import { type UpProcess } from "../host/cluster/up-process.js";
import { COMPRESS_FRAME_BYTES_MIN } from "../host/ft/channel.js";
import { encodeChannelMessage } from "../protocol/channel-frames.js";
import { bitsPerSecond, type PrimaryFigures, sampleWhile, withCluster } from "./cluster.js";
import { percentile, redisBenchmark } from "./kv-load.js";
import { kvUnderLoad } from "./vm.js";

const ROUNDS = 3;
const KEYS = 10_000;
/** Keys written first, so that the reads find values (not measured). */
const FILL = ["-t", "set", "-n", String(KEYS), "-r", String(KEYS), "-d", "64", "-c", "50"];
/**
 * Two workloads. read-heavy: GETs of random keys, the common case of a cache or a key-value
 * store; what the log carries is the requests (inputs) and their timing, not the replies.
 * mixed: the SET/GET/INCR load of bench/cluster.ts.
 */
const WORKLOADS: { name: string; args: string[] }[] = [
  { name: "read-heavy (GET, 50 clients)", args: ["-t", "get", "-n", "40000", "-r", String(KEYS), "-c", "50"] },
  { name: "mixed (SET/GET/INCR, 50 clients)", args: ["-t", "set,get,incr", "-n", "20000", "-r", String(KEYS), "-d", "64", "-c", "50"] },
];
/** Linux's USER_HZ: /proc/PID/stat counts CPU time in these. */
const CLOCK_TICKS_PER_SECOND = 100;

export interface CompressionRun {
  workload: string;
  compression: boolean;
  /** What the status API said was negotiated: must match `compression`. */
  negotiated: boolean;
  wireMbitPerSecond: number;
  frameMbitPerSecond: number;
  requestsPerSecond: number;
  outputHoldMsP50: number;
  outputHoldMsP99: number;
  /** CPU time of the host processes per request, in microseconds. */
  primaryHostCpuUsPerRequest: number;
  backupHostCpuUsPerRequest: number;
}

export interface CompressionWorkloadResult {
  workload: string;
  runs: CompressionRun[];
  wireMbitOn: number;
  wireMbitOff: number;
  frameMbit: number;
  /**
   * Wire bytes per request with compression over without: the saving itself, which Mbit/s
   * hides when the two runs serve different request rates.
   */
  wireBytesPerRequestOnOverOff: number;
  /** Median requests/s with compression over median without, same run. */
  throughputOnOverOff: number;
  primaryCpuOnOverOff: number;
}

/** A process's CPU time so far, in seconds (user + system). */
function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command (which may hold spaces) start at ") ": utime and stime are 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

async function measure(up: UpProcess, workload: { name: string; args: string[] }, compression: boolean): Promise<CompressionRun> {
  const ready = await up.ready;
  const vm = ready.vms[0]!;
  const pidOf = (id: string) => ready.hosts.find((h) => h.id === id)!.pid;
  const address = vm.ports["6379"]!;
  const cpuBefore = [cpuSeconds(pidOf(vm.primary)), cpuSeconds(pidOf(vm.backup))];
  const run = await sampleWhile(up, redisBenchmark(address, workload.args));
  const cpuAfter = [cpuSeconds(pidOf(vm.primary)), cpuSeconds(pidOf(vm.backup))];
  const requests = run.value.rps * run.seconds;
  const last: PrimaryFigures = run.samples.at(-1)!;
  return {
    workload: workload.name,
    compression,
    negotiated: last.logCompression,
    wireMbitPerSecond: bitsPerSecond(run.samples, run.seconds, "wire") / 1e6,
    frameMbitPerSecond: bitsPerSecond(run.samples, run.seconds, "frame") / 1e6,
    requestsPerSecond: run.value.rps,
    outputHoldMsP50: last.outputHoldMsP50 ?? NaN,
    outputHoldMsP99: last.outputHoldMsP99 ?? NaN,
    primaryHostCpuUsPerRequest: ((cpuAfter[0]! - cpuBefore[0]!) * 1e6) / requests,
    backupHostCpuUsPerRequest: ((cpuAfter[1]! - cpuBefore[1]!) * 1e6) / requests,
  };
}

/** One deflate setting tried on a recorded log, as permessage-deflate would apply it. */
interface Setting {
  level: number;
  windowBits: number;
  memLevel: number;
  /** Context takeover: each frame compressed with the frames before it in the window. */
  takeover: boolean;
  /** Frames shorter than this are sent as they are. */
  thresholdBytes: number;
}

export interface SweepRow extends Setting {
  /** Wire bytes (compressed payloads, raw small frames) / frame bytes. */
  ratio: number;
  /** Process CPU time (main thread and zlib's thread pool) per compressed frame. */
  cpuUsPerFrame: number;
  framesCompressed: number;
}

const CHOSEN: Setting = { level: 1, windowBits: 15, memLevel: 8, takeover: true, thresholdBytes: COMPRESS_FRAME_BYTES_MIN };
const SWEEP: Setting[] = [
  CHOSEN,
  { ...CHOSEN, level: 6 },
  { ...CHOSEN, level: 9 },
  { ...CHOSEN, windowBits: 11 },
  { ...CHOSEN, memLevel: 9 },
  { ...CHOSEN, takeover: false },
  { ...CHOSEN, thresholdBytes: 0 },
  { ...CHOSEN, thresholdBytes: 64 },
  { ...CHOSEN, thresholdBytes: 256 },
  { ...CHOSEN, thresholdBytes: 512 },
  { ...CHOSEN, thresholdBytes: 1024 },
];

/** Compresses `frames` in order as a permessage-deflate sender would (sync flush per message). */
async function compressAll(frames: Uint8Array[], setting: Setting): Promise<SweepRow> {
  const options = { level: setting.level, windowBits: setting.windowBits, memLevel: setting.memLevel };
  let stream = zlib.createDeflateRaw(options);
  let wire = 0;
  let total = 0;
  let compressed = 0;
  const cpuBefore = process.cpuUsage();
  for (const frame of frames) {
    total += frame.length;
    if (frame.length < setting.thresholdBytes) {
      wire += frame.length;
      continue;
    }
    if (!setting.takeover) {
      stream.close();
      stream = zlib.createDeflateRaw(options);
    }
    const chunks: Buffer[] = [];
    const onData = (chunk: Buffer) => chunks.push(chunk);
    stream.on("data", onData);
    stream.write(frame);
    await new Promise<void>((resolve) => stream.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve()));
    stream.off("data", onData);
    // permessage-deflate drops the 4-byte empty block (00 00 ff ff) that ends each flush.
    wire += Buffer.concat(chunks).length - 4;
    compressed++;
  }
  const cpu = process.cpuUsage(cpuBefore);
  stream.close();
  return { ...setting, ratio: wire / total, cpuUsPerFrame: (cpu.user + cpu.system) / Math.max(1, compressed), framesCompressed: compressed / frames.length };
}

/** The settings above on the frames of one recorded kv log under the read-heavy load. */
export async function runSettingsSweep(): Promise<{ frames: number; frameBytesP50: number; rows: SweepRow[] }> {
  const recorded = await kvUnderLoad("record", WORKLOADS[0]!.args);
  const frames: Uint8Array[] = [];
  let at = 0;
  for (const size of recorded.batchSizes) {
    frames.push(encodeChannelMessage({ t: "entries", vmId: "kv", generation: 1, records: recorded.records.slice(at, at + size) }));
    at += size;
  }
  const rows: SweepRow[] = [];
  for (const setting of SWEEP) rows.push(await compressAll(frames, setting));
  return { frames: frames.length, frameBytesP50: percentile(frames.map((f) => f.length), 0.5), rows };
}

const wireBytesPerRequest = (run: CompressionRun) => (run.wireMbitPerSecond * 1e6) / 8 / run.requestsPerSecond;

export async function runCompressionBench(): Promise<CompressionWorkloadResult[]> {
  const runs: CompressionRun[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    // Alternate which goes first, so that neither always runs on a warmer (or busier) machine.
    const order = round % 2 === 0 ? [true, false] : [false, true];
    for (const compression of order) {
      await withCluster(["--guest", "kv", "--no-switch", "--log-compression", compression ? "on" : "off"], async (up) => {
        await redisBenchmark((await up.ready).vms[0]!.ports["6379"]!, FILL);
        for (const workload of WORKLOADS) runs.push(await measure(up, workload, compression));
      });
    }
  }
  return WORKLOADS.map(({ name }) => {
    const of = (on: boolean) => runs.filter((r) => r.workload === name && r.compression === on);
    const median = (rs: CompressionRun[], f: (r: CompressionRun) => number) => percentile(rs.map(f), 0.5);
    return {
      workload: name,
      runs: runs.filter((r) => r.workload === name),
      wireMbitOn: median(of(true), (r) => r.wireMbitPerSecond),
      wireMbitOff: median(of(false), (r) => r.wireMbitPerSecond),
      frameMbit: median([...of(true), ...of(false)], (r) => r.frameMbitPerSecond),
      wireBytesPerRequestOnOverOff: median(of(true), wireBytesPerRequest) / median(of(false), wireBytesPerRequest),
      throughputOnOverOff: median(of(true), (r) => r.requestsPerSecond) / median(of(false), (r) => r.requestsPerSecond),
      primaryCpuOnOverOff: median(of(true), (r) => r.primaryHostCpuUsPerRequest) / median(of(false), (r) => r.primaryHostCpuUsPerRequest),
    };
  });
}

export function printCompressionBench(results: CompressionWorkloadResult[]): void {
  for (const r of results) {
    console.log(`kv ${r.workload}:`);
    for (const run of r.runs) {
      console.log(
        `  compression ${run.compression ? "on " : "off"} (negotiated ${run.negotiated}): wire ${run.wireMbitPerSecond.toFixed(2)} Mbit/s, frames ${run.frameMbitPerSecond.toFixed(2)} Mbit/s, ` +
          `${Math.round(run.requestsPerSecond)} requests/s, hold p50 ${run.outputHoldMsP50} p99 ${run.outputHoldMsP99} ms, ` +
          `${wireBytesPerRequest(run).toFixed(1)} wire bytes per request, ` +
          `CPU per request: primary's host ${run.primaryHostCpuUsPerRequest.toFixed(0)} us, backup's host ${run.backupHostCpuUsPerRequest.toFixed(0)} us`,
      );
    }
    console.log(
      `  logging bandwidth on the wire (medians): ${r.wireMbitOff.toFixed(2)} → ${r.wireMbitOn.toFixed(2)} Mbit/s with compression (frames ${r.frameMbit.toFixed(2)} Mbit/s); ` +
        `wire bytes per request compressed / uncompressed ${r.wireBytesPerRequestOnOverOff.toFixed(3)}; ` +
        `requests/s compressed / uncompressed ${r.throughputOnOverOff.toFixed(3)}; primary's host CPU per request ${r.primaryCpuOnOverOff.toFixed(3)}×`,
    );
  }
}

export function printSettingsSweep(sweep: Awaited<ReturnType<typeof runSettingsSweep>>): void {
  console.log(`deflate settings on a recorded kv log (read-heavy): ${sweep.frames} entries frames, median ${sweep.frameBytesP50} bytes`);
  for (const r of sweep.rows) {
    console.log(
      `  level ${r.level}, window ${r.windowBits} bits, memLevel ${r.memLevel}, takeover ${r.takeover ? "on " : "off"}, threshold ${String(r.thresholdBytes).padStart(4)} B: ` +
        `wire/frames ${r.ratio.toFixed(3)}, ${r.cpuUsPerFrame.toFixed(1)} us CPU per compressed frame, ${(r.framesCompressed * 100).toFixed(0)} % of frames compressed`,
    );
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  printSettingsSweep(await runSettingsSweep());
  printCompressionBench(await runCompressionBench());
}
