// The live replica in the page (real headless Chromium): the browser runs kv's own module from
// a snapshot of its running primary and replays the primary's log as it is written, while
// redis-cli writes to the primary. Digest probes that the primary logs, one asked by the page
// and one by this test through the API, are checked by the browser at the same instruction
// counts, and the digests it computes are the primary's. When the primary's host is killed, the
// page follows the VM to its new primary.

import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SCREENSHOT_DIR, useChromium } from "../helpers/browser.js";
import { UpCluster } from "../helpers/cluster.js";
import { redis } from "../helpers/redis-cli.js";

const WAIT_MS = 60_000;
const browser = useChromium();
let cluster: UpCluster | null = null;

afterAll(async () => {
  const result = await cluster?.stop();
  expect(result?.code ?? 0).toBe(0);
});

async function api<T>(url: string, method = "GET"): Promise<T> {
  const response = await fetch(url, { method });
  const body = (await response.json()) as T;
  expect(response.status, JSON.stringify(body)).toBeLessThan(300);
  return body;
}

describe("the live replica in the dashboard", () => {
  it("replays kv in the browser under redis-cli load and reaches the primary's digest at the probed counts", async () => {
    cluster = new UpCluster(["--guest", "kv", "--hosts", "2", "--no-switch"]);
    const ready = await cluster.ready;
    const address = ready.vms[0]!.ports["6379"]!;
    // State from before the replica: it must come with the snapshot.
    expect(await redis(address, ["SET before snapshot", "INCR hits"])).toEqual(["OK", "1"]);

    const page = await browser().newPage({ viewport: { width: 1280, height: 1000 } });
    const pageErrors: string[] = [];
    page.on("pageerror", (error) => pageErrors.push(error.message));
    await page.goto(ready.url);
    await page.locator("#replica-vm option[value='kv']").waitFor({ state: "attached", timeout: WAIT_MS });
    await page.getByLabel("VM to replicate").selectOption("kv");
    const clickedMs = performance.now();
    await page.getByRole("button", { name: "Start the replica" }).click();
    await page.locator("#replica-state[data-state='running']").waitFor({ timeout: WAIT_MS });
    const openMs = performance.now() - clickedMs;
    const startedAt = BigInt((await page.locator("#replica-figures [data-field='icount']").textContent())!);

    // Writes after the snapshot reach the replica through the log only.
    const incrs = 100;
    const replies = await redis(address, Array.from({ length: incrs }, (_, i) => `SET key-${i} value-${i}`));
    expect(replies).toEqual(Array.from({ length: incrs }, () => "OK"));

    // A probe asked by the page: the primary's answer and the replica's own digest side by side.
    await page.getByRole("button", { name: "Check the digest" }).click();
    await page.locator("#replica-digests tr[data-verdict='match'] td[data-field='verdict']", { hasText: /^match$/ }).waitFor({ timeout: WAIT_MS });
    const pageRow = page.locator("#replica-digests tr").first();
    expect(await pageRow.locator("td[data-field='replica']").textContent()).toBe(await pageRow.locator("td[data-field='primary']").textContent());

    // A probe asked here, after more writes: the primary's answer, from its host's API...
    expect(await redis(address, ["INCR hits", "DEL before"])).toEqual(["2", "1"]);
    const probedMs = performance.now();
    const probe = await api<{ icount: string; digest: string; host: string }>(`${ready.url}/api/vms/kv/digest`, "POST");
    const answeredMs = performance.now();
    expect(probe.host).toBe(ready.vms[0]!.primary);
    expect(BigInt(probe.icount)).toBeGreaterThan(startedAt);
    // ...and the digest the browser computed at that same instruction count.
    const row = page.locator(`#replica-digests tr[data-icount='${probe.icount}']`);
    await row.waitFor({ timeout: WAIT_MS });
    const checkedMs = performance.now();
    expect(await row.locator("td[data-field='replica']").textContent()).toBe(probe.digest);
    expect(probe.digest).toMatch(/^sha256:[0-9a-f]{64}$/);

    // The replica keeps up: it stands at or past the probe, and the page still shows it running.
    expect(BigInt((await page.locator("#replica-figures [data-field='icount']").textContent())!)).toBeGreaterThanOrEqual(BigInt(probe.icount));
    expect(await page.locator("#replica-state").getAttribute("data-state")).toBe("running");
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, "replica.png"), fullPage: true });
    await page.locator("#replica").screenshot({ path: path.join(SCREENSHOT_DIR, "replica-section.png") });

    // The primary's host dies: the backup goes live, and the page follows it with a new
    // replica, from a snapshot of the new primary, whose digests are the new primary's.
    const oldPrimary = ready.vms[0]!.primary;
    const newPrimary = ready.vms[0]!.backup;
    await api(`${ready.url}/api/hosts/${oldPrimary}/kill`, "POST");
    const killedMs = performance.now();
    await page.locator("#replica-figures [data-field='started-at']", { hasText: `from ${newPrimary}` }).waitFor({ timeout: WAIT_MS });
    const followedMs = performance.now() - killedMs;
    await page.locator("#replica-state[data-state='running']").waitFor({ timeout: WAIT_MS });
    const live = (await cluster.status()).vms[0]!.primary!;
    expect(live.host).toBe(newPrimary);
    const reopenedAt = BigInt((await page.locator("#replica-figures [data-field='started-at']").textContent())!.match(/^icount (\d+)/)![1]!);
    // The new primary runs on: a write moves it past every count probed so far.
    expect(await redis(live.ports["6379"]!, ["GET key-7", "SET after failover"])).toEqual(["value-7", "OK"]);
    const after = await api<{ icount: string; digest: string; host: string }>(`${ready.url}/api/vms/kv/digest`, "POST");
    expect(after.host).toBe(newPrimary);
    expect(BigInt(after.icount)).toBeGreaterThan(reopenedAt);
    const afterRow = page.locator(`#replica-digests tr[data-icount='${after.icount}']`);
    await afterRow.waitFor({ timeout: WAIT_MS });
    expect(await afterRow.locator("td[data-field='replica']").textContent()).toBe(after.digest);
    await page.locator("#replica").screenshot({ path: path.join(SCREENSHOT_DIR, "replica-after-failover.png") });
    console.log(
      `replica open ${Math.round(openMs)} ms (${await page.locator("#replica-figures [data-field='started-at']").textContent()}); ` +
        `probe answered by the primary in ${Math.round(answeredMs - probedMs)} ms, shown checked by the browser ${Math.round(checkedMs - answeredMs)} ms later; ` +
        `following the new primary after a kill: ${Math.round(followedMs)} ms`,
    );

    // Stopping it closes its session on the cluster.
    await page.getByRole("button", { name: "Stop" }).click();
    await page.locator("#replica-state[data-state='stopped']").waitFor({ timeout: WAIT_MS });
    expect(pageErrors).toEqual([]);
  });
});
