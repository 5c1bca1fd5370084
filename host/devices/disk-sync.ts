// Resyncing a non-shared disk copy (§4.1): "the two copies of the virtual disks must be
// explicitly synced up in some manner when fault tolerance is first enabled. In addition, the
// disks can get out of sync after a failure, so they must be explicitly resynced when the
// backup VM is restarted after a failure."
//
// The new backup's host sends the hash of each block of its copy (an old copy from an earlier
// life, or nothing), a range at a time; the primary's side answers with the blocks whose
// contents differ. Only those travel.
//
// Why a copy taken while the primary runs on is good enough. The sync starts after the
// clone's snapshot and before the new backup replays anything; each block arrives with
// whatever the primary's copy held when it was read, somewhere between the snapshot and now.
// The backup then replays every write from the snapshot on, in order, onto its copy (reads
// come from the log: a disk of its own takes logged reads), so each block ends with the last
// write to it, whichever value the sync delivered; writes in flight at the snapshot are written
// by the clone at its start (vcpu.ts) and again by a go-live (§3.4). What the guest reads never
// depends on the copy while it replays, only once it is live, and by then the copy has every
// write the log holds.

import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { WebSocket, WebSocketServer } from "ws";
import { assert, LockstepError } from "../errors.js";
import { BLOCK_BYTES } from "../vm/limits.js";

/** Blocks per request: an answer is at most this many blocks (about 1 MiB). */
export const SYNC_RANGE_BLOCKS = 256;
const HASH_BYTES = 16;
const MESSAGE_BYTES_MAX = 8 + SYNC_RANGE_BLOCKS * (4 + BLOCK_BYTES);
/** A sync that has not finished after this long is abandoned (the clone fails and is retried). */
const SYNC_TIMEOUT_MS = 120_000;

export interface DiskSyncSource {
  /** ws://host:port/sync/TOKEN: the token is the only credential; one sync per source. */
  url: string;
  /** Blocks sent so far. */
  readonly blocksSent: number;
  close(): Promise<void>;
}

/** Serves `file` (the primary's copy, `blocks` blocks) to one new backup. */
export async function serveDiskSync(file: string, blocks: number, host = "127.0.0.1"): Promise<DiskSyncSource> {
  const token = randomBytes(16).toString("hex");
  const fd = fs.openSync(file, "r");
  const server = new WebSocketServer({ host, port: 0, path: `/sync/${token}`, maxPayload: MESSAGE_BYTES_MAX });
  await new Promise<void>((resolve, reject) => server.once("listening", resolve).once("error", reject));
  const address = server.address() as { port: number };
  let sent = 0;
  let used = false;
  server.on("connection", (socket) => {
    if (used) return socket.close(1008, "one sync per source");
    used = true;
    socket.on("message", (data: Buffer) => {
      try {
        socket.send(answer(fd, blocks, data, (n) => (sent += n)));
      } catch (error) {
        socket.close(1008, (error as Error).message.slice(0, 100));
      }
    });
  });
  return {
    url: `ws://${host}:${address.port}/sync/${token}`,
    get blocksSent() {
      return sent;
    },
    async close() {
      for (const client of server.clients) client.terminate();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.closeSync(fd);
    },
  };
}

/** One request: u32 first block, u32 count, count × 16-byte hashes. The answer: u32 first, u32 n, n × (u32 block, data). */
function answer(fd: number, blocks: number, request: Buffer, counted: (n: number) => void): Buffer {
  if (request.length < 8) throw new LockstepError("DISK_IO", "sync request too short");
  const from = request.readUInt32LE(0);
  const count = request.readUInt32LE(4);
  if (count < 1 || count > SYNC_RANGE_BLOCKS || from + count > blocks || request.length !== 8 + count * HASH_BYTES) {
    throw new LockstepError("DISK_IO", `bad sync request ${from}+${count}`);
  }
  const data = Buffer.alloc(count * BLOCK_BYTES);
  fs.readSync(fd, data, 0, data.length, from * BLOCK_BYTES);
  const parts: Buffer[] = [Buffer.alloc(8)];
  let n = 0;
  for (let i = 0; i < count; i++) {
    const block = data.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES);
    if (hashBlock(block).equals(request.subarray(8 + i * HASH_BYTES, 8 + (i + 1) * HASH_BYTES))) continue;
    const header = Buffer.alloc(4);
    header.writeUInt32LE(from + i);
    parts.push(header, block);
    n++;
  }
  parts[0]!.writeUInt32LE(from, 0);
  parts[0]!.writeUInt32LE(n, 4);
  counted(n);
  return Buffer.concat(parts);
}

function hashBlock(block: Uint8Array): Buffer {
  return createHash("sha256").update(block).digest().subarray(0, HASH_BYTES);
}

/**
 * Brings `file` (this host's copy, created sparse if missing) to the contents of the source's
 * copy, block by block, sending only hashes for blocks that are already equal. Durable
 * (fdatasync) before it resolves.
 */
export async function syncDisk(url: string, file: string, blocks: number): Promise<{ blocksReceived: number }> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  try {
    const size = fs.fstatSync(fd).size;
    if (size !== blocks * BLOCK_BYTES) fs.ftruncateSync(fd, blocks * BLOCK_BYTES);
    const socket = new WebSocket(url, { maxPayload: MESSAGE_BYTES_MAX });
    const timer = setTimeout(() => socket.terminate(), SYNC_TIMEOUT_MS);
    try {
      await new Promise<void>((resolve, reject) => socket.once("open", resolve).once("error", reject));
      let received = 0;
      // One range at a time: bounded memory, and the source reads each range just before it answers.
      for (let from = 0; from < blocks; from += SYNC_RANGE_BLOCKS) {
        const count = Math.min(SYNC_RANGE_BLOCKS, blocks - from);
        const local = Buffer.alloc(count * BLOCK_BYTES);
        fs.readSync(fd, local, 0, local.length, from * BLOCK_BYTES);
        const request = Buffer.alloc(8 + count * HASH_BYTES);
        request.writeUInt32LE(from, 0);
        request.writeUInt32LE(count, 4);
        for (let i = 0; i < count; i++) hashBlock(local.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES)).copy(request, 8 + i * HASH_BYTES);
        const reply = await exchange(socket, request);
        if (reply.length < 8 || reply.readUInt32LE(0) !== from) throw new LockstepError("DISK_IO", "sync answer out of order");
        const n = reply.readUInt32LE(4);
        if (reply.length !== 8 + n * (4 + BLOCK_BYTES)) throw new LockstepError("DISK_IO", "malformed sync answer");
        for (let i = 0; i < n; i++) {
          const at = 8 + i * (4 + BLOCK_BYTES);
          const block = reply.readUInt32LE(at);
          if (block < from || block >= from + count) throw new LockstepError("DISK_IO", `sync answer names block ${block} outside ${from}+${count}`);
          fs.writeSync(fd, reply, at + 4, BLOCK_BYTES, block * BLOCK_BYTES);
        }
        received += n;
      }
      fs.fdatasyncSync(fd);
      return { blocksReceived: received };
    } finally {
      clearTimeout(timer);
      socket.close();
    }
  } catch (error) {
    if (error instanceof LockstepError) throw error;
    throw new LockstepError("DISK_IO", `cannot sync disk copy ${file} from ${url.replace(/\/sync\/.*$/, "/sync/…")}: ${(error as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
}

function exchange(socket: WebSocket, request: Buffer): Promise<Buffer> {
  assert(socket.readyState === WebSocket.OPEN || socket.readyState === WebSocket.CONNECTING, "a sync socket is open");
  return new Promise((resolve, reject) => {
    const onMessage = (data: Buffer) => {
      cleanup();
      resolve(data);
    };
    const onClose = (code: number, reason: Buffer) => {
      cleanup();
      reject(new LockstepError("DISK_IO", `sync source closed the connection (${code} ${reason.toString()})`));
    };
    const cleanup = () => {
      socket.off("message", onMessage);
      socket.off("close", onClose);
    };
    socket.on("message", onMessage);
    socket.on("close", onClose);
    socket.send(request);
  });
}
