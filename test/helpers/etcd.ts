// A real etcd server (Debian `etcd-server`, scripts/setup.sh) in a child process, on free ports
// and a temporary data dir, for the etcd arbiter's tests. Ready means it printed that it serves
// clients; every wait is on what it prints or on its exit, never on time.

import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

export const ETCD_BINARY = process.env.LOCKSTEP_ETCD_BINARY ?? "/usr/bin/etcd";

/** A TCP port free right now on 127.0.0.1 (the kernel's pick, released for etcd to take). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export class EtcdProcess {
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output = "";

  private constructor(
    readonly dataDir: string,
    readonly clientPort: number,
    readonly peerPort: number,
    readonly host: string,
  ) {
    const client = `http://${host}:${clientPort}`;
    const peer = `http://${host}:${peerPort}`;
    this.child = spawn(
      ETCD_BINARY,
      [
        "--name", "lockstep-test",
        "--data-dir", dataDir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", `lockstep-test=${peer}`,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    this.ready = new Promise((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        this.output += chunk.toString("utf8");
        if (/ready to serve client requests/.test(this.output)) resolve();
      };
      this.child.stdout!.on("data", onData);
      this.child.stderr!.on("data", onData);
      void this.exited.then(({ code, signal }) => reject(new Error(`etcd exited (${signal ?? code}) before serving:\n${this.output.slice(-2000)}`)));
    });
    this.ready.catch(() => undefined);
  }

  /**
   * Starts etcd on `dataDir` (and given ports: a restart), resolving once it serves clients,
   * on `host` (default 127.0.0.1).
   */
  static async start(dataDir: string, ports?: { client: number; peer: number }, host = "127.0.0.1"): Promise<EtcdProcess> {
    const etcd = new EtcdProcess(dataDir, ports?.client ?? (await freePort()), ports?.peer ?? (await freePort()), host);
    running.add(etcd);
    void etcd.exited.then(() => running.delete(etcd));
    await etcd.ready;
    return etcd;
  }

  get url(): string {
    return `etcd://${this.host}:${this.clientPort}`;
  }

  get ports(): { client: number; peer: number } {
    return { client: this.clientPort, peer: this.peerPort };
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    await this.exited;
  }
}

const running = new Set<EtcdProcess>();
const dirs: string[] = [];

export function etcdDataDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `lockstep-etcd-${prefix}-`));
  dirs.push(dir);
  return dir;
}

/** afterAll: every etcd still running is killed (SIGCONT first, for one a test stopped), dirs removed. */
export async function killAllEtcd(): Promise<void> {
  await Promise.all(
    [...running].map(async (etcd) => {
      etcd.child.kill("SIGCONT");
      await etcd.kill("SIGKILL");
    }),
  );
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}
