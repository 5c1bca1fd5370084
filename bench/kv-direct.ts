// The baseline every kv figure is a ratio to: `lockstep run kv`, the guest on a TCP port of its
// own, with a local disk, no FT and no switch, as a separate process like the others.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { PROJECT_ROOT } from "../host/vm/guest.js";

export async function withKvDirect<T>(body: (address: string) => Promise<T>): Promise<T> {
  const disk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-bench-")), "kv.img");
  const args = ["run", "kv", "--listen", "6379=127.0.0.1:0", "--disk", disk];
  const child = spawn(process.execPath, ["--no-liftoff", path.join(PROJECT_ROOT, "dist/host/cli/main.js"), ...args], {
    cwd: PROJECT_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    const address = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stderr! }).on("line", (line) => {
        const match = /listening on ([\d.]+:\d+)/.exec(line);
        if (match) resolve(match[1]!);
      });
      child.once("exit", (code) => reject(new Error(`lockstep run kv exited (${code})`)));
    });
    return await body(address);
  } finally {
    child.kill("SIGINT");
    fs.rmSync(path.dirname(disk), { recursive: true, force: true });
  }
}
