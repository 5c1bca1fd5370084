// `lockstep switch` as a process: its READY line, a client and a fake VM through it, a clean
// stop on SIGTERM, and usage errors with a stable code.

import { spawn } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { parseService } from "../../host/cli/switch-command.js";
import { ROOT } from "../helpers/cli.js";
import { Client, FakeVm } from "./helpers.js";

const ENTRY = path.join(ROOT, "test", "switch", "cli-entry.ts");

interface Run {
  ready: Promise<{ url: string; pid: number; services: Record<string, string> }>;
  exited: Promise<{ code: number | null; stderr: string }>;
  kill(signal: NodeJS.Signals): void;
}

function run(args: string[]): Run {
  const child = spawn(process.execPath, ["--import", "tsx", ENTRY, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const exited = new Promise<{ code: number | null; stderr: string }>((resolve) => child.on("close", (code) => resolve({ code, stderr })));
  const ready = new Promise<{ url: string; pid: number; services: Record<string, string> }>((resolve, reject) => {
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      stdout += chunk;
      const match = /^READY (\{.*\})$/m.exec(stdout);
      if (match) resolve(JSON.parse(match[1]!) as { url: string; pid: number; services: Record<string, string> });
    });
    void exited.then(({ code }) => reject(new Error(`exited ${code} before READY:\n${stderr}`)));
  });
  ready.catch(() => undefined);
  return { ready, exited, kill: (signal) => child.kill(signal) };
}

describe("lockstep switch", () => {
  it("prints READY, carries a client to a VM, and stops on SIGTERM", async () => {
    const sw = run(["--service", "kv=vm1:7", "--service", "web=vm1:80@127.0.0.1:0", "--port", "0", "--log-level", "debug"]);
    const ready = await sw.ready;
    expect(ready.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(Object.keys(ready.services)).toEqual(["kv", "web"]);
    expect(ready.services.kv).toMatch(/^127\.0\.0\.1:\d+$/);
    const status = (await (await fetch(`${ready.url}/api/status`)).json()) as { pid: number; vms: { vm: string }[] };
    expect(status.pid).toBe(ready.pid);
    expect(status.vms.map((v) => v.vm)).toEqual(["vm1"]);

    const fake = new FakeVm(ready.url, { generation: 1 });
    await fake.link.welcomed;
    const [host, port] = ready.services.kv!.split(":");
    const client = new Client({ host: host!, port: Number(port) });
    client.socket.write("ping");
    expect(await client.untilBytes(4)).toBe("PING");

    sw.kill("SIGTERM");
    const { code, stderr } = await sw.exited;
    expect(code).toBe(0);
    const lines = stderr.trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines.find((l) => l.event === "linkUp")).toMatchObject({ vm: "vm1", generation: 1 });
    expect(lines.at(-1)).toMatchObject({ msg: "switch closed" });
    await client.untilEnded().catch(() => undefined);
    fake.link.terminate();
  });

  it("reports usage errors as `lockstep: ... (USAGE)` and exit status 2", async () => {
    const cases = [
      [],
      ["--service", "kv"],
      ["--service", "kv=VM:7"],
      ["--service", "kv=vm1:70000"],
      ["--service", "kv=vm1:7", "--service", "kv=vm1:8"],
      ["--service", "kv=vm1:7", "--bind", "0.0.0.0"],
    ];
    const results = await Promise.all(cases.map((args) => run(args).exited));
    for (const [index, { code, stderr }] of results.entries()) {
      expect(code, cases[index]!.join(" ")).toBe(2);
      expect(stderr).toMatch(/^lockstep: [^\n]+/);
      expect(stderr).toMatch(/\(USAGE\)\n$/);
    }
  });

  it("parses --service NAME=VM:VPORT[@HOST:PORT]", () => {
    expect(parseService("kv=kv:6379")).toEqual({ name: "kv", vm: "kv", vport: 6379, host: "127.0.0.1", port: 0 });
    expect(parseService("web=site-1:80@0.0.0.0:8080")).toEqual({ name: "web", vm: "site-1", vport: 80, host: "0.0.0.0", port: 8080 });
    expect(parseService("v6=kv:1@[::1]:9")).toEqual({ name: "v6", vm: "kv", vport: 1, host: "::1", port: 9 });
    for (const bad of ["kv", "kv=kv", "kv=kv:x", "kv=kv:1@host", "kv=kv:1@::1:9", "=kv:1"]) expect(() => parseService(bad)).toThrow(/USAGE|--service/);
  });
});
