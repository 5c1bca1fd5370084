// The virtual block disk: asynchronous reads and writes of 4096-byte blocks.
//
// A request of any size is split into IOs of at most 256 blocks; IOs beyond the host's 64 in
// flight wait in an SDK queue. The request's callback runs once, in the bottom half, when
// every IO completed. The buffer belongs to the SDK until then: a read's data is copied into
// it when its completion is delivered, and a queued write's bytes are read when it is
// submitted.

import {
  disk_blocks, disk_read, disk_write, EV_DISK_DONE,
  DISK_BLOCK_SIZE, DISK_IO_BLOCKS_MAX, DISK_IO_IN_FLIGHT_MAX, ERR_LIMIT, ERR_BAD_ARGUMENT,
} from "./abi";
import { setEventHandler } from "./events";
import { halt } from "./system";

/** Bytes per disk block. */
export const BLOCK_SIZE: i32 = DISK_BLOCK_SIZE;

/** One read or write of `count` blocks starting at `block`. */
export class DiskRequest {
  /** Status once done: 0, or the first error of its IOs. */
  status: i32 = 0;
  /** True once the callback ran (or the request was rejected). */
  done: bool = false;
  /** Anything the caller wants to find in the callback. */
  userTag: i64 = 0;

  _queued: i32 = 0; // IOs waiting in the SDK
  _inFlight: i32 = 0; // IOs submitted to the host
  _failed: bool = false; // an IO was rejected at submission

  constructor(
    public isWrite: bool,
    public block: i32,
    public count: i32,
    public buffer: Uint8Array,
    public callback: ((req: DiskRequest) => void) | null = null,
  ) {}

  /** Called when done; runs the callback. Subclasses may override instead. */
  onComplete(): void {
    const cb = this.callback;
    if (cb !== null) cb(this);
  }

  /** True when done with status 0. */
  get ok(): bool {
    return this.done && this.status == 0;
  }
}

class DiskIo {
  constructor(
    public req: DiskRequest,
    public block: i32,
    public count: i32,
    public ptr: usize,
  ) {}
}

const inFlight = new Map<i32, DiskIo>();
const waiting = new Array<DiskIo>();
let waitingHead: i32 = 0;
let nextTag: i32 = 1;
let installed = false;

/** Size of the virtual disk in blocks (0: the VM has no disk). */
export function diskBlocks(): i32 {
  return disk_blocks();
}

/**
 * Reads `count` blocks from `block` into `buffer` (at least count*4096 bytes). `callback`
 * runs when the data is in the buffer. Returns the request; if the host rejected it at once
 * (bad range), it is already done with a negative status and the callback will not run.
 */
export function readBlocks(
  block: i32, count: i32, buffer: Uint8Array,
  callback: ((req: DiskRequest) => void) | null = null, userTag: i64 = 0,
): DiskRequest {
  const req = new DiskRequest(false, block, count, buffer, callback);
  req.userTag = userTag;
  submit(req);
  return req;
}

/**
 * Writes `count` blocks from `buffer` at `block`. `callback` runs when the write is durable
 * on the virtual disk. Same rejection rule as readBlocks.
 */
export function writeBlocks(
  block: i32, count: i32, buffer: Uint8Array,
  callback: ((req: DiskRequest) => void) | null = null, userTag: i64 = 0,
): DiskRequest {
  const req = new DiskRequest(true, block, count, buffer, callback);
  req.userTag = userTag;
  submit(req);
  return req;
}

/** Submits a request built by hand (e.g. a subclass overriding onComplete). Returns its status. */
export function submit(req: DiskRequest): i32 {
  install();
  if (req.count <= 0 || req.block < 0 || <i64>req.buffer.byteLength < <i64>req.count * DISK_BLOCK_SIZE) {
    req.status = ERR_BAD_ARGUMENT;
    req.done = true;
    return req.status;
  }
  for (let off = 0; off < req.count; off += DISK_IO_BLOCKS_MAX) {
    const n = min(DISK_IO_BLOCKS_MAX, req.count - off);
    waiting.push(new DiskIo(req, req.block + off, n, req.buffer.dataStart + <usize>off * DISK_BLOCK_SIZE));
    req._queued++;
  }
  const outer = submitting;
  submitting = req;
  pump();
  submitting = outer;
  return req.done ? req.status : 0;
}

/** Waits (halting; other handlers run meanwhile) until `req` is done; returns its status. */
export function waitFor(req: DiskRequest): i32 {
  while (!req.done) halt();
  return req.status;
}

/** IOs submitted to the host and not yet completed. */
export function diskIosInFlight(): i32 {
  return inFlight.size;
}

/** IOs waiting in the SDK for one of the host's 64 slots. */
export function diskIosQueued(): i32 {
  return waiting.length - waitingHead;
}

// The request being submitted: if the host rejects it synchronously, it is done without a
// callback (the caller sees the status returned by submit/readBlocks/writeBlocks).
let submitting: DiskRequest | null = null;

// Submits queued IOs while the host has room.
function pump(): void {
  while (waitingHead < waiting.length && inFlight.size < DISK_IO_IN_FLIGHT_MAX) {
    const io = waiting[waitingHead];
    const req = io.req;
    if (req._failed) { // an earlier IO of the same request was rejected: skip the rest
      waitingHead++;
      req._queued--;
      maybeFinish(req);
      continue;
    }
    const tag = nextTag;
    nextTag = nextTag == i32.MAX_VALUE ? 1 : nextTag + 1;
    const r = req.isWrite
      ? disk_write(io.block, io.count, io.ptr, tag)
      : disk_read(io.block, io.count, io.ptr, tag);
    if (r == ERR_LIMIT && inFlight.size > 0) break; // the host is full: retry on a completion
    waitingHead++;
    req._queued--;
    if (r < 0) {
      req._failed = true;
      if (req.status == 0) req.status = r;
      maybeFinish(req);
      continue;
    }
    req._inFlight++;
    inFlight.set(tag, io);
  }
  if (waitingHead == waiting.length) {
    waiting.length = 0;
    waitingHead = 0;
  } else if (waitingHead >= 1024 && waitingHead * 2 > waiting.length) {
    waiting.splice(0, waitingHead);
    waitingHead = 0;
  }
}

function maybeFinish(req: DiskRequest): void {
  if (req.done || req._inFlight > 0) return;
  if (req._queued > 0 && !req._failed) return;
  if (req._failed && req._queued > 0) return; // its remaining IOs are skipped by pump first
  req.done = true;
  if (req !== submitting) req.onComplete();
}

function onDiskDone(tag: i32, status: i32): void {
  if (!inFlight.has(tag)) return;
  const io = inFlight.get(tag);
  inFlight.delete(tag);
  const req = io.req;
  req._inFlight--;
  if (status != 0 && req.status == 0) req.status = status;
  maybeFinish(req);
  pump();
}

function install(): void {
  if (installed) return;
  installed = true;
  setEventHandler(EV_DISK_DONE, onDiskDone);
}
