// redis-cli, the real client, against a guest: each command on its own line of its input, one
// reply per line of its output. A failed run fails the test that made it.

import { expect } from "vitest";
import { run } from "./cli.js";

export async function redis(address: string, commands: string[]): Promise<string[]> {
  const at = address.lastIndexOf(":");
  const result = await run("redis-cli", ["-h", address.slice(0, at), "-p", address.slice(at + 1)], commands.join("\n") + "\n");
  expect(result.code, result.stderr).toBe(0);
  return result.stdout.trim().split("\n");
}
