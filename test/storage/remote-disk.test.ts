// RemoteDisk: FileDisk's surface over the storage server. Completions come as DiskDone events;
// an outage is waited out rather than shown to the guest, up to a bound, after which the guest
// sees -5; errors the server reports are -5 at once.

import { afterAll, describe, expect, it } from "vitest";
import { RemoteDisk, STATUS_IO_ERROR } from "../../host/devices/remote-disk.js";
import { LockstepError } from "../../host/errors.js";
import type { StorageClient } from "../../host/storage/client.js";
import { isStorageError, storageError } from "../../host/storage/errors.js";
import type { DeviceEvent } from "../../host/vm/messages.js";
import { EventKind } from "../../protocol/records.js";
import { client, killAll, nextState, pattern, StorageProcess, tempDir } from "./helpers.js";

afterAll(killAll);

/** Collects DiskDone events; `done(id)` resolves with the event for IO `id`. */
class Completions {
  readonly events: DeviceEvent[] = [];
  private readonly waiters = new Map<number, (event: DeviceEvent) => void>();

  readonly deliver = (event: DeviceEvent): void => {
    expect(event.kind).toBe(EventKind.DiskDone);
    expect(this.events.some((seen) => seen.arg === event.arg), `IO ${event.arg} completed twice`).toBe(false);
    this.events.push(event);
    this.waiters.get(event.arg)?.(event);
  };

  done(id: number): Promise<DeviceEvent> {
    const seen = this.events.find((event) => event.arg === id);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.set(id, resolve));
  }
}

async function setup(options: { dir?: string; client?: Parameters<typeof client>[1] } = {}) {
  const dir = options.dir ?? tempDir("remote");
  const started = await StorageProcess.start({ dir });
  const storage = await client(started.url, options.client);
  return { dir, ...started, storage };
}

describe("RemoteDisk", () => {
  it("delivers DiskDone with status 0 and read data, in FileDisk's shape", async () => {
    const { server, storage } = await setup();
    const completions = new Completions();
    const disk = await RemoteDisk.open(storage, "kv", 256, completions.deliver);
    expect(disk.blocks).toBe(256);
    disk.write(1, 10, pattern(1, 3));
    disk.read(2, 10, 3);
    disk.read(3, 200, 1);
    expect(await completions.done(1)).toEqual({ kind: EventKind.DiskDone, arg: 1, value: 0 });
    const read = await completions.done(2);
    expect(read.value).toBe(0);
    expect(Buffer.compare(read.data!, pattern(1, 3)), "the read after an overlapping write sees it").toBe(0);
    expect(Buffer.compare((await completions.done(3)).data!, new Uint8Array(4096))).toBe(0);
    await disk.close();
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("keeps submission order between overlapping IOs, FileDisk's semantics", async () => {
    const { server, storage } = await setup();
    const completions = new Completions();
    const disk = await RemoteDisk.open(storage, "kv", 64, completions.deliver);
    // Overlapping ranges written in a burst, then read: the last write of each block wins.
    for (let id = 1; id <= 30; id++) disk.write(id, id % 5, pattern(id, 2));
    disk.read(100, 0, 6);
    const read = await completions.done(100);
    const expected = new Uint8Array(6 * 4096);
    for (let id = 1; id <= 30; id++) expected.set(pattern(id, 2), (id % 5) * 4096);
    expect(Buffer.compare(read.data!, expected)).toBe(0);
    await disk.close();
    expect(completions.events).toHaveLength(31);
    expect(completions.events.every((event) => event.value === 0)).toBe(true);
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("waits out a storage restart: IOs in flight complete with status 0, not an error", async () => {
    const { dir, server, port, storage } = await setup();
    const completions = new Completions();
    const disk = await RemoteDisk.open(storage, "kv", 64, completions.deliver);
    disk.write(1, 0, pattern(7));
    await completions.done(1);

    // Stopped, so that these are surely in flight (or waiting) when the server dies.
    server.child.kill("SIGSTOP");
    disk.write(2, 1, pattern(8));
    disk.read(3, 1, 1);
    disk.write(4, 2, pattern(9, 2));
    const unreachable = nextState(storage, "unreachable");
    await server.kill("SIGKILL");
    await unreachable;
    expect(completions.events.map((event) => event.arg)).toEqual([1]);

    const restarted = await StorageProcess.start({ dir, port });
    const write = await completions.done(2);
    const read = await completions.done(3);
    expect(write.value).toBe(0);
    expect(read.value).toBe(0);
    expect(Buffer.compare(read.data!, pattern(8))).toBe(0);
    expect((await completions.done(4)).value).toBe(0);
    disk.read(5, 0, 4);
    const all = await completions.done(5);
    expect(Buffer.compare(all.data!, Buffer.concat([pattern(7), pattern(8), pattern(9, 2)]))).toBe(0);
    await disk.close();
    await storage.close();
    await restarted.server.kill("SIGTERM");
  });

  it("past its retry bound, the guest sees -5 rather than waiting forever", async () => {
    const { server, storage } = await setup();
    const completions = new Completions();
    const errors: { code: string; final: boolean }[] = [];
    const disk = await RemoteDisk.open(storage, "kv", 64, completions.deliver, {
      retryMsMax: 300,
      onError: (error, _io, final) => errors.push({ code: isStorageError(error) ? error.code : String(error), final }),
    });
    const unreachable = nextState(storage, "unreachable");
    await server.kill("SIGKILL");
    await unreachable;
    disk.write(1, 0, pattern(1));
    disk.read(2, 8, 1);
    expect((await completions.done(1)).value).toBe(STATUS_IO_ERROR);
    const read = await completions.done(2);
    expect(read.value).toBe(STATUS_IO_ERROR);
    expect(read.data).toBeUndefined();
    expect(errors.filter((error) => error.final)).toHaveLength(2);
    expect(errors.every((error) => error.code === "UNREACHABLE")).toBe(true);
    await disk.close();
    await storage.close();
  });

  it("an error the server reports (IO_ERROR: EFBIG) is -5 at once, and the disk goes on", async () => {
    const dir = tempDir("remote-efbig");
    const first = await setup({ dir });
    await first.storage.openDisk("kv", 1024);
    await first.storage.close();
    await first.server.kill("SIGTERM");

    const { server, url } = await StorageProcess.start({ dir, fileSizeLimitBlocks: 128 });
    const storage = await client(url);
    const completions = new Completions();
    const finals: string[] = [];
    const disk = await RemoteDisk.open(storage, "kv", 1024, completions.deliver, {
      onError: (error, _io, final) => finals.push(`${isStorageError(error) ? error.code : error}:${final}`),
    });
    disk.write(1, 500, pattern(1));
    disk.write(2, 3, pattern(2));
    expect((await completions.done(1)).value).toBe(STATUS_IO_ERROR);
    expect((await completions.done(2)).value).toBe(0);
    // Not retried: one attempt, reported final.
    expect(finals).toEqual(["IO_ERROR:true"]);
    await disk.close();
    await storage.close();
    await server.kill("SIGTERM");
  });

  it("refuses to open a disk with another block count: a clean DISK_IO error", async () => {
    const { server, storage } = await setup();
    await RemoteDisk.open(storage, "kv", 64, () => undefined);
    const error = await RemoteDisk.open(storage, "kv", 128, () => undefined).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockstepError);
    expect((error as LockstepError).code).toBe("DISK_IO");
    expect((error as Error).message).toMatch(/cannot open remote disk kv: disk kv has 64 blocks, not 128 \(DISK_MISMATCH\)/);
    await storage.close();
    await server.kill("SIGTERM");
  });
});

describe("RemoteDisk ordering under retries (a scripted client)", () => {
  /**
   * A client whose first write is answered BUSY (nothing done), as a loaded server answers: the
   * one case where a later write could overtake the retry of an earlier one.
   */
  function scriptedClient() {
    const blocks = new Map<number, number>();
    const applied: number[] = [];
    let busyOnce = true;
    const fake = {
      openDisk: async (_vm: string, count: number) => ({ blocks: count, created: true }),
      waitReachable: async () => undefined,
      write: async (_vm: string, block: number, data: Uint8Array) => {
        await Promise.resolve();
        if (busyOnce) {
          busyOnce = false;
          throw storageError("BUSY", "scripted");
        }
        applied.push(data[0]!);
        blocks.set(block, data[0]!);
      },
      read: async () => new Uint8Array(4096),
    };
    return { client: fake as unknown as StorageClient, blocks, applied };
  }

  function block(value: number): Uint8Array {
    return new Uint8Array(4096).fill(value);
  }

  it("a write waits for an earlier overlapping write's retry: the last write wins", async () => {
    const { client: fake, blocks, applied } = scriptedClient();
    const completions = new Completions();
    const disk = await RemoteDisk.open(fake, "kv", 16, completions.deliver, { busyDelayMinMs: 1 });
    disk.write(1, 4, block(1));
    disk.write(2, 4, block(2));
    // A non-overlapping IO does not wait.
    disk.write(3, 9, block(3));
    await disk.close();
    expect(completions.events.map((event) => event.value)).toEqual([0, 0, 0]);
    expect(blocks.get(4), `applied in the order ${applied.join(",")}`).toBe(2);
    expect(applied.indexOf(3)).toBeLessThan(applied.indexOf(2));
  });
});
