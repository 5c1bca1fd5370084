// The dashboard in a real headless Chromium (Debian's `chromium`, driven by playwright-core)
// against a real `lockstep up`: the page shows the pair, an operator kills the primary's host
// from the page, and the page shows the failover, the new primary, then the restored backup.
// Every wait is on page content (playwright's waitFor), never on time.
//
// Screenshots of each state go to test-output/dashboard/ (gitignored).

import fs from "node:fs";
import path from "node:path";
import type { Page } from "playwright-core";
import { afterEach, describe, expect, it } from "vitest";
import { SCREENSHOT_DIR, useChromium } from "../helpers/browser.js";
import { UpCluster } from "../helpers/cluster.js";

/** Failover takes ~1 s and a clone a few more; this is the bound on a loaded 2-core box. */
const STATE_TIMEOUT_MS = 60_000;

const browser = useChromium();
let cluster: UpCluster | null = null;

afterEach(async () => {
  const result = await cluster?.stop();
  cluster = null;
  expect(result?.code ?? 0).toBe(0);
});

/** What the functions run inside the page use of the browser's globals (tsc here has no DOM lib). */
interface PageGlobals {
  document: {
    querySelector(selector: string): { textContent: string | null } | null;
    querySelectorAll(selector: string): { length: number };
    activeElement: { id: string } | null;
    documentElement: { scrollWidth: number };
  };
  innerWidth: number;
}

/** The outcome line once the action finished, either way: its state and what it says. */
async function outcome(page: Page): Promise<string> {
  await page.locator("#outcome[data-state='ok'], #outcome[data-state='error']").waitFor({ timeout: STATE_TIMEOUT_MS });
  const line = page.locator("#outcome");
  return `${await line.getAttribute("data-state")}: ${await line.textContent()}`;
}

/** The text of a VM card's field, once the page shows it. */
const vmField = (page: Page, vm: string, name: string) => page.locator(`[data-vm="${vm}"] [data-field="${name}"]`).first();

/** Resolves once the VM card's field reads `text` (checked on every page change). */
async function fieldIs(page: Page, vm: string, name: string, text: string): Promise<void> {
  try {
    await page.waitForFunction(
      ([vm, name, text]) => (globalThis as unknown as PageGlobals).document.querySelector(`#vms [data-vm="${vm}"] [data-field="${name}"]`)?.textContent === text,
      [vm, name, text] as const,
      { timeout: STATE_TIMEOUT_MS },
    );
  } catch (error) {
    // Say what the page showed instead.
    const shown = await page.locator("main").innerText().catch(() => "?");
    throw new Error(`${vm}'s ${name} never read "${text}": ${(error as Error).message}\nthe page:\n${shown}`);
  }
}

describe("the dashboard in Chromium", () => {
  it("shows each of a VM's backups (--backups 2) in a column of its own, on hosts of their own", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3", "--backups", "2", "--no-restore", "--timeout-ms", "3000"]);
    const ready = await cluster.ready;
    const { primary, backups } = ready.vms[0]! as { primary: string; backups: string[] };
    expect(backups).toHaveLength(2);
    const page = await browser().newPage({ viewport: { width: 1280, height: 1000 } });
    await page.goto(ready.url);
    await fieldIs(page, "counter", "backups", "2 of 2");
    await fieldIs(page, "counter", "primary-host", primary);
    const shown = [await vmField(page, "counter", "backup-host").textContent(), await vmField(page, "counter", "backup2-host").textContent()];
    expect(shown.sort()).toEqual([...backups].sort());
    expect(await page.locator('#vms [data-vm="counter"] thead th').allTextContents()).toEqual(["primary", "backup 1", "backup 2"]);
    await page.locator('#vms [data-vm="counter"]').screenshot({ path: path.join(SCREENSHOT_DIR, "two-backups.png") });
  });

  it("shows the pair; kill on the primary's host shows the failover, the new primary, then the restored backup", async () => {
    // A 3 s failure timeout rather than 1 s: a kill is detected all the same, and a box loaded
    // by other suites is less likely to see a false failover that would move the pair again.
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3", "--timeout-ms", "3000"]);
    const ready = await cluster.ready;
    const { primary, backup } = ready.vms[0]!;
    const page = await browser().newPage({ viewport: { width: 1280, height: 1000 } });
    const errors: string[] = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(ready.url);

    // The pair, on two different hosts, as the cluster placed it.
    await page.locator("#connection[data-state='live']").waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator('#vms [data-vm="counter"][data-state="protected"]').waitFor({ timeout: STATE_TIMEOUT_MS });
    expect(await vmField(page, "counter", "primary-host").textContent()).toBe(primary);
    expect(await vmField(page, "counter", "backup-host").textContent()).toBe(backup);
    expect(primary).not.toBe(backup);
    expect(await vmField(page, "counter", "generation").textContent()).toBe("1");
    // The charts are drawn by the library, one per figure.
    await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.querySelectorAll("#charts .uplot").length === 3, undefined, { timeout: STATE_TIMEOUT_MS });
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, "1-protected.png"), fullPage: true });

    // Cancel is the safe default: Escape closes the dialog and nothing happens.
    const kill = page.locator(`#hosts [data-host="${primary}"] button[data-action="kill"]`);
    await kill.click();
    await page.locator("#confirm[open]").waitFor();
    expect(await page.evaluate(() => (globalThis as unknown as PageGlobals).document.activeElement?.id)).toBe("confirm-cancel");
    await page.keyboard.press("Escape");
    await page.locator("#confirm:not([open])").waitFor({ state: "attached" });
    expect(await page.locator("#outcome").textContent()).toBe("");

    // Kill, confirmed: a real SIGKILL of the primary's host.
    const primaryPid = ready.hosts.find((h) => h.id === primary)!.pid;
    await kill.click();
    await page.locator("#confirm-ok").click();
    expect(await outcome(page)).toBe(`ok: ${primary} (pid ${primaryPid}) killed with SIGKILL.`);

    // The failover: the backup's host now runs the primary, at generation 2, and the timeline
    // says why.
    await fieldIs(page, "counter", "primary-host", backup);
    await fieldIs(page, "counter", "generation", "2");
    await page.locator(`#events [data-event="wentLive"][data-vm="counter"]`).waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator(`#events [data-event="failureDetected"]`).first().waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator(`#events [data-event="hostKilled"]`).waitFor();
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, "2-failover.png"), fullPage: true });

    // Redundancy restored: a clone of the new primary is its backup, on another host.
    await page.locator(`#events [data-event="redundancyRestored"]`).first().waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator('#vms [data-vm="counter"][data-state="protected"]').waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.waitForFunction(
      (newPrimary) => {
        const text = (globalThis as unknown as PageGlobals).document.querySelector('#vms [data-vm="counter"] [data-field="backup-host"]')?.textContent;
        return text !== undefined && text !== "–" && text !== newPrimary;
      },
      backup,
      { timeout: STATE_TIMEOUT_MS },
    );
    const restoredOn = await vmField(page, "counter", "backup-host").textContent();
    expect(await vmField(page, "counter", "primary-host").textContent()).toBe(backup);
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, "3-restored.png"), fullPage: true });

    // What the page shows is what the cluster says.
    const status = await cluster.status();
    expect(status.vms[0]).toMatchObject({ vm: "counter", generation: 2, state: "protected" });
    expect(status.vms[0]!.primary!.host).toBe(backup);
    expect(status.vms[0]!.backup!.host).toBe(restoredOn);
    expect(errors).toEqual([]);

    for (const shot of ["1-protected.png", "2-failover.png", "3-restored.png"]) {
      expect(fs.statSync(path.join(SCREENSHOT_DIR, shot)).size).toBeGreaterThan(10_000);
    }
    await page.close();
  });

  it("migrates the backup to a chosen host, cuts a host off and joins it again, and powers the VM off, each confirmed and reported", { timeout: 240_000 }, async () => {
    // A long failure timeout: this test is about the page's actions, and on a box loaded by
    // other suites a 1 s timeout can declare the freshly migrated backup failed, after which
    // the cluster (rightly) places it elsewhere.
    cluster = new UpCluster(["--guest", "counter", "--hosts", "3", "--timeout-ms", "10000"]);
    const ready = await cluster.ready;
    const { primary, backup } = ready.vms[0]!;
    const third = ready.hosts.map((h) => h.id).find((id) => id !== primary && id !== backup)!;
    const page = await browser().newPage({ viewport: { width: 1024, height: 900 } });
    await page.goto(ready.url);
    await page.locator('#vms [data-vm="counter"][data-state="protected"]').waitFor({ timeout: STATE_TIMEOUT_MS });

    // Migrate the backup to the third host, chosen in the dialog.
    await page.getByRole("button", { name: "Migrate counter" }).click();
    await page.getByLabel("Move the").selectOption("backup");
    await page.getByLabel("to host").selectOption(third);
    await page.locator("#confirm-ok").click();
    expect(await outcome(page)).toMatch(new RegExp(`^ok: counter's backup now runs on ${third} \\(\\d+ ms\\)\\.$`));
    await fieldIs(page, "counter", "backup-host", third);
    await page.locator('#vms [data-vm="counter"][data-state="protected"]').waitFor({ timeout: STATE_TIMEOUT_MS });
    expect(await vmField(page, "counter", "primary-host").textContent()).toBe(primary);
    await page.locator('#events [data-event="migrationFinished"]').waitFor({ timeout: STATE_TIMEOUT_MS });

    // Cut the old backup's host (it runs nothing now) off the network, then join it again.
    const hostCard = page.locator(`#hosts [data-host="${backup}"]`);
    await hostCard.getByRole("button", { name: "Cut network" }).click();
    await page.locator("#confirm-ok").click();
    await hostCard.locator('[data-field="network"]', { hasText: "cut off" }).waitFor({ timeout: STATE_TIMEOUT_MS });
    await hostCard.getByRole("button", { name: "Join network" }).click();
    await page.locator("#confirm-ok").click();
    await hostCard.locator('[data-field="network"]', { hasText: "connected" }).waitFor({ timeout: STATE_TIMEOUT_MS });
    expect(await page.locator("#outcome").textContent()).toBe(`${backup} is connected again.`);

    // Power off: both sides stop at the same instruction and neither goes live.
    await page.getByRole("button", { name: "Power off counter" }).click();
    await page.locator("#confirm-ok").click();
    await page.locator("#outcome", { hasText: "counter is powering off." }).waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator('#vms [data-vm="counter"][data-state="down"]').waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, "4-powered-off.png"), fullPage: true });
    const status = await cluster.status();
    expect(status.vms.find((vm) => vm.vm === "counter")?.state ?? "down").toBe("down");
    expect(status.events.some((e) => e.event === "wentLive")).toBe(false);
    await page.close();
  });

  it("asks for the token when the cluster has one, then goes live with it; works at phone width in the dark scheme", async () => {
    cluster = new UpCluster(["--guest", "counter", "--hosts", "2", "--token", "dashboard-test-token", "--no-restore", "--timeout-ms", "10000"]);
    const ready = await cluster.ready;
    const page = await browser().newPage({ viewport: { width: 390, height: 844 }, colorScheme: "dark" });
    await page.goto(ready.url);
    await page.locator("#connection[data-state='unauthorized']").waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator("#token-form:not([hidden])").waitFor();

    // A wrong token is refused and the form says so.
    await page.getByLabel("This cluster needs its token").fill("wrong");
    await page.keyboard.press("Enter");
    await page.locator("#token-error", { hasText: "refused" }).waitFor({ timeout: STATE_TIMEOUT_MS });

    await page.getByLabel("This cluster needs its token").fill("dashboard-test-token");
    await page.getByRole("button", { name: "Connect" }).click();
    await page.locator("#connection[data-state='live']").waitFor({ timeout: STATE_TIMEOUT_MS });
    await page.locator('#vms [data-vm="counter"][data-state="protected"]').waitFor({ timeout: STATE_TIMEOUT_MS });
    // API calls from the page carry it too: the guest list behind "Start a guest…".
    await page.getByRole("button", { name: "Start a guest…" }).click();
    await page.locator("#confirm[open] select[name='guest'] option[value='counter']").waitFor({ state: "attached" });
    await page.keyboard.press("Escape");

    // One column: no card is wider than the viewport.
    const overflow = await page.evaluate(() => {
      const page = globalThis as unknown as PageGlobals;
      return page.document.documentElement.scrollWidth - page.innerWidth;
    });
    expect(overflow).toBeLessThanOrEqual(0);
    await page.screenshot({ path: path.join(SCREENSHOT_DIR, "phone-dark.png"), fullPage: true });
    await page.close();
  });
});
