// The kv guest keeps its data on its virtual disk: a new VM booted from the same disk image
// serves what the old one acknowledged, through an unmodified redis-cli.

import path from "node:path";
import { describe, expect, it } from "vitest";
import { LockstepProcess, run, tempDir } from "../helpers/cli.js";

async function withKv<T>(disk: string, body: (port: number) => Promise<T>): Promise<T> {
  const vm = new LockstepProcess(["run", "kv", "--disk", disk, "--listen", "127.0.0.1:0"]);
  const { port } = await vm.listening();
  try {
    return await body(port);
  } finally {
    vm.child.kill("SIGINT");
    const ended = await vm.exited;
    expect(ended.code, ended.stderr).toBe(0);
  }
}

describe("kv survives a restart from its disk image", () => {
  it("acknowledged writes are there after the VM is stopped and started again", async () => {
    const disk = path.join(tempDir("kv-restart"), "kv.img");
    const cli = (port: number, ...args: string[]) => run("redis-cli", ["-p", String(port), ...args]).then((r) => r.stdout.trim());
    await withKv(disk, async (port) => {
      expect(await cli(port, "SET", "city", "Palo Alto")).toBe("OK");
      expect(await cli(port, "INCR", "visits")).toBe("1");
      expect(await cli(port, "INCR", "visits")).toBe("2");
      expect(await cli(port, "SET", "gone", "soon")).toBe("OK");
      expect(await cli(port, "DEL", "gone")).toBe("1");
    });
    await withKv(disk, async (port) => {
      expect(await cli(port, "GET", "city")).toBe("Palo Alto");
      expect(await cli(port, "INCR", "visits")).toBe("3");
      expect(await cli(port, "EXISTS", "gone")).toBe("0");
    });
  });
});
