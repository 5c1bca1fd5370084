// Log files: the header followed by record frames, nothing else (docs/log-format.md).
//
// Writing is synchronous and buffered: the recorder appends records as the guest produces
// them, and a full buffer is written out before the next append returns. That is the
// back-pressure the design asks for (a full log buffer stalls the primary, DESIGN.md
// invariant 6) rather than a queue that grows.
//
// A crash while writing leaves a partial final frame. Readers report it as LOG_TRUNCATED with
// the count of complete records before it, or, with `allowTruncatedTail`, keep those records
// and say where the torn tail starts, so that a writer resuming the file can cut it there.

import assert from "node:assert/strict";
import { closeSync, fstatSync, fsyncSync, openSync, readFileSync, writeSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import {
  CHECKSUM_BYTES,
  decodeHeader,
  encodeHeader,
  encodedRecordBytes,
  HEADER_FIXED_BYTES,
  RecordDecoder,
  tryDecodeHeader,
  writeRecord,
} from "./codec.js";
import { codecError, isCodecError } from "./errors.js";
import type { LogHeader, LogRecord } from "./records.js";

export interface ReadLogOptions {
  /**
   * Keep the complete records before a partial final frame (a crash while writing) instead of
   * throwing LOG_TRUNCATED. A truncated header is always an error: it leaves nothing to keep.
   * Corruption (LOG_CHECKSUM and the rest) is always an error.
   */
  allowTruncatedTail?: boolean;
  /** Check that sequence numbers are dense from 0, as a file written by LogFileWriter is. Default true. */
  checkSeq?: boolean;
}

export interface ReadLogFileOptions extends ReadLogOptions {
  /** readLogFile holds the whole file in memory: larger files are refused. Default 1 GiB. */
  fileBytesMax?: number;
}

export interface LogFileReaderOptions extends ReadLogOptions {
  /** Bytes read per call; memory use is this plus one frame. Default 64 KiB. */
  chunkBytes?: number;
}

/** A partial final frame that a reader dropped (allowTruncatedTail). */
export interface DroppedTail {
  /** File offset where the partial frame starts: the file's good prefix ends here. */
  offset: number;
  bytes: number;
}

export interface LogFile {
  header: LogHeader;
  records: LogRecord[];
  droppedTail: DroppedTail | null;
}

const FILE_BYTES_MAX_DEFAULT = 1024 * 1024 * 1024;
const CHUNK_BYTES_DEFAULT = 64 * 1024;
const WRITER_BUFFER_BYTES_DEFAULT = 256 * 1024;

/** Reads a whole log file into memory. Throws CodecError for a bad file, Node errors for I/O. */
export function readLogFile(path: string, options: ReadLogFileOptions = {}): LogFile {
  const fileBytesMax = options.fileBytesMax ?? FILE_BYTES_MAX_DEFAULT;
  const fd = openSync(path, "r");
  let bytes: Uint8Array;
  try {
    const size = fstatSync(fd).size;
    if (size > fileBytesMax) {
      throw codecError("LOG_TOO_LARGE", 0, `file is ${size} bytes, readLogFile reads at most ${fileBytesMax}; use LogFileReader`);
    }
    bytes = readFileSync(fd);
  } finally {
    closeSync(fd);
  }
  const { header, bytesRead } = decodeHeader(bytes);
  const decoder = newDecoder(bytesRead, options);
  const records = decoder.push(bytes.subarray(bytesRead));
  return { header, records, droppedTail: finishTail(decoder, options, bytes.length) };
}

/** Streams a log file: the header on open, then records chunk by chunk, in bounded memory. */
export class LogFileReader {
  /** Set when `records()` has finished and dropped a partial final frame. */
  droppedTail: DroppedTail | null = null;
  private started = false;
  private closed = false;

  private constructor(
    private readonly handle: FileHandle,
    readonly header: LogHeader,
    /** File bytes read with the header that belong to the records. */
    private readonly leftover: Uint8Array,
    private readonly decoder: RecordDecoder,
    private position: number,
    private readonly chunkBytes: number,
    private readonly options: ReadLogOptions,
  ) {}

  /** Opens the file and reads and checks its header. */
  static async open(path: string, options: LogFileReaderOptions = {}): Promise<LogFileReader> {
    const chunkBytes = options.chunkBytes ?? CHUNK_BYTES_DEFAULT;
    assert(Number.isSafeInteger(chunkBytes) && chunkBytes > 0, "chunkBytes must be a positive integer");
    const handle = await open(path, "r");
    try {
      // Two reads at most: the first covers the fixed part (and usually all) of the header and
      // tells the header's size; the second reads the rest of a long config.
      let bytes = await readUpTo(handle, 0, Math.max(chunkBytes, HEADER_FIXED_BYTES + CHECKSUM_BYTES));
      let decoded = tryDecodeHeader(bytes);
      if (typeof decoded === "number" && bytes.length >= HEADER_FIXED_BYTES) {
        bytes = concat(bytes, await readUpTo(handle, bytes.length, decoded - bytes.length));
        decoded = tryDecodeHeader(bytes);
      }
      // Still short: the file ends inside its header.
      const { header, bytesRead } = typeof decoded === "number" ? decodeHeader(bytes) : decoded;
      return new LogFileReader(
        handle,
        header,
        bytes.subarray(bytesRead),
        newDecoder(bytesRead, options),
        bytes.length,
        chunkBytes,
        options,
      );
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  /**
   * Yields every record, then checks the end of the file (LOG_TRUNCATED, or `droppedTail` with
   * allowTruncatedTail). Closes the file when done, also when the caller stops early. Once only.
   */
  async *records(): AsyncGenerator<LogRecord, void, undefined> {
    assert(!this.started && !this.closed, "records() can be iterated once, before close()");
    this.started = true;
    try {
      yield* this.decoder.push(this.leftover);
      const chunk = new Uint8Array(this.chunkBytes);
      // Ends at end of file; each pass reads at least one byte.
      for (;;) {
        const { bytesRead } = await this.handle.read(chunk, 0, chunk.length, this.position);
        if (bytesRead === 0) break;
        this.position += bytesRead;
        // The decoder copies what it keeps, so the chunk buffer can be reused.
        yield* this.decoder.push(chunk.subarray(0, bytesRead));
      }
      this.droppedTail = finishTail(this.decoder, this.options, this.position);
    } finally {
      await this.close();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

export interface LogFileWriterOptions {
  /** Records are collected up to this many bytes before a write. Default 256 KiB. */
  bufferBytes?: number;
  /** Replace an existing file. Default false: a recording is never clobbered by accident. */
  overwrite?: boolean;
  /** Sequence number of the first record appended. Default 0. */
  firstSeq?: bigint;
}

/**
 * Appends records to a new log file. Synchronous: `append` returns once the record is in the
 * buffer, or on disk if the buffer was full. `flush` hands the buffer to the OS, `sync` also
 * makes it durable, `close` does both. After an I/O error the writer only rethrows it.
 */
export class LogFileWriter {
  private readonly buffer: Uint8Array;
  private filled = 0;
  private nextSeq: bigint;
  private appended = 0;
  private written = 0;
  private closed = false;
  private failure: unknown = null;

  private constructor(
    private readonly fd: number,
    bufferBytes: number,
    firstSeq: bigint,
  ) {
    this.buffer = new Uint8Array(bufferBytes);
    this.nextSeq = firstSeq;
  }

  /** Creates the file, writes the header and makes the file's existence durable. */
  static create(path: string, header: LogHeader, options: LogFileWriterOptions = {}): LogFileWriter {
    const bufferBytes = options.bufferBytes ?? WRITER_BUFFER_BYTES_DEFAULT;
    assert(Number.isSafeInteger(bufferBytes) && bufferBytes > 0, "bufferBytes must be a positive integer");
    const headerBytes = encodeHeader(header);
    const fd = openSync(path, options.overwrite === true ? "w" : "wx");
    const writer = new LogFileWriter(fd, bufferBytes, options.firstSeq ?? 0n);
    try {
      writer.writeOut(headerBytes);
      fsyncSync(fd);
      syncDirectory(dirname(path));
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    return writer;
  }

  /** Records appended (buffered or written). */
  get recordCount(): number {
    return this.appended;
  }

  /** Bytes handed to the OS so far, header included. */
  get bytesWritten(): number {
    return this.written;
  }

  append(record: LogRecord): void {
    this.checkUsable();
    // A gap written here would be reported by every reader as lost records: refuse it at the
    // source, where the bug is.
    if (record.seq !== this.nextSeq) assert.fail(`append out of order: expected seq ${this.nextSeq}, got ${record.seq}`);
    const frameBytes = encodedRecordBytes(record);
    if (frameBytes > this.buffer.length - this.filled) this.flush();
    if (frameBytes > this.buffer.length) {
      const frame = new Uint8Array(frameBytes);
      writeRecord(frame, 0, record);
      this.writeOut(frame);
    } else {
      this.filled = writeRecord(this.buffer, this.filled, record);
    }
    this.nextSeq += 1n;
    this.appended += 1;
  }

  flush(): void {
    this.checkUsable();
    if (this.filled === 0) return;
    this.writeOut(this.buffer.subarray(0, this.filled));
    this.filled = 0;
  }

  sync(): void {
    this.flush();
    this.attempt(() => fsyncSync(this.fd));
  }

  /** Flushes, syncs and closes. The file is closed even if flushing fails. */
  close(): void {
    if (this.closed) return;
    try {
      if (this.failure === null) this.sync();
    } finally {
      this.closed = true;
      closeSync(this.fd);
    }
  }

  private checkUsable(): void {
    assert(!this.closed, "log writer is closed");
    if (this.failure !== null) throw this.failure;
  }

  private writeOut(bytes: Uint8Array): void {
    this.attempt(() => {
      let pos = 0;
      // Ends when all is written: writeSync writes at least one byte or throws.
      while (pos < bytes.length) {
        const count = writeSync(this.fd, bytes, pos, bytes.length - pos);
        assert(count > 0, "writeSync made no progress");
        pos += count;
        this.written += count;
      }
    });
  }

  /** Runs an I/O step; a failure leaves the file in an unknown state, so it sticks. */
  private attempt(step: () => void): void {
    try {
      step();
    } catch (error) {
      this.failure = error;
      throw error;
    }
  }
}

function newDecoder(headerBytes: number, options: ReadLogOptions): RecordDecoder {
  return new RecordDecoder({
    offset: headerBytes,
    ...(options.checkSeq === false ? {} : { expectSeq: 0n }),
  });
}

/** Ends a file's decoding: a partial final frame is dropped if allowed, else thrown. */
function finishTail(decoder: RecordDecoder, options: ReadLogOptions, fileBytes: number): DroppedTail | null {
  try {
    decoder.finish();
    return null;
  } catch (error) {
    if (options.allowTruncatedTail === true && isCodecError(error, "LOG_TRUNCATED")) {
      return { offset: error.offset, bytes: fileBytes - error.offset };
    }
    throw error;
  }
}

/** Reads `length` bytes at `position`, fewer only at end of file. */
async function readUpTo(handle: FileHandle, position: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let filled = 0;
  // Ends at `length` bytes or end of file; each pass reads at least one byte.
  while (filled < length) {
    const { bytesRead } = await handle.read(out, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return out.subarray(0, filled);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** A new file's directory entry is durable only once the directory itself is synced. */
function syncDirectory(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
