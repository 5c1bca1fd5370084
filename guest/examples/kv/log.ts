// Persistence: an append-only log of records on the virtual disk, with a superblock and two
// regions used alternately by compaction.
//
// Disk layout (4096-byte blocks):
//   block 0                  superblock
//   blocks [1, 1+R)          region 0       R = (disk blocks - 1) / 2
//   blocks [1+R, 1+2R)       region 1
//
// Superblock (little-endian u32s): magic "LSKV", version, active region, region epoch,
// epoch, region blocks, crc32 of the preceding 24 bytes.
//
// Record: magic "LKVR" u32, payload length u32, seq u32 (1, 2, ... within the region),
// epoch u32, crc32 u32 (of bytes 0..16 and 20..end), op count u32, then the ops:
//   op u8 (1 SET, 2 DEL, 3 CLEAR), key length u32, value length u32, key, value.
// One record per client command, so a command is all or nothing after a crash.
//
// Epochs: every boot and every compaction takes the next epoch and writes it to the
// superblock before writing any record with it. Recovery accepts a chain of records with
// consecutive seq and non-decreasing epochs within [region epoch, superblock epoch] and stops
// at the first record that fails a check, so a torn write or stale bytes from an older use of
// the region end the log instead of being replayed.
//
// Commits: records are applied to memory at once and queued; one write at a time (a group
// commit of everything queued) appends them at the tail, rewriting the partial tail block.
// A reply that depends on a record is held until the commit holding it completes (see
// durableLsn). When the tail would pass the end of the region, compaction writes a snapshot of
// the whole key space into the other region, then switches the superblock to it.

import {
  BLOCK_SIZE, ByteQueue, DiskRequest, diskBlocks, readBlocks, writeBlocks, print, exit,
} from "../../sdk/index";
import { crc32 } from "./crc32";
import * as db from "./store";

const SB_MAGIC: u32 = 0x564b534c; // "LSKV"
const SB_VERSION: u32 = 1;
const REC_MAGIC: u32 = 0x52564b4c; // "LKVR"
const REC_HEADER: i32 = 24;
const OP_HEADER: i32 = 9;
export const OP_SET: u8 = 1;
export const OP_DEL: u8 = 2;
export const OP_CLEAR: u8 = 3;

const DISK_BLOCKS_MIN: i32 = 16;
const SCAN_BLOCKS: i32 = 256; // recovery reads 1 MiB at a time
const SNAPSHOT_CHUNK: i32 = 1 << 20; // compaction writes 1 MiB at a time
const SNAPSHOT_WRITES_MAX: i32 = 4; // compaction writes in flight

/** One log record: the writes of one command. */
export class LogRecord {
  ops: Array<u8> = new Array<u8>();
  keys: Array<string> = new Array<string>();
  vals: Array<Uint8Array | null> = new Array<Uint8Array | null>();
  bytes: i64 = REC_HEADER;

  set(key: string, value: Uint8Array): void {
    this.ops.push(OP_SET);
    this.keys.push(key);
    this.vals.push(value);
    this.bytes += OP_HEADER + key.length + value.length;
  }

  del(key: string): void {
    this.ops.push(OP_DEL);
    this.keys.push(key);
    this.vals.push(null);
    this.bytes += OP_HEADER + key.length;
  }

  clear(): void {
    this.ops.push(OP_CLEAR);
    this.keys.push("");
    this.vals.push(null);
    this.bytes += OP_HEADER;
  }
}

// ---- state ----

let persistent = false; // false: no disk, memory only (every LSN is durable at once)
let regionBlocks: i32 = 0;
let activeRegion: i32 = 0;
let regionEpoch: u32 = 0;
let epoch: u32 = 0; // this boot's epoch (or the last compaction's)
let tailOff: i64 = 0; // bytes of records in the active region
let tailSeq: u32 = 0; // seq of the last record
const tailImage = new Uint8Array(BLOCK_SIZE); // the block holding tailOff, zero past it

let lastLsn: i64 = 0; // records appended
let durable: i64 = 0; // records durable on disk (all of them, up to this one)
let pending = new Array<LogRecord>();
let pendingBytes: i64 = 0;
let busy = false; // a commit or compaction is in flight
let durableListener: (() => void) | null = null;

// statistics
let commits: i64 = 0;
let compactions: i64 = 0;
let recordsWritten: i64 = 0;

function regionStart(region: i32): i32 {
  return 1 + region * regionBlocks;
}

function regionBytes(): i64 {
  return <i64>regionBlocks * BLOCK_SIZE;
}

function fatal(msg: string): void {
  print(`kv: FATAL: ${msg}`);
  exit(2);
}

// ---- public API ----

/** True when the store is backed by the disk. */
export function isPersistent(): bool {
  return persistent;
}

/** The LSN of the last record appended. */
export function lastAppended(): i64 {
  return lastLsn;
}

/** Every record up to this LSN is on disk. */
export function durableLsn(): i64 {
  return durable;
}

/** Most bytes the key space may take (its snapshot must fit in half a region). */
export function capacityBytes(): i64 {
  return persistent ? regionBytes() / 2 : i64.MAX_VALUE;
}

/** Runs `fn` whenever durableLsn advances. */
export function onDurable(fn: () => void): void {
  durableListener = fn;
}

/** Queues a record (already applied to memory); returns its LSN. */
export function append(rec: LogRecord): i64 {
  lastLsn++;
  if (!persistent) {
    durable = lastLsn;
    return lastLsn;
  }
  pending.push(rec);
  pendingBytes += rec.bytes;
  return lastLsn;
}

/** Starts a commit of the queued records if none is in flight (call after each batch). */
export function kick(): void {
  if (!persistent || busy || pending.length == 0) return;
  if (tailOff + pendingBytes > regionBytes()) {
    startCompaction();
    return;
  }
  startCommit();
}

export function stats(): string {
  return `commits=${commits} compactions=${compactions} records=${recordsWritten} region=${activeRegion} tail=${tailOff} epoch=${epoch}`;
}

// ---- serialization ----

/** Appends record `rec` (seq, epoch) to `q`. */
function serialize(q: ByteQueue, rec: LogRecord, seq: u32, ep: u32): void {
  const size = <i32>rec.bytes;
  const p = q.reserve(size);
  store<u32>(p, REC_MAGIC, 0);
  store<u32>(p, <u32>(size - REC_HEADER), 4);
  store<u32>(p, seq, 8);
  store<u32>(p, ep, 12);
  store<u32>(p, <u32>rec.ops.length, 20);
  let w = p + <usize>REC_HEADER;
  for (let i = 0, n = rec.ops.length; i < n; i++) {
    const key = rec.keys[i];
    const val = rec.vals[i];
    const vlen = val === null ? 0 : val.length;
    store<u8>(w, rec.ops[i]);
    store<u32>(w, <u32>key.length, 1);
    store<u32>(w, <u32>vlen, 5);
    w += <usize>OP_HEADER;
    db.keyBytesTo(key, w);
    w += <usize>key.length;
    if (val !== null) {
      memory.copy(w, val.dataStart, <usize>vlen);
      w += <usize>vlen;
    }
  }
  assert(w == p + <usize>size, "record size mismatch");
  let c = crc32(0, p, 16);
  c = crc32(c, p + 20, size - 20);
  store<u32>(p, c, 16);
  q.commit(size);
}

/** Applies the ops of a record found at `p` (payload of `len` bytes); false if malformed. */
function applyRecord(p: usize, len: i32, opCount: u32): bool {
  let r = p;
  const end = p + <usize>len;
  for (let i: u32 = 0; i < opCount; i++) {
    if (r + <usize>OP_HEADER > end) return false;
    const op = load<u8>(r);
    const klen = load<u32>(r, 1);
    const vlen = load<u32>(r, 5);
    r += <usize>OP_HEADER;
    if (<u64>klen + <u64>vlen > <u64>(end - r)) return false;
    if (op == OP_SET) {
      db.set(db.keyFrom(r, klen), db.valueFrom(r + <usize>klen, vlen));
    } else if (op == OP_DEL) {
      db.del(db.keyFrom(r, klen));
    } else if (op == OP_CLEAR) {
      db.clear();
    } else {
      return false;
    }
    r += <usize>(klen + vlen);
  }
  return r == end;
}

// ---- superblock ----

function superblock(region: i32, rEpoch: u32, ep: u32): Uint8Array {
  const b = new Uint8Array(BLOCK_SIZE);
  const p = b.dataStart;
  store<u32>(p, SB_MAGIC, 0);
  store<u32>(p, SB_VERSION, 4);
  store<u32>(p, <u32>region, 8);
  store<u32>(p, rEpoch, 12);
  store<u32>(p, ep, 16);
  store<u32>(p, <u32>regionBlocks, 20);
  store<u32>(p, crc32(0, p, 24), 24);
  return b;
}

// ---- commit ----

let commitLsn: i64 = 0;
let commitEnd: i64 = 0;
let commitSeq: u32 = 0;
let commitFirstBlock: i64 = 0;
let commitBuf: ByteQueue | null = null;

function startCommit(): void {
  const headLen = <i32>(tailOff & (BLOCK_SIZE - 1));
  const q = new ByteQueue(<i32>(headLen + pendingBytes + BLOCK_SIZE));
  q.append(tailImage.dataStart, headLen);
  let seq = tailSeq;
  for (let i = 0, n = pending.length; i < n; i++) serialize(q, pending[i], ++seq, epoch);
  const used = q.length;
  const blocks = (used + BLOCK_SIZE - 1) / BLOCK_SIZE;
  const padded = blocks * BLOCK_SIZE;
  memory.fill(q.reserve(padded - used), 0, <usize>(padded - used));
  q.commit(padded - used);

  commitLsn = lastLsn;
  commitEnd = tailOff + pendingBytes;
  commitSeq = seq;
  commitFirstBlock = tailOff >> 12;
  commitBuf = q;
  recordsWritten += pending.length;
  pending = new Array<LogRecord>();
  pendingBytes = 0;
  busy = true;
  const req = writeBlocks(regionStart(activeRegion) + <i32>commitFirstBlock, blocks, q.view(0, padded), onCommitDone);
  if (req.done && req.status < 0) fatal(`log write rejected: ${req.status}`);
}

function onCommitDone(req: DiskRequest): void {
  busy = false;
  if (req.status != 0) fatal(`log write failed: ${req.status}`);
  const q = commitBuf!;
  // the new tail block image: the last block written, cut at the new tail
  const tailBlock = commitEnd >> 12;
  const within = <i32>(commitEnd & (BLOCK_SIZE - 1));
  memory.fill(tailImage.dataStart, 0, BLOCK_SIZE);
  if (within > 0) {
    const from = <i32>((tailBlock - commitFirstBlock) * BLOCK_SIZE);
    memory.copy(tailImage.dataStart, q.ptr + <usize>from, <usize>within);
  }
  commitBuf = null;
  tailOff = commitEnd;
  tailSeq = commitSeq;
  durable = commitLsn;
  commits++;
  const l = durableListener;
  if (l !== null) l();
  kick();
}

// ---- compaction ----

let snapKeys: Array<string> = new Array<string>();
let snapVals: Array<Uint8Array> = new Array<Uint8Array>();
let snapIdx: i32 = 0;
let snapSeq: u32 = 0;
let snapBlock: i32 = 0; // next block (relative to the target region) to write
let snapBuf: ByteQueue = new ByteQueue(16);
let snapWrites: i32 = 0;
let snapSerialized = false;
let snapLsn: i64 = 0;
let snapRegion: i32 = 0;
let snapEpoch: u32 = 0;
let snapTail: i64 = 0;

function startCompaction(): void {
  busy = true;
  compactions++;
  snapKeys = db.keys();
  snapVals = db.values();
  snapIdx = 0;
  snapSeq = 0;
  snapBlock = 0;
  snapBuf = new ByteQueue(SNAPSHOT_CHUNK + BLOCK_SIZE);
  snapWrites = 0;
  snapSerialized = false;
  snapLsn = lastLsn; // the snapshot holds the effect of every record appended so far
  snapRegion = 1 - activeRegion;
  snapEpoch = epoch + 1;
  snapTail = 0;
  pending = new Array<LogRecord>();
  pendingBytes = 0;
  if (db.liveBytes() + BLOCK_SIZE > regionBytes()) fatal("key space larger than a log region");
  snapPump();
}

function snapPump(): void {
  while (!snapSerialized && snapWrites < SNAPSHOT_WRITES_MAX) {
    const n = snapKeys.length;
    while (snapBuf.length < SNAPSHOT_CHUNK && snapIdx < n) {
      const rec = new LogRecord();
      rec.set(snapKeys[snapIdx], snapVals[snapIdx]);
      serialize(snapBuf, rec, ++snapSeq, snapEpoch);
      snapTail += rec.bytes;
      snapIdx++;
    }
    let len = snapBuf.length;
    if (snapIdx == n) {
      snapSerialized = true;
      const within = <i32>(snapTail & (BLOCK_SIZE - 1));
      memory.fill(tailImage.dataStart, 0, BLOCK_SIZE);
      if (within > 0) memory.copy(tailImage.dataStart, snapBuf.ptr + <usize>(len - within), <usize>within);
      const padded = (len + BLOCK_SIZE - 1) & ~(BLOCK_SIZE - 1);
      memory.fill(snapBuf.reserve(padded - len), 0, <usize>(padded - len));
      snapBuf.commit(padded - len);
      len = padded;
    } else {
      len &= ~(BLOCK_SIZE - 1); // whole blocks; the rest waits for the next chunk
    }
    if (len > 0) {
      const blocks = len / BLOCK_SIZE;
      const chunk = snapBuf.slice(0, len);
      snapBuf.consume(len);
      snapWrites++;
      const req = writeBlocks(regionStart(snapRegion) + snapBlock, blocks, chunk, onSnapWritten);
      if (req.done && req.status < 0) fatal(`snapshot write rejected: ${req.status}`);
      snapBlock += blocks;
    }
  }
  if (snapSerialized && snapWrites == 0) {
    // every snapshot block is on disk: switch the superblock to the new region
    const req = writeBlocks(0, 1, superblock(snapRegion, snapEpoch, snapEpoch), onSnapSwitched);
    if (req.done && req.status < 0) fatal(`superblock write rejected: ${req.status}`);
  }
}

function onSnapWritten(req: DiskRequest): void {
  if (req.status != 0) fatal(`snapshot write failed: ${req.status}`);
  snapWrites--;
  snapPump();
}

function onSnapSwitched(req: DiskRequest): void {
  if (req.status != 0) fatal(`superblock write failed: ${req.status}`);
  activeRegion = snapRegion;
  regionEpoch = snapEpoch;
  epoch = snapEpoch;
  tailOff = snapTail;
  tailSeq = snapSeq;
  snapKeys = new Array<string>();
  snapVals = new Array<Uint8Array>();
  snapBuf = new ByteQueue(16);
  busy = false;
  durable = snapLsn;
  print(`kv: compacted ${tailSeq} keys into region ${activeRegion} (${tailOff} bytes, epoch ${epoch})`);
  const l = durableListener;
  if (l !== null) l();
  kick();
}

// ---- recovery ----

let readyCallback: (() => void) | null = null;
let sbBuf = new Uint8Array(BLOCK_SIZE);
let sbEpoch: u32 = 0;
let scanBlock: i32 = 0; // blocks of the region read so far
let scanBuf: ByteQueue = new ByteQueue(16);
let scanLastEpoch: u32 = 0;
let scanRecords: i64 = 0;
let scanBuffer: Uint8Array = new Uint8Array(0);

/** Recovers the key space from the disk, then calls `ready`. */
export function recover(ready: () => void): void {
  readyCallback = ready;
  const blocks = diskBlocks();
  if (blocks < DISK_BLOCKS_MIN) {
    persistent = false;
    print(blocks == 0 ? "kv: no disk: data is kept in memory only" : `kv: disk too small (${blocks} blocks): data is kept in memory only`);
    ready();
    return;
  }
  persistent = true;
  regionBlocks = (blocks - 1) / 2;
  const req = readBlocks(0, 1, sbBuf, onSuperblockRead);
  if (req.done && req.status < 0) fatal(`superblock read rejected: ${req.status}`);
}

function onSuperblockRead(req: DiskRequest): void {
  if (req.status != 0) fatal(`superblock read failed: ${req.status}`);
  const p = sbBuf.dataStart;
  const valid = load<u32>(p, 0) == SB_MAGIC && load<u32>(p, 4) == SB_VERSION &&
    load<u32>(p, 24) == crc32(0, p, 24) && load<u32>(p, 20) == <u32>regionBlocks &&
    load<u32>(p, 8) <= 1;
  if (!valid) {
    // a fresh (or foreign) disk: format it
    print(`kv: formatting disk (${regionBlocks} blocks per log region)`);
    activeRegion = 0;
    regionEpoch = 1;
    epoch = 1;
    tailOff = 0;
    tailSeq = 0;
    writeBootSuperblock();
    return;
  }
  activeRegion = <i32>load<u32>(p, 8);
  regionEpoch = load<u32>(p, 12);
  sbEpoch = load<u32>(p, 16);
  epoch = sbEpoch + 1;
  tailOff = 0;
  tailSeq = 0;
  scanBlock = 0;
  scanLastEpoch = regionEpoch;
  scanBuf = new ByteQueue(SCAN_BLOCKS * BLOCK_SIZE);
  scanBuffer = new Uint8Array(SCAN_BLOCKS * BLOCK_SIZE);
  scanNext();
}

function scanNext(): void {
  const n = min(SCAN_BLOCKS, regionBlocks - scanBlock);
  if (n <= 0) {
    scanDone();
    return;
  }
  const req = readBlocks(regionStart(activeRegion) + scanBlock, n, scanBuffer, onScanRead);
  if (req.done && req.status < 0) fatal(`log read rejected: ${req.status}`);
}

function onScanRead(req: DiskRequest): void {
  if (req.status != 0) fatal(`log read failed: ${req.status}`);
  scanBlock += req.count;
  scanBuf.append(scanBuffer.dataStart, req.count * BLOCK_SIZE);
  // replay every complete, valid record
  while (true) {
    if (scanBuf.length < REC_HEADER) break;
    const p = scanBuf.ptr;
    const len = load<u32>(p, 4);
    const seq = load<u32>(p, 8);
    const ep = load<u32>(p, 12);
    const valid = load<u32>(p, 0) == REC_MAGIC && seq == tailSeq + 1 &&
      ep >= scanLastEpoch && ep <= sbEpoch &&
      <i64>len <= regionBytes() - tailOff - REC_HEADER;
    if (!valid) {
      scanDone();
      return;
    }
    const size = REC_HEADER + <i32>len;
    if (scanBuf.length < size) break; // the rest of the record is in the next chunk
    let c = crc32(0, p, 16);
    c = crc32(c, p + 20, size - 20);
    if (c != load<u32>(p, 16) || !applyRecord(p + <usize>REC_HEADER, <i32>len, load<u32>(p, 20))) {
      scanDone();
      return;
    }
    tailOff += size;
    tailSeq = seq;
    scanLastEpoch = ep;
    scanRecords++;
    scanBuf.consume(size);
  }
  scanNext();
}

function scanDone(): void {
  scanBuf = new ByteQueue(16);
  scanBuffer = new Uint8Array(0);
  print(`kv: recovered ${db.keyCount()} keys from ${scanRecords} records (region ${activeRegion}, ${tailOff} bytes, epoch ${sbEpoch})`);
  memory.fill(tailImage.dataStart, 0, BLOCK_SIZE);
  if ((tailOff & (BLOCK_SIZE - 1)) != 0) {
    // reload the partial tail block: commits rewrite it with the new records after its bytes
    const req = readBlocks(regionStart(activeRegion) + <i32>(tailOff >> 12), 1, tailImage, onTailRead);
    if (req.done && req.status < 0) fatal(`tail read rejected: ${req.status}`);
  } else {
    writeBootSuperblock();
  }
}

function onTailRead(req: DiskRequest): void {
  if (req.status != 0) fatal(`tail read failed: ${req.status}`);
  const within = <i32>(tailOff & (BLOCK_SIZE - 1));
  memory.fill(tailImage.dataStart + <usize>within, 0, <usize>(BLOCK_SIZE - within));
  writeBootSuperblock();
}

function writeBootSuperblock(): void {
  // Records written from now on carry `epoch`; the superblock must say so first.
  const req = writeBlocks(0, 1, superblock(activeRegion, regionEpoch, epoch), onBootSuperblockWritten);
  if (req.done && req.status < 0) fatal(`superblock write rejected: ${req.status}`);
}

function onBootSuperblockWritten(req: DiskRequest): void {
  if (req.status != 0) fatal(`superblock write failed: ${req.status}`);
  sbBuf = new Uint8Array(0);
  const r = readyCallback;
  readyCallback = null;
  if (r !== null) r();
}
