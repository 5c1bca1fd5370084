// The dashboard's live replica (host/replica/), real processes and a real headless Chromium:
// does a browser replaying kv slow its primary down, and how far behind the primary is it?
//
//   - kv's requests/s under redis-benchmark with a replica open in the page against the same
//     VM without one, in alternating rounds of this run (the replica costs the primary an
//     encoding of each log batch and a socket; the browser's worker competes for the CPU);
//   - after each loaded round, a digest probe: from the primary's answer to the page showing
//     the browser's own digest at that count, which is how far the replica trails the log;
//   - how long opening a replica takes (snapshot, module, first records).

import { chromium } from "playwright-core";
import { fetchJson } from "../host/cluster/http.js";
import { percentile, redisBenchmark, type BenchmarkFigures } from "./kv-load.js";
import { withCluster } from "./cluster.js";

const CHROMIUM = process.env.LOCKSTEP_CHROMIUM ?? "/usr/bin/chromium";
const KV_LOAD = ["-t", "set,get", "-n", "20000", "-c", "20"];
const ROUNDS = 3;
const WAIT_MS = 60_000;

export interface ReplicaBenchResult {
  without: BenchmarkFigures[];
  with: BenchmarkFigures[];
  openMs: number[];
  /** The primary answered a probe → the page showed the browser's digest at that count. */
  probeToCheckedMs: number[];
}

export async function runReplicaBench(): Promise<ReplicaBenchResult> {
  const browser = await chromium.launch({ executablePath: CHROMIUM });
  try {
    return await withCluster(["--guest", "kv", "--hosts", "2", "--no-switch", "--no-restore", "--port", "0"], async (up) => {
      const ready = await up.ready;
      const address = ready.vms[0]!.ports["6379"]!;
      const page = await browser.newPage();
      await page.goto(ready.url);
      await page.locator("#replica-vm option[value='kv']").waitFor({ state: "attached", timeout: WAIT_MS });
      const result: ReplicaBenchResult = { without: [], with: [], openMs: [], probeToCheckedMs: [] };
      // Warm-up: the guest's data set and the JIT, neither counted.
      await redisBenchmark(address, KV_LOAD);
      for (let round = 0; round < ROUNDS; round++) {
        result.without.push(await redisBenchmark(address, KV_LOAD));

        const clickedMs = performance.now();
        await page.getByRole("button", { name: "Start the replica" }).click();
        await page.locator("#replica-state[data-state='running']").waitFor({ timeout: WAIT_MS });
        result.openMs.push(performance.now() - clickedMs);
        result.with.push(await redisBenchmark(address, KV_LOAD));
        const probe = (await fetchJson(`${ready.url}/api/vms/kv/digest`, { method: "POST", timeoutMs: WAIT_MS })) as { icount: string; digest: string };
        const answeredMs = performance.now();
        const row = page.locator(`#replica-digests tr[data-icount='${probe.icount}'] td[data-field='replica']`);
        await row.waitFor({ timeout: WAIT_MS });
        result.probeToCheckedMs.push(performance.now() - answeredMs);
        if ((await row.textContent()) !== probe.digest) throw new Error(`the browser's digest at ${probe.icount} is not the primary's ${probe.digest}`);
        await page.getByRole("button", { name: "Stop" }).click();
        await page.locator("#replica-state[data-state='stopped']").waitFor({ timeout: WAIT_MS });
      }
      return result;
    });
  } finally {
    await browser.close();
  }
}

export function printReplicaBench(result: ReplicaBenchResult): void {
  const median = (values: number[]) => percentile(values, 0.5);
  const without = median(result.without.map((f) => f.rps));
  const withReplica = median(result.with.map((f) => f.rps));
  console.log(`kv requests/s without a replica: ${Math.round(without)} (rounds: ${result.without.map((f) => Math.round(f.rps)).join(", ")})`);
  console.log(`kv requests/s with a browser replica: ${Math.round(withReplica)} (rounds: ${result.with.map((f) => Math.round(f.rps)).join(", ")})`);
  console.log(`with / without: ${(withReplica / without).toFixed(3)}`);
  console.log(`p99 latency ms without / with: ${median(result.without.map((f) => f.p99Ms)).toFixed(1)} / ${median(result.with.map((f) => f.p99Ms)).toFixed(1)}`);
  console.log(`opening a replica (click to replaying): ${result.openMs.map((ms) => Math.round(ms)).join(", ")} ms`);
  console.log(`probe answered by the primary → checked by the browser, after each loaded round: ${result.probeToCheckedMs.map((ms) => Math.round(ms)).join(", ")} ms`);
}

if (import.meta.url === `file://${process.argv[1]}`) printReplicaBench(await runReplicaBench());
