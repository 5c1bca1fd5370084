// Real headless Chromium for the dashboard tests (Debian's `chromium`, driven by
// playwright-core), one per test file, and the folder their screenshots go to (gitignored).

import fs from "node:fs";
import path from "node:path";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll } from "vitest";
import { PROJECT_ROOT } from "../../host/vm/guest.js";

export const CHROMIUM = process.env.LOCKSTEP_CHROMIUM ?? "/usr/bin/chromium";
export const SCREENSHOT_DIR = path.join(PROJECT_ROOT, "test-output", "dashboard");

/** Launches Chromium before the file's tests and closes it after them; call at the top level. */
export function useChromium(): () => Browser {
  let browser: Browser | undefined;
  beforeAll(async () => {
    fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
    browser = await chromium.launch({ executablePath: CHROMIUM });
  });
  afterAll(async () => {
    await browser?.close();
  });
  return () => {
    if (browser === undefined) throw new Error("useChromium's browser is there only inside tests");
    return browser;
  };
}
