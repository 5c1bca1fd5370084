// FT on the embedded cluster, real processes on loopback (`lockstep up`): logging bandwidth for
// counter, cpu and kv under load, execution lag under load, what the Output Rule adds to an
// output, kv throughput with FT against the same guest without it, and failover time from a
// kill -9 of the primary's host to the backup live. Ratios are against baselines of this run.

import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { UpProcess } from "../host/cluster/up-process.js";
import { percentile, redisBenchmark, withKvDirect } from "./kv-load.js";
import { PROJECT_ROOT } from "../host/vm/guest.js";

/** The default failure timeout (host/ft/config.ts): failover is reported as a multiple of it. */
const TIMEOUT_MS = 1000;
const FAILOVER_RUNS = 5;
const STATUS_SAMPLE_MS = 100;

export interface ClusterBenchResult {
  counterLogBitsPerSecond: number;
  cpuLogBitsPerSecond: number;
  kvLogBitsPerSecond: number;
  cpuFtOverNonFt: number;
  /** FT against two non-FT runs at once: what this machine gives two busy threads. */
  cpuFtOverTwinNonFt: number;
  cpuSecondsFt: number[];
  cpuSecondsNonFt: number[];
  cpuSecondsTwinNonFt: number[];
  kvRequestsPerSecondFt: number;
  kvRequestsPerSecondNonFt: number;
  lagMsP50: number;
  lagMsP99: number;
  outputHoldMsP50: number;
  outputHoldMsP99: number;
  failoverMsP50: number;
  failoverMsAll: number[];
  /** From the backup going live to the VM protected again by a clone on another host. */
  restoreMsP50: number;
  restoreMsAll: number[];
}


export interface PrimaryFigures {
  logBytesSent: number;
  /** After compression, with WebSocket headers: what the network carries. */
  logWireBytesSent: number;
  logCompression: boolean;
  lagMs: number;
  outputHoldMsP50: number | null;
  outputHoldMsP99: number | null;
}

async function primaryFigures(up: UpProcess): Promise<PrimaryFigures | null> {
  const vm = (await up.status()).vms[0];
  return (vm?.primary as unknown as PrimaryFigures | null | undefined) ?? null;
}

/** Samples the primary's figures every STATUS_SAMPLE_MS until `until` settles. */
export async function sampleWhile<T>(up: UpProcess, until: Promise<T>): Promise<{ value: T; samples: PrimaryFigures[]; seconds: number }> {
  const samples: PrimaryFigures[] = [];
  let done = false;
  const started = performance.now();
  const value = until.finally(() => (done = true));
  while (!done) {
    const figures = await primaryFigures(up);
    if (figures !== null) samples.push(figures);
    await Promise.race([value, new Promise((resolve) => setTimeout(resolve, STATUS_SAMPLE_MS))]);
  }
  const figures = await primaryFigures(up);
  if (figures !== null) samples.push(figures);
  return { value: await value, samples, seconds: (performance.now() - started) / 1000 };
}

/** Logging bandwidth over the samples: channel-frame bytes, or `wire` bytes as TCP carried them. */
export function bitsPerSecond(samples: PrimaryFigures[], seconds: number, bytes: "frame" | "wire" = "frame"): number {
  if (samples.length < 2 || seconds <= 0) return 0;
  const sent = (s: PrimaryFigures) => (bytes === "wire" ? s.logWireBytesSent : s.logBytesSent);
  return ((sent(samples.at(-1)!) - sent(samples[0]!)) * 8) / seconds;
}


/** redis-benchmark's default 50 clients: enough concurrency that group commit and batched acks pay. */
const KV_LOAD = ["-t", "set,get,incr", "-n", "30000", "-c", "50"];
const CPU_RUNS = 3;

/**
 * The cpu guest's compute time: from its first checksum line (`hash ...`) to its last
 * (`checksum ...`), which spans sieve, n-body, fib and alloc and leaves out start-up.
 */
async function cpuSecondsWithoutFt(): Promise<number> {
  const child = spawn(process.execPath, [path.join(PROJECT_ROOT, "dist/host/cli/main.js"), "run", "cpu"], {
    cwd: PROJECT_ROOT,
    stdio: ["ignore", "pipe", "inherit"],
  });
  let first = NaN;
  let last = NaN;
  createInterface({ input: child.stdout }).on("line", (line) => {
    if (line.startsWith("hash ")) first = performance.now();
    if (line.startsWith("checksum ")) last = performance.now();
  });
  const code = await new Promise<number | null>((resolve) => child.once("exit", resolve));
  if (code !== 0 || Number.isNaN(first) || Number.isNaN(last)) throw new Error(`lockstep run cpu failed (${code})`);
  return (last - first) / 1000;
}

/** The same span under FT, from the primary host's timestamps on the released console lines. */
async function cpuSecondsWithFt(): Promise<{ seconds: number; samples: PrimaryFigures[]; logSeconds: number }> {
  return withCluster(["--guest", "cpu"], async (up) => {
    const from = up.seen;
    const run = await sampleWhile(up, up.event((l) => l.event === "stopped", "cpu finishing", from));
    const consoleAt = (prefix: string) => {
      const line = up.since(from).find((l) => l.msg === "console" && typeof l.text === "string" && l.text.startsWith(prefix));
      if (line === undefined) throw new Error(`the cpu guest printed no "${prefix}" line`);
      return Date.parse(String(line.ts));
    };
    return { seconds: (consoleAt("checksum ") - consoleAt("hash ")) / 1000, samples: run.samples, logSeconds: run.seconds };
  });
}

export async function withCluster<T>(args: string[], body: (up: UpProcess) => Promise<T>): Promise<T> {
  const up = new UpProcess(args);
  try {
    await up.ready;
    return await body(up);
  } finally {
    await up.stop();
  }
}

export async function runClusterBench(): Promise<ClusterBenchResult> {
  // counter: idle but for its 100 Hz timer, for 5 s.
  const counter = await withCluster(["--guest", "counter"], async (up) => {
    await up.until(() => (up.ticks().length >= 20 ? true : undefined), "ticks");
    return sampleWhile(up, new Promise((resolve) => setTimeout(resolve, 5000)));
  });

  // cpu: compute-bound until it exits, alternating FT and non-FT runs so that drift in the
  // machine's speed hits both alike. Its log is almost empty: it has no inputs.
  const cpuSecondsFt: number[] = [];
  const cpuSecondsNonFt: number[] = [];
  // FT keeps two CPUs busy (the primary and the backup's replay). On a shared 2-vCPU machine two
  // busy threads slow each other, so a second baseline runs two non-FT guests at once.
  const cpuSecondsTwinNonFt: number[] = [];
  let cpu = { samples: [] as PrimaryFigures[], seconds: 0 };
  for (let i = 0; i < CPU_RUNS; i++) {
    cpuSecondsNonFt.push(await cpuSecondsWithoutFt());
    cpuSecondsTwinNonFt.push(...(await Promise.all([cpuSecondsWithoutFt(), cpuSecondsWithoutFt()])));
    const ft = await cpuSecondsWithFt();
    cpuSecondsFt.push(ft.seconds);
    cpu = { samples: ft.samples, seconds: ft.logSeconds };
  }

  // kv under redis-benchmark: the receive- and transmit-heavy case, and lag under load.
  const kv = await withCluster(["--guest", "kv", "--no-switch"], async (up) => {
    const address = (await up.ready).vms[0]!.ports["6379"]!;
    return sampleWhile(up, redisBenchmark(address, KV_LOAD).then((f) => f.rps));
  });
  const kvNonFt = await withKvDirect(async (address) => (await redisBenchmark(address, KV_LOAD)).rps);

  const failovers: number[] = [];
  const restores: number[] = [];
  for (let i = 0; i < FAILOVER_RUNS; i++) {
    failovers.push(
      await withCluster(["--guest", "counter"], async (up) => {
        const ready = await up.ready;
        const vm = ready.vms[0]!;
        await up.until(() => (up.ticks().length >= 20 ? true : undefined), "ticks");
        const from = up.seen;
        const killedAt = performance.now();
        process.kill(ready.hosts.find((h) => h.id === vm.primary)!.pid, "SIGKILL");
        await up.event((l) => l.event === "wentLive" && l.host === vm.backup, "go-live", from);
        const failoverMs = performance.now() - killedAt;
        await up.event((l) => l.event === "redundancyRestored", "redundancy restored", from);
        restores.push(performance.now() - killedAt - failoverMs);
        return failoverMs;
      }),
    );
  }

  const lags = [...cpu.samples, ...kv.samples].map((s) => s.lagMs);
  const last = kv.samples.at(-1);
  return {
    counterLogBitsPerSecond: bitsPerSecond(counter.samples, counter.seconds),
    cpuLogBitsPerSecond: bitsPerSecond(cpu.samples, cpu.seconds),
    // Throughput is work over time and the work is the same: the ratio of medians of times.
    cpuFtOverNonFt: percentile(cpuSecondsNonFt, 0.5) / percentile(cpuSecondsFt, 0.5),
    cpuFtOverTwinNonFt: percentile(cpuSecondsTwinNonFt, 0.5) / percentile(cpuSecondsFt, 0.5),
    cpuSecondsFt,
    cpuSecondsNonFt,
    cpuSecondsTwinNonFt,
    kvLogBitsPerSecond: bitsPerSecond(kv.samples, kv.seconds),
    kvRequestsPerSecondFt: kv.value,
    kvRequestsPerSecondNonFt: kvNonFt,
    lagMsP50: percentile(lags, 0.5),
    lagMsP99: percentile(lags, 0.99),
    outputHoldMsP50: last?.outputHoldMsP50 ?? NaN,
    outputHoldMsP99: last?.outputHoldMsP99 ?? NaN,
    failoverMsP50: percentile(failovers, 0.5),
    failoverMsAll: failovers,
    restoreMsP50: percentile(restores, 0.5),
    restoreMsAll: restores,
  };
}

export function printClusterBench(r: ClusterBenchResult): void {
  const mbit = (bits: number) => `${(bits / 1e6).toFixed(3)} Mbit/s`;
  console.log(`logging bandwidth: counter ${mbit(r.counterLogBitsPerSecond)}, cpu ${mbit(r.cpuLogBitsPerSecond)}, kv under redis-benchmark ${mbit(r.kvLogBitsPerSecond)}`);
  const seconds = (values: number[]) => values.map((v) => v.toFixed(2)).join(", ");
  console.log(`cpu throughput with FT / without FT: ${r.cpuFtOverNonFt.toFixed(3)} (seconds FT ${seconds(r.cpuSecondsFt)}; without ${seconds(r.cpuSecondsNonFt)})`);
  console.log(
    `cpu throughput with FT / two non-FT runs at once: ${r.cpuFtOverTwinNonFt.toFixed(3)} (seconds, two at once: ${seconds(r.cpuSecondsTwinNonFt)})`,
  );
  console.log(
    `kv requests/s with FT / without FT: ${(r.kvRequestsPerSecondFt / r.kvRequestsPerSecondNonFt).toFixed(3)} (${Math.round(r.kvRequestsPerSecondFt)} / ${Math.round(r.kvRequestsPerSecondNonFt)})`,
  );
  console.log(`execution lag under load (cpu, kv): p50 ${r.lagMsP50.toFixed(1)} ms, p99 ${r.lagMsP99.toFixed(1)} ms`);
  console.log(`Output Rule hold on kv outputs (last 1024): p50 ${r.outputHoldMsP50} ms, p99 ${r.outputHoldMsP99} ms`);
  console.log(
    `failover, kill -9 of the primary's host → backup live: p50 ${Math.round(r.failoverMsP50)} ms = ${(r.failoverMsP50 / TIMEOUT_MS).toFixed(2)} × the ${TIMEOUT_MS} ms timeout (runs: ${r.failoverMsAll.map(Math.round).join(", ")})`,
  );
  console.log(
    `redundancy restored, backup live → protected again by a clone on another host: p50 ${Math.round(r.restoreMsP50)} ms (runs: ${r.restoreMsAll.map(Math.round).join(", ")})`,
  );
}

if (import.meta.url === `file://${process.argv[1]}`) printClusterBench(await runClusterBench());
