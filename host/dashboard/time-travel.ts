// Time travel for the dashboard: replay an uploaded log of an example guest up to an
// instruction count, exactly as `lockstep replay GUEST --log FILE --until COUNT --console` does
// (the same Machine in replay mode, the same instrumented module), and answer its result line
// and the console output the guest printed up to there.
//
// Bounded: one replay at a time, logs up to REPLAY_LOG_BYTES_MAX, console output kept up to
// REPLAY_CONSOLE_BYTES_MAX (the rest counted, not kept), and a deadline on the replay itself.

import fs from "node:fs";
import type { IncomingMessage } from "node:http";
import os from "node:os";
import path from "node:path";
import { LogFileReader } from "../../protocol/log-file.js";
import { VmConfig } from "../cli/vm-config.js";
import { ApiError, readBody } from "../cluster/http.js";
import { exampleGuests, loadGuest } from "../vm/guest.js";
import { Machine, MEMORY_WINDOW_BYTES_MAX } from "../vm/machine.js";
import { batchedReplaySource } from "../vm/replay-source.js";

export const REPLAY_LOG_BYTES_MAX = 64 * 1024 * 1024;
export const REPLAY_CONSOLE_BYTES_MAX = 1024 * 1024;
/** A replay runs at close to recording speed: a minute covers any log of that size here. */
const REPLAY_TIMEOUT_MS = 60_000;

export interface TimeTravelResult {
  /** What `lockstep replay` prints on stdout: {"icount":N,"digest":"sha256:…","entries":N}. */
  icount: string;
  digest: string;
  entries: number;
  stop: string;
  message: string | null;
  /** The guest's console output up to `icount`, as UTF-8 text. */
  console: string;
  consoleBytes: number;
  consoleTruncated: boolean;
  /** The bytes of linear memory asked for, as they were at `icount`, in hex; and its size. */
  memory: { offset: number; hex: string; sizeBytes: number } | null;
}

/** A window of memory to show, in bytes: a hex view's page. */
export interface MemoryWindow {
  offset: number;
  length: number;
}

const MEMORY_VIEW_BYTES_DEFAULT = 256;

let busy = false;

/** Replays `log` (the bytes of a log file) of the example `guestName` up to `until` (null: its end). */
export async function timeTravel(log: Buffer, guestName: string, until: bigint | null, memoryWindow: MemoryWindow | null = null): Promise<TimeTravelResult> {
  if (!exampleGuests().includes(guestName)) throw new ApiError("BAD_REQUEST", `guest: one of ${exampleGuests().join(", ")}, not "${guestName}"`);
  if (log.length === 0) throw new ApiError("BAD_REQUEST", "the request body must be a log file");
  if (busy) throw new ApiError("CONFLICT", "a replay is running already: one at a time");
  busy = true;
  // LogFileReader reads files: the upload goes to a private temporary folder, removed after.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lockstep-time-travel-"));
  let reader: LogFileReader | null = null;
  try {
    const file = path.join(dir, "upload.log");
    fs.writeFileSync(file, log, { mode: 0o600 });
    const guest = loadGuest(guestName);
    try {
      reader = await LogFileReader.open(file);
    } catch (error) {
      throw new ApiError("BAD_REQUEST", `not a Lockstep log: ${(error as Error).message}`);
    }
    if (Buffer.compare(Buffer.from(reader.header.moduleHash), Buffer.from(guest.hash)) !== 0) {
      throw new ApiError("BAD_REQUEST", `this log was recorded from another module than the ${guestName} example (LOG_MODULE_MISMATCH)`);
    }
    let config: VmConfig;
    try {
      config = VmConfig.parseJson(reader.header.config);
    } catch (error) {
      throw new ApiError("BAD_REQUEST", (error as Error).message);
    }
    const consoleChunks: Buffer[] = [];
    let consoleBytes = 0;
    let kept = 0;
    let feedError: unknown = null;
    const machine = new Machine({
      mode: "replay",
      module: guest.module,
      diskBlocks: config.diskBlocks,
      memoryPagesMax: config.memoryPagesMax,
      untilIcount: until,
      memoryWindow,
      replay: batchedReplaySource(reader.records(), (error) => (feedError = error)),
      onConsole: (text) => {
        consoleBytes += text.length;
        const room = REPLAY_CONSOLE_BYTES_MAX - kept;
        if (room <= 0) return;
        const chunk = Buffer.from(text.subarray(0, room));
        consoleChunks.push(chunk);
        kept += chunk.length;
      },
    });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        machine.stop();
        reject(new ApiError("UNAVAILABLE", `the replay did not end within ${REPLAY_TIMEOUT_MS} ms`));
      }, REPLAY_TIMEOUT_MS);
    });
    const result = await Promise.race([machine.done, deadline]).finally(() => clearTimeout(timer));
    if (feedError !== null) throw new ApiError("BAD_REQUEST", `the log is damaged: ${(feedError as Error).message}`);
    return {
      icount: String(result.icount),
      digest: result.digest,
      entries: result.entries,
      stop: result.stop,
      message: result.message,
      console: Buffer.concat(consoleChunks).toString("utf8"),
      consoleBytes,
      consoleTruncated: consoleBytes > kept,
      memory:
        result.memory === undefined
          ? null
          : { offset: result.memory.offset, hex: Buffer.from(result.memory.bytes).toString("hex"), sizeBytes: result.memory.sizeBytes },
    };
  } finally {
    await reader?.close().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
    busy = false;
  }
}


/**
 * `POST /api/replay?guest=NAME&until=COUNT&memoryOffset=BYTES&memoryBytes=N` with the log file
 * as the body (until: optional; the memory window defaults to the first 256 bytes).
 */
export async function replayRequest(req: IncomingMessage, url: URL): Promise<TimeTravelResult> {
  const guest = url.searchParams.get("guest") ?? "";
  const untilText = url.searchParams.get("until") ?? "";
  if (untilText !== "" && !/^\d{1,20}$/.test(untilText)) throw new ApiError("BAD_REQUEST", `until: an instruction count, not "${untilText.slice(0, 40)}"`);
  const offset = count(url.searchParams.get("memoryOffset"), "memoryOffset", 0, 0xffff_ffff) ?? 0;
  const length = count(url.searchParams.get("memoryBytes"), "memoryBytes", 0, MEMORY_WINDOW_BYTES_MAX) ?? MEMORY_VIEW_BYTES_DEFAULT;
  const log = await readBody(req, REPLAY_LOG_BYTES_MAX);
  return timeTravel(log, guest, untilText === "" ? null : BigInt(untilText), { offset, length });
}

function count(text: string | null, name: string, min: number, max: number): number | null {
  if (text === null || text === "") return null;
  const value = Number(text);
  if (!/^\d{1,10}$/.test(text) || value < min || value > max) throw new ApiError("BAD_REQUEST", `${name}: an integer from ${min} to ${max}, not "${text.slice(0, 40)}"`);
  return value;
}
