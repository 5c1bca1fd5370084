// Time travel in the page (real headless Chromium): a log recorded with `lockstep record` is
// uploaded, replayed to an instruction count on the cluster's server, and the page shows the
// very result line and console output that `lockstep replay --until COUNT --console` prints.

import { execFile } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { timeTravel } from "../../host/dashboard/time-travel.js";
import { PROJECT_ROOT } from "../../host/vm/guest.js";
import { SCREENSHOT_DIR, useChromium } from "../helpers/browser.js";
import { UpCluster } from "../helpers/cluster.js";

const CLI = path.join(PROJECT_ROOT, "dist", "host", "cli", "main.js");
const WAIT_MS = 60_000;
const run = promisify(execFile);

const browser = useChromium();
let cluster: UpCluster | null = null;
let dir: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-time-travel-test-"));
});

afterAll(async () => {
  const result = await cluster?.stop();
  expect(result?.code ?? 0).toBe(0);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("time travel in the dashboard", () => {
  it("shows the guest's memory as it was at the count: the last line printed is there, the next one not yet", async () => {
    const log = path.join(dir, "counter-memory.log");
    await run(process.execPath, [CLI, "record", "counter", "--log", log, "--seconds", "2"], { cwd: dir });
    const whole = JSON.parse((await run(process.execPath, [CLI, "replay", "counter", "--log", log])).stdout) as { icount: number };
    const everything = await timeTravel(fs.readFileSync(log), "counter", null);
    const at = await timeTravel(fs.readFileSync(log), "counter", BigInt(Math.floor(whole.icount / 2)), { offset: 0, length: 65_536 });
    const memory = Buffer.from(at.memory!.hex, "hex");
    expect(memory.length).toBe(Math.min(65_536, at.memory!.sizeBytes));
    // The guest encodes each line to UTF-8 in its memory before writing it to the console.
    const printed = at.console.trimEnd().split("\n");
    const next = everything.console.trimEnd().split("\n")[printed.length]!;
    expect(next).toMatch(/^tick \d+ /);
    expect(memory.includes(Buffer.from(printed.at(-1)!))).toBe(true);
    expect(memory.includes(Buffer.from(next))).toBe(false);
  });

  it("shows the same result line and console output as `lockstep replay --until`", async () => {
    const log = path.join(dir, "counter.log");
    await run(process.execPath, [CLI, "record", "counter", "--log", log, "--seconds", "2"], { cwd: dir });
    const whole = JSON.parse((await run(process.execPath, [CLI, "replay", "counter", "--log", log])).stdout) as { icount: number };
    const until = String(Math.floor(whole.icount / 2));
    const cli = await run(process.execPath, [CLI, "replay", "counter", "--log", log, "--until", until, "--console"]);
    const cliLine = cli.stdout.trim();
    expect(cli.stderr).toMatch(/^counter start /);
    expect(cli.stderr).toContain("tick 1 ");

    cluster = new UpCluster(["--guest", "counter", "--hosts", "2", "--no-restore"]);
    const ready = await cluster.ready;
    const page = await browser().newPage({ viewport: { width: 1280, height: 1000 } });
    await page.goto(ready.url);
    await page.locator("#tt-guest option[value='counter']").waitFor({ state: "attached", timeout: WAIT_MS });
    await page.getByLabel("Recorded log").setInputFiles(log);
    await page.getByLabel("Guest").selectOption("counter");

    // The whole log first: its end sets the slider's range.
    await page.getByRole("button", { name: "Replay to this count" }).click();
    await page.locator("#tt-result[data-state='ok']").waitFor({ timeout: WAIT_MS });
    expect(await page.locator("#tt-result").textContent()).toMatch(new RegExp(`^\\{"icount":${whole.icount},`));
    expect(await page.getByLabel("Move through the log").getAttribute("max")).toBe(String(whole.icount));

    // Then to the count: the same line and the same console output as the CLI.
    await page.getByLabel("Instruction count (empty: the whole log)").fill(until);
    await page.getByRole("button", { name: "Replay to this count" }).click();
    await page.locator("#tt-result[data-state='ok']", { hasText: `"icount":` }).waitFor({ timeout: WAIT_MS });
    await page.waitForFunction(
      (line) => (globalThis as unknown as { document: { querySelector(s: string): { textContent: string | null } | null } }).document.querySelector("#tt-result")?.textContent?.startsWith(line) === true,
      cliLine,
      { timeout: WAIT_MS },
    );
    expect(await page.locator("#tt-result").textContent()).toBe(`${cliLine} (stopped)`);
    expect(await page.locator("#tt-console").textContent()).toBe(cli.stderr);
    // The memory view: 256 bytes from offset 0, 16 to a line, after a line that names the size.
    const memoryLines = (await page.locator("#tt-memory").textContent())!.split("\n");
    expect(memoryLines[0]).toMatch(/^\d+ bytes of memory; from 0:$/);
    expect(memoryLines.slice(1)).toHaveLength(16);
    expect(memoryLines[1]).toMatch(/^00000000  ([0-9a-f]{2} ){15}[0-9a-f]{2}  .{16}$/);
    await page.locator("#time-travel").screenshot({ path: path.join(SCREENSHOT_DIR, "time-travel.png") });

    // The slider, from the keyboard: Home goes back to the start of the log, and replays there.
    await page.getByLabel("Move through the log").press("Home");
    await page.waitForFunction(
      () => {
        const doc = (globalThis as unknown as { document: { querySelector(s: string): { textContent: string | null; dataset?: Record<string, string> } | null } }).document;
        return doc.querySelector("#tt-result")?.dataset?.state === "ok" && /^\{"icount":\d{1,5},/.test(doc.querySelector("#tt-result")?.textContent ?? "");
      },
      undefined,
      { timeout: WAIT_MS },
    );
    expect(await page.getByLabel("Instruction count (empty: the whole log)").inputValue()).toBe("0");

    // A log of another guest is refused with the reason, not replayed.
    await page.getByLabel("Guest").selectOption("cpu");
    await page.getByLabel("Instruction count (empty: the whole log)").fill("");
    await page.getByRole("button", { name: "Replay to this count" }).click();
    await page.locator("#tt-result[data-state='error']").waitFor({ timeout: WAIT_MS });
    expect(await page.locator("#tt-result").textContent()).toContain("LOG_MODULE_MISMATCH");
    await page.close();
  });
});
