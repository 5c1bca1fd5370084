import { AssertionError } from "node:assert";
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { encodeHeader, encodeRecord, encodeRecords } from "../../protocol/codec.js";
import { LogFileReader, type LogFileReaderOptions, LogFileWriter, readLogFile } from "../../protocol/log-file.js";
import type { LogRecord } from "../../protocol/records.js";
import { RecordKind } from "../../protocol/records.js";
import { bytes, codecErrorOf, codecErrorOfAsync, concat, header, record, renumber, sampleRecords } from "./helpers.js";

const dir = mkdtempSync(join(tmpdir(), "lockstep-log-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCounter = 0;
function path(name: string): string {
  fileCounter += 1;
  return join(dir, `${fileCounter}-${name}.lslog`);
}

function writeLog(name: string, records: LogRecord[], options = {}): string {
  const file = path(name);
  const writer = LogFileWriter.create(file, header(), options);
  for (const r of records) writer.append(r);
  writer.close();
  return file;
}

async function streamAll(file: string, options: LogFileReaderOptions = {}) {
  const reader = await LogFileReader.open(file, options);
  const records: LogRecord[] = [];
  for await (const r of reader.records()) records.push(r);
  return { header: reader.header, records, droppedTail: reader.droppedTail };
}

describe("LogFileWriter and readers", () => {
  const records = sampleRecords();

  it("round-trip through readLogFile", () => {
    const file = writeLog("roundtrip", records);
    expect(readLogFile(file)).toEqual({ header: header(), records, droppedTail: null });
    expect(statSync(file).size).toBe(encodeHeader(header()).length + encodeRecords(records).length);
  });

  it.each([1, 7, 64, 65_536])("round-trip through LogFileReader reading %i bytes at a time", async (chunkBytes) => {
    const file = writeLog("stream", records);
    expect(await streamAll(file, { chunkBytes })).toEqual({ header: header(), records, droppedTail: null });
  });

  it("reads a header larger than the first read", async () => {
    const file = path("long-config");
    const long = header({ config: JSON.stringify({ padding: "p".repeat(5000) }) });
    const writer = LogFileWriter.create(file, long);
    writer.append(records[0]!);
    writer.close();
    const streamed = await streamAll(file, { chunkBytes: 16 });
    expect(streamed.header).toEqual(long);
    expect(streamed.records).toEqual([records[0]]);
  });

  it("writes exactly the header and frames, in order", () => {
    const file = writeLog("bytes", records, { bufferBytes: 100 });
    const expected = concat(encodeHeader(header()), encodeRecords(records));
    expect(Buffer.from(readFileSync(file)).equals(Buffer.from(expected))).toBe(true);
  });

  it("buffers up to its bound, then writes, and puts everything on disk by close", () => {
    const file = path("buffered");
    const headerBytes = encodeHeader(header()).length;
    const small = renumber(Array.from({ length: 10 }, () => record({ kind: RecordKind.Event, a: 1, icount: 100n })));
    const frameBytes = encodeRecord(small[0]!).length;
    const writer = LogFileWriter.create(file, header(), { bufferBytes: frameBytes * 4 });
    for (const r of small.slice(0, 4)) writer.append(r);
    // Four frames fit the buffer: only the header is in the file.
    expect(statSync(file).size).toBe(headerBytes);
    writer.append(small[4]!);
    // The fifth did not fit: the four were written first.
    expect(statSync(file).size).toBe(headerBytes + 4 * frameBytes);
    writer.flush();
    expect(statSync(file).size).toBe(headerBytes + 5 * frameBytes);
    for (const r of small.slice(5)) writer.append(r);
    writer.close();
    expect(writer.bytesWritten).toBe(headerBytes + 10 * frameBytes);
    expect(writer.recordCount).toBe(10);
    expect(readLogFile(file).records).toEqual(small);
  });

  it("flushes before a frame one byte larger than the space left, never splitting it", () => {
    const file = path("boundary");
    const two = renumber([record({ kind: RecordKind.Event, a: 1 }), record({ kind: RecordKind.Event, a: 1 })]);
    const frameBytes = encodeRecord(two[0]!).length;
    const writer = LogFileWriter.create(file, header(), { bufferBytes: 2 * frameBytes - 1 });
    for (const r of two) writer.append(r);
    writer.close();
    expect(readLogFile(file).records).toEqual(two);
  });

  it("writes a record larger than its buffer straight through, in order", () => {
    const mixed = renumber([
      record({ kind: RecordKind.Event, a: 3, data: bytes(10) }),
      record({ kind: RecordKind.Event, a: 3, data: bytes(5000) }),
      record({ kind: RecordKind.Event, a: 3, data: bytes(20) }),
    ]);
    const file = writeLog("big-record", mixed, { bufferBytes: 64 });
    expect(readLogFile(file).records).toEqual(mixed);
  });

  it("starts at firstSeq and refuses appends out of order or after close (programmer errors)", () => {
    const file = path("seq");
    const writer = LogFileWriter.create(file, header(), { firstSeq: 10n });
    expect(() => writer.append(sampleRecords()[0]!)).toThrow(AssertionError);
    writer.append(sampleRecords(10n)[0]!);
    expect(() => writer.append(sampleRecords(10n)[2]!)).toThrow(/expected seq 11, got 12/);
    writer.close();
    writer.close(); // idempotent
    expect(() => writer.append(sampleRecords(10n)[1]!)).toThrow(/closed/);
    // Its file starts at 10: readers that expect 0 say so, unless told not to check.
    codecErrorOf(() => readLogFile(file), "LOG_BAD_SEQ");
    expect(readLogFile(file, { checkSeq: false }).records).toEqual([sampleRecords(10n)[0]]);
  });

  it("never clobbers an existing file unless asked", () => {
    const file = writeLog("exists", records.slice(0, 1));
    expect(() => LogFileWriter.create(file, header())).toThrow(/EEXIST/);
    expect(readLogFile(file).records).toHaveLength(1);
    const writer = LogFileWriter.create(file, header(), { overwrite: true });
    writer.close();
    expect(readLogFile(file).records).toHaveLength(0);
  });
});

describe("a file cut short by a crash", () => {
  // The last frame has a two-byte length prefix, so cuts fall inside the prefix too.
  const records = renumber([
    ...sampleRecords().slice(0, 5),
    record({ kind: RecordKind.Event, icount: 99_999n, a: 3, b: 1, value: 200n, data: bytes(200) }),
  ]);
  const full = writeLog("full", records);
  const fullBytes = readFileSync(full);
  const headerBytes = encodeHeader(header()).length;
  const lastFrameStart = headerBytes + encodeRecords(records.slice(0, -1)).length;

  function cut(length: number): string {
    const file = path(`cut-${length}`);
    writeFileSync(file, fullBytes.subarray(0, length));
    return file;
  }

  it("is LOG_TRUNCATED with the count of complete records, at every cut inside the last frame", async () => {
    for (let length = lastFrameStart + 1; length < fullBytes.length; length++) {
      const file = cut(length);
      for (const error of [
        codecErrorOf(() => readLogFile(file), "LOG_TRUNCATED"),
        await codecErrorOfAsync(() => streamAll(file, { chunkBytes: 16 }), "LOG_TRUNCATED"),
      ]) {
        expect(error.recordCount).toBe(records.length - 1);
        expect(error.offset).toBe(lastFrameStart);
        expect(error.message).toContain(`after ${records.length - 1} complete records`);
      }
    }
  });

  it("keeps the complete prefix with allowTruncatedTail, and says what it dropped", async () => {
    for (let length = lastFrameStart + 1; length < fullBytes.length; length++) {
      const file = cut(length);
      const droppedTail = { offset: lastFrameStart, bytes: length - lastFrameStart };
      const expected = { header: header(), records: records.slice(0, -1), droppedTail };
      expect(readLogFile(file, { allowTruncatedTail: true })).toEqual(expected);
      expect(await streamAll(file, { allowTruncatedTail: true, chunkBytes: 16 })).toEqual(expected);
    }
  });

  it("has nothing to drop when the cut falls between frames", async () => {
    const file = cut(lastFrameStart);
    expect(readLogFile(file)).toEqual({ header: header(), records: records.slice(0, -1), droppedTail: null });
    expect((await streamAll(file, { allowTruncatedTail: true })).droppedTail).toBeNull();
  });

  it("is an error even with allowTruncatedTail when the header itself is cut", async () => {
    for (const length of [0, 5, 9, 30, headerBytes - 1]) {
      const file = cut(length);
      codecErrorOf(() => readLogFile(file, { allowTruncatedTail: true }), "LOG_TRUNCATED");
      await codecErrorOfAsync(() => streamAll(file, { allowTruncatedTail: true }), "LOG_TRUNCATED");
    }
  });

  it("is corruption, not truncation, when a frame before the tail is damaged", async () => {
    const damaged = Buffer.from(fullBytes);
    damaged[headerBytes + 3]! ^= 0x01;
    const file = path("damaged");
    writeFileSync(file, damaged);
    truncateSync(file, fullBytes.length - 2);
    const error = codecErrorOf(() => readLogFile(file, { allowTruncatedTail: true }), "LOG_CHECKSUM");
    expect(error.offset).toBe(headerBytes);
    expect(error.recordCount).toBe(0);
    await codecErrorOfAsync(() => streamAll(file, { allowTruncatedTail: true }), "LOG_CHECKSUM");
  });
});

describe("files that are not readable logs", () => {
  it("reports wrong magic and unknown versions from either reader", async () => {
    const notLog = path("not-a-log");
    writeFileSync(notLog, "hello, world: not a log at all\n");
    expect(codecErrorOf(() => readLogFile(notLog), "LOG_BAD_MAGIC").offset).toBe(0);
    await codecErrorOfAsync(() => LogFileReader.open(notLog), "LOG_BAD_MAGIC");

    const newer = path("newer");
    const bytesV2 = concat(encodeHeader(header()), encodeRecords(sampleRecords()));
    new DataView(bytesV2.buffer).setUint16(8, 2, true);
    writeFileSync(newer, bytesV2);
    expect(codecErrorOf(() => readLogFile(newer), "LOG_BAD_VERSION").message).toMatch(/version 2, this reader knows version 1 only/);
    await codecErrorOfAsync(() => LogFileReader.open(newer), "LOG_BAD_VERSION");
  });

  it("reports a gap in sequence numbers as lost records", async () => {
    const records = sampleRecords();
    const gap = path("gap");
    writeFileSync(gap, concat(encodeHeader(header()), encodeRecords([...records.slice(0, 2), ...records.slice(3)])));
    expect(codecErrorOf(() => readLogFile(gap), "LOG_BAD_SEQ").recordCount).toBe(2);
    await codecErrorOfAsync(() => streamAll(gap), "LOG_BAD_SEQ");
    expect(readLogFile(gap, { checkSeq: false }).records).toHaveLength(records.length - 1);
  });

  it("refuses to read a file larger than fileBytesMax into memory", () => {
    const file = writeLog("large", sampleRecords());
    const error = codecErrorOf(() => readLogFile(file, { fileBytesMax: 100 }), "LOG_TOO_LARGE");
    expect(error.message).toMatch(/readLogFile reads at most 100; use LogFileReader/);
  });
});

describe("LogFileReader life cycle", () => {
  it("can stop early, and iterates once", async () => {
    const file = writeLog("early", sampleRecords());
    const reader = await LogFileReader.open(file, { chunkBytes: 8 });
    const records = reader.records();
    const first = await records.next();
    expect(first.value).toEqual(sampleRecords()[0]);
    await records.return(undefined);
    await reader.close(); // idempotent after the generator closed it
    await expect(reader.records().next()).rejects.toThrow(AssertionError);
  });
});
