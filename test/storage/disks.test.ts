// Virtual disks on a real storage server process: round trips, ordering, group commit,
// durability across kill -9, and every error answered with a clean status, not a crash.

import fs from "node:fs";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { isStorageError, type StorageError } from "../../host/storage/errors.js";
import { client, expectStructuredLogs, killAll, pattern, StorageProcess, tempDir } from "./helpers.js";

afterAll(killAll);

async function failure(promise: Promise<unknown>): Promise<StorageError> {
  try {
    await promise;
  } catch (error) {
    expect(isStorageError(error), String(error)).toBe(true);
    return error as StorageError;
  }
  throw new Error("expected the request to fail");
}

describe("virtual disks", () => {
  it("create sparse on first open, reopen with the same count, refuse another count", async () => {
    const dir = tempDir("open");
    const { server, url } = await StorageProcess.start({ dir });
    const storage = await client(url);
    expect(await storage.openDisk("kv", 1024)).toEqual({ blocks: 1024, created: true });
    expect(await storage.openDisk("kv", 1024)).toEqual({ blocks: 1024, created: false });
    const mismatch = await failure(storage.openDisk("kv", 2048));
    expect(mismatch.code).toBe("DISK_MISMATCH");
    expect(mismatch.retryable).toBe(false);
    expect(mismatch.message).toMatch(/has 1024 blocks, not 2048/);

    const image = path.join(dir, "disks", "kv.img");
    const stat = fs.statSync(image);
    expect(stat.size).toBe(1024 * 4096);
    // Sparse: nothing written yet, nothing allocated (a block or two of metadata at most).
    expect(stat.blocks * 512).toBeLessThan(64 * 1024);
    await server.waitForMsg("disk created", { vm: "kv", blocks: 1024 });
    await storage.close();
    await server.kill("SIGTERM");
    expectStructuredLogs(server);
  });

  it("reads back what it wrote, zeros where nothing was written, up to 256 blocks at once", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("rw") });
    const storage = await client(url);
    await storage.openDisk("vm1", 4096);
    const big = pattern(1, 256);
    await storage.write("vm1", 100, big);
    await storage.write("vm1", 7, pattern(2));
    expect(Buffer.compare(await storage.read("vm1", 100, 256), big)).toBe(0);
    expect(Buffer.compare(await storage.read("vm1", 7, 1), pattern(2))).toBe(0);
    expect(Buffer.compare(await storage.read("vm1", 4000, 96), new Uint8Array(96 * 4096))).toBe(0);
    // Another VM's disk is another file.
    await storage.openDisk("vm2", 16);
    expect(Buffer.compare(await storage.read("vm2", 7, 1), new Uint8Array(4096))).toBe(0);
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("executes one disk's IOs in arrival order: racing writes to one block land in order", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("order") });
    const storage = await client(url);
    await storage.openDisk("kv", 64);
    // Pipelined, not awaited one by one: 40 writes to block 3 then a read, all in flight.
    const writes = Array.from({ length: 40 }, (_, index) => storage.write("kv", 3, pattern(100 + index)));
    const read = storage.read("kv", 3, 1);
    const interleaved = storage.write("kv", 3, pattern(999));
    await Promise.all(writes);
    expect(Buffer.compare(await read, pattern(139)), "the read saw the last write before it").toBe(0);
    await interleaved;
    expect(Buffer.compare(await storage.read("kv", 3, 1), pattern(999))).toBe(0);
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("shares one fdatasync among the writes queued while a sync runs (group commit)", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("group") });
    const storage = await client(url);
    await storage.openDisk("kv", 256);
    await Promise.all(Array.from({ length: 48 }, (_, index) => storage.write("kv", index, pattern(index))));
    const syncs = server.logs.filter((line) => line.msg === "disk sync" && line.vm === "kv");
    const synced = syncs.reduce((sum, line) => sum + (line.writes as number), 0);
    expect(synced).toBe(48);
    expect(syncs.length, `writes per sync: ${syncs.map((line) => line.writes).join(",")}`).toBeLessThanOrEqual(4);
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("keeps every acknowledged write across kill -9 and restart", async () => {
    const dir = tempDir("durable");
    const first = await StorageProcess.start({ dir });
    const storage = await client(first.url);
    await storage.openDisk("kv", 512);
    const acknowledged = new Map<number, number>();
    await Promise.all(
      Array.from({ length: 64 }, async (_, index) => {
        const block = (index * 37) % 512;
        await storage.write("kv", block, pattern(index));
        acknowledged.set(block, index);
      }),
    );
    await storage.close();
    expect((await first.server.kill("SIGKILL")).signal).toBe("SIGKILL");
    // The lock of the dead server does not keep the next one out.
    expect(fs.readFileSync(path.join(dir, "LOCK"), "utf8").trim()).toBe(String(first.server.pid));

    const second = await StorageProcess.start({ dir });
    const again = await client(second.url);
    // Known without an open: the disk is found on the server's disk.
    for (const [block, index] of acknowledged) {
      expect(Buffer.compare(await again.read("kv", block, 1), pattern(index)), `block ${block}`).toBe(0);
    }
    expect((await again.openDisk("kv", 512)).created).toBe(false);
    await again.close();
    await second.server.kill("SIGTERM");
  });

  it("answers bad requests with clean statuses and keeps serving", async () => {
    const { server, url } = await StorageProcess.start({ dir: tempDir("bad") });
    const storage = await client(url);
    expect((await failure(storage.read("nodisk", 0, 1))).code).toBe("NO_DISK");
    await storage.openDisk("kv", 8);
    const beyond = await failure(storage.read("kv", 6, 4));
    expect(beyond.code).toBe("BAD_REQUEST");
    expect(beyond.message).toMatch(/beyond the 8 blocks/);
    expect((await failure(storage.write("kv", 8, pattern(1)))).code).toBe("BAD_REQUEST");
    // Checked by the client before sending, with the same rules as the server.
    expect((await failure(storage.read("kv", 0, 0))).code).toBe("BAD_REQUEST");
    expect((await failure(storage.read("../../etc", 0, 1))).code).toBe("BAD_REQUEST");
    expect((await failure(storage.write("kv", 0, new Uint8Array(100)))).code).toBe("BAD_REQUEST");
    await storage.write("kv", 7, pattern(3));
    expect(Buffer.compare(await storage.read("kv", 7, 1), pattern(3))).toBe(0);
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("reports a failing write as IO_ERROR (file size limit: EFBIG) and serves on", async () => {
    const dir = tempDir("efbig");
    const first = await StorageProcess.start({ dir });
    const storage = await client(first.url);
    await storage.openDisk("kv", 1024);
    await storage.close();
    await first.server.kill("SIGTERM");

    // Restarted with RLIMIT_FSIZE at 64 KiB: writes past it fail, as on a full file system.
    const { server, url } = await StorageProcess.start({ dir, fileSizeLimitBlocks: 128 });
    const limited = await client(url);
    const error = await failure(limited.write("kv", 100, pattern(5)));
    expect(error.code).toBe("IO_ERROR");
    expect(error.retryable).toBe(false);
    expect(error.message).toMatch(/EFBIG/);
    const line = await server.waitForLog((l) => l.level === "error" && l.vm === "kv" && l.code === "IO_ERROR");
    expect(line.detail).toMatch(/write of disk kv at block 100 failed: EFBIG/);
    // Below the limit all is well, and the failed block reads as it was.
    await limited.write("kv", 2, pattern(6));
    expect(Buffer.compare(await limited.read("kv", 2, 1), pattern(6))).toBe(0);
    expect(Buffer.compare(await limited.read("kv", 100, 1), new Uint8Array(4096))).toBe(0);
    await limited.close();
    expect((await server.kill("SIGTERM")).code).toBe(0);
    expectStructuredLogs(server);
  });
});

describe("starting the server", () => {
  it("refuses a --dir that cannot be a directory, with one clear line", async () => {
    const file = path.join(tempDir("notdir"), "file");
    fs.writeFileSync(file, "not a directory");
    const server = new StorageProcess({ dir: file });
    const exit = await server.exited;
    expect(exit.code).toBe(1);
    expect(server.stdout).toBe("");
    expect(server.plainLines).toHaveLength(1);
    expect(server.plainLines[0]).toMatch(/^lockstep: cannot use storage directory .*file: (ENOTDIR|EEXIST) \(DISK_IO\)$/);
  });

  it("refuses a directory a live server holds", async () => {
    const dir = tempDir("locked");
    const { server } = await StorageProcess.start({ dir });
    const second = new StorageProcess({ dir });
    expect((await second.exited).code).toBe(1);
    expect(second.plainLines[0]).toMatch(new RegExp(`in use by process ${server.pid} .*\\(DISK_IO\\)`));
    await server.kill("SIGTERM");
    expect(fs.existsSync(path.join(dir, "LOCK"))).toBe(false);
  });

  it("refuses a non-loopback address without a token, and binds it with one", async () => {
    const open = new StorageProcess({ dir: tempDir("any"), args: ["--host", "0.0.0.0"] });
    const exit = await open.exited;
    expect(exit.code).toBe(2);
    expect(open.stdout).toBe("");
    expect(open.plainLines).toEqual(["lockstep: refusing to listen on 0.0.0.0 without a token: pass --token (or bind to 127.0.0.1) (USAGE)"]);

    const { server, url } = await StorageProcess.start({ dir: tempDir("any-token"), args: ["--host", "0.0.0.0"], token: "s3cret" });
    expect(url).toMatch(/^ws:\/\/0\.0\.0\.0:\d+$/);
    const storage = await client(url.replace("0.0.0.0", "127.0.0.1"), { token: "s3cret" });
    expect(await storage.readGeneration("kv")).toBeNull();
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("runs as `lockstep storage` from the real CLI, prints READY, exits 0 on SIGTERM", async () => {
    const dir = tempDir("cli");
    const { server, url } = await StorageProcess.start({ dir, realCli: true });
    expect(server.stdout).toMatch(new RegExp(`^READY \\{"url":"ws://127\\.0\\.0\\.1:\\d+","pid":${server.pid}\\}\\n$`));
    const storage = await client(url);
    expect((await storage.testAndSet("kv", 1, "host-a")).won).toBe(true);
    await storage.close();
    const exit = await server.kill("SIGTERM");
    expect(exit.code).toBe(0);
    await server.waitForMsg("storage server closed");
    expectStructuredLogs(server);
  });
});
