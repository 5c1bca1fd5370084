// Count exactness across V8's tiers: the counter lives in the Wasm code itself, so Liftoff,
// TurboFan and dynamic tiering must agree on every count and every state.

import path from "node:path";
import { describe, expect, it } from "vitest";
import { lockstep, resultLine, tempDir } from "../helpers/cli.js";

describe("the same run under every V8 tier", () => {
  it("cpu gives identical counts and digests under --liftoff-only, --no-liftoff and default tiering", async () => {
    const dir = tempDir("tiers");
    const lines = [];
    // "--liftoff" is V8's default; naming it keeps the CLI from forcing --no-liftoff.
    for (const flags of [["--liftoff-only"], ["--no-liftoff"], ["--liftoff"]]) {
      const log = path.join(dir, `cpu${flags[0]}.log`);
      const result = await lockstep(["record", "cpu", "--log", log, "--max-instructions", "150000000"], { nodeFlags: flags });
      expect(result.code, result.stderr).toBe(0);
      lines.push(resultLine(result));
    }
    expect(lines[0]!.icount).toBeGreaterThanOrEqual(150_000_000);
    expect(lines[1]).toEqual(lines[0]);
    expect(lines[2]).toEqual(lines[0]);
  });
});
