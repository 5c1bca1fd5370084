// More than one backup (`lockstep up --backups N`), real processes on loopback: kv under
// redis-benchmark with one backup and with two (runs alternate, so that drift in the machine's
// speed hits both alike), against the same guest without FT in this run; the Output Rule's hold
// on an output with each; and what losing one of two backups costs: from kill -9 of its host
// to the primary's renewal (outputs wait meanwhile), and to two backups again.

import { percentile, redisBenchmark, withKvDirect, type BenchmarkFigures } from "./kv-load.js";
import { type PrimaryFigures, sampleWhile, withCluster } from "./cluster.js";

/** redis-benchmark's default 50 clients, as in bench/cluster.ts. */
const KV_LOAD = ["-t", "set,get,incr", "-n", "20000", "-c", "50"];
const ROUNDS = 3;
const RENEW_RUNS = 3;

export interface BackupsRun {
  backups: number;
  figures: BenchmarkFigures;
  outputHoldMsP50: number;
  outputHoldMsP99: number;
}

export interface BackupsBenchResult {
  runs: BackupsRun[];
  nonFt: BenchmarkFigures[];
  /** kill -9 of one of two backups' host → the primary renewed (outputs held meanwhile). */
  renewMs: number[];
  /** The same kill → two backups again (a clone connected). */
  restoreMs: number[];
}

async function kvWith(backups: number): Promise<BackupsRun> {
  return withCluster(["--guest", "kv", "--no-switch", "--hosts", String(backups + 1), "--backups", String(backups)], async (up) => {
    const address = (await up.ready).vms[0]!.ports["6379"]!;
    const run = await sampleWhile(up, redisBenchmark(address, KV_LOAD));
    const last: PrimaryFigures | undefined = run.samples.at(-1);
    return { backups, figures: run.value, outputHoldMsP50: last?.outputHoldMsP50 ?? NaN, outputHoldMsP99: last?.outputHoldMsP99 ?? NaN };
  });
}

async function loseOneBackup(): Promise<{ renewMs: number; restoreMs: number }> {
  return withCluster(["--guest", "kv", "--no-switch", "--hosts", "4", "--backups", "2"], async (up) => {
    const ready = await up.ready;
    const vm = ready.vms[0]!;
    // Outputs flow (READY waited for the guest to listen).
    await redisBenchmark(vm.ports["6379"]!, ["-t", "set", "-n", "2000", "-c", "10"]);
    const from = up.seen;
    const killedAt = performance.now();
    process.kill(ready.hosts.find((h) => h.id === vm.backups[1])!.pid, "SIGKILL");
    await up.event((l) => l.event === "renewed" && l.host === vm.primary, "the renewal", from);
    const renewMs = performance.now() - killedAt;
    await up.event((l) => l.event === "cloneStarted" && l.host === vm.primary, "a clone", from);
    return { renewMs, restoreMs: performance.now() - killedAt };
  });
}

export async function runBackupsBench(): Promise<BackupsBenchResult> {
  const runs: BackupsRun[] = [];
  const nonFt: BenchmarkFigures[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    nonFt.push(await withKvDirect((address) => redisBenchmark(address, KV_LOAD)));
    runs.push(await kvWith(1));
    runs.push(await kvWith(2));
  }
  const renewMs: number[] = [];
  const restoreMs: number[] = [];
  for (let i = 0; i < RENEW_RUNS; i++) {
    const lost = await loseOneBackup();
    renewMs.push(lost.renewMs);
    restoreMs.push(lost.restoreMs);
  }
  return { runs, nonFt, renewMs, restoreMs };
}

export function printBackupsBench(r: BackupsBenchResult): void {
  const median = (values: number[]) => percentile(values, 0.5);
  const baseline = median(r.nonFt.map((f) => f.rps));
  console.log("backups   requests/s (median)   / without FT   / one backup   p50 ms   p99 ms   output hold p50 ms   p99 ms");
  const oneRps = median(r.runs.filter((run) => run.backups === 1).map((run) => run.figures.rps));
  console.log(
    `${"none".padStart(7)}   ${Math.round(baseline).toString().padStart(19)}   ${"1.000".padStart(12)}   ${"".padStart(12)}   ` +
      `${median(r.nonFt.map((f) => f.p50Ms)).toFixed(3).padStart(6)}   ${median(r.nonFt.map((f) => f.p99Ms)).toFixed(3).padStart(6)}`,
  );
  for (const backups of [1, 2]) {
    const runs = r.runs.filter((run) => run.backups === backups);
    const rps = median(runs.map((run) => run.figures.rps));
    console.log(
      `${String(backups).padStart(7)}   ${Math.round(rps).toString().padStart(19)}   ${(rps / baseline).toFixed(3).padStart(12)}   ` +
        `${(rps / oneRps).toFixed(3).padStart(12)}   ${median(runs.map((run) => run.figures.p50Ms)).toFixed(3).padStart(6)}   ` +
        `${median(runs.map((run) => run.figures.p99Ms)).toFixed(3).padStart(6)}   ${median(runs.map((run) => run.outputHoldMsP50)).toFixed(3).padStart(18)}   ` +
        `${median(runs.map((run) => run.outputHoldMsP99)).toFixed(3).padStart(6)}`,
    );
  }
  console.log(`requests/s per run: ${r.runs.map((run) => `${run.backups}: ${Math.round(run.figures.rps)}`).join(", ")}; without FT: ${r.nonFt.map((f) => Math.round(f.rps)).join(", ")}`);
  console.log(
    `one of two backups killed → primary renewed: p50 ${Math.round(median(r.renewMs))} ms (runs: ${r.renewMs.map(Math.round).join(", ")}); ` +
      `→ two backups again: p50 ${Math.round(median(r.restoreMs))} ms (runs: ${r.restoreMs.map(Math.round).join(", ")})`,
  );
}

if (import.meta.url === `file://${process.argv[1]}`) printBackupsBench(await runBackupsBench());
