// `lockstep inspect <log>`: what a log holds, without running anything.

import { EventKind, InputKind, RecordKind, StopReason } from "../../protocol/records.js";
import { encodedRecordBytes, isCodecError } from "../../protocol/codec.js";
import { LogFileReader } from "../../protocol/log-file.js";
import { LockstepError } from "../errors.js";

export async function inspectCommand(file: string, json: boolean): Promise<number> {
  let reader: LogFileReader;
  try {
    reader = await LogFileReader.open(file, { allowTruncatedTail: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") throw new LockstepError("FILE_NOT_FOUND", `no such file: ${file}`);
    if (isCodecError(error)) throw new LockstepError("LOG_INVALID", `${file}: ${error.message}`);
    throw error;
  }
  const kinds = new Map<string, { count: number; bytes: number }>();
  let records = 0;
  let bytes = 0;
  let first: bigint | null = null;
  let last: bigint | null = null;
  let end: string | null = null;
  let damage: string | null = null;
  try {
    for await (const record of reader.records()) {
      const size = encodedRecordBytes(record);
      const name = kindName(record.kind, record.a);
      const entry = kinds.get(name) ?? { count: 0, bytes: 0 };
      entry.count++;
      entry.bytes += size;
      kinds.set(name, entry);
      records++;
      bytes += size;
      first ??= record.icount;
      last = record.icount;
      if (record.kind === RecordKind.End) end = `${StopReason[record.a] ?? record.a} (code ${record.value})`;
    }
  } catch (error) {
    if (!isCodecError(error)) throw error;
    damage = error.message;
  }
  const summary = {
    file,
    version: reader.header.version,
    moduleHash: "sha256:" + Buffer.from(reader.header.moduleHash).toString("hex"),
    created: new Date(reader.header.createdMs).toISOString(),
    config: JSON.parse(reader.header.config) as unknown,
    records,
    recordBytes: bytes,
    icountFirst: first?.toString() ?? null,
    icountLast: last?.toString() ?? null,
    end,
    truncatedTailBytes: reader.droppedTail?.bytes ?? 0,
    damage,
    kinds: Object.fromEntries([...kinds].sort((a, b) => b[1].count - a[1].count)),
  };
  if (json) {
    process.stdout.write(JSON.stringify(summary) + "\n");
  } else {
    const lines = [
      `log        ${file} (format v${summary.version})`,
      `module     ${summary.moduleHash}`,
      `created    ${summary.created}`,
      `config     ${reader.header.config}`,
      `records    ${records} (${bytes} bytes)`,
      `icount     ${summary.icountFirst ?? "-"} .. ${summary.icountLast ?? "-"}`,
      `end        ${end ?? "none (the recording did not finish)"}`,
    ];
    if (summary.truncatedTailBytes > 0) lines.push(`truncated  ${summary.truncatedTailBytes} bytes of a partial last record`);
    if (damage !== null) lines.push(`damaged    ${damage}`);
    lines.push("", "kind                      count        bytes");
    for (const [name, entry] of Object.entries(summary.kinds)) {
      lines.push(`${name.padEnd(24)} ${String(entry.count).padStart(7)} ${String(entry.bytes).padStart(12)}`);
    }
    process.stdout.write(lines.join("\n") + "\n");
  }
  return damage === null ? 0 : 1;
}

function kindName(kind: RecordKind, a: number): string {
  switch (kind) {
    case RecordKind.Event:
      return `event.${EventKind[a] ?? a}`;
    case RecordKind.Input:
      return `input.${InputKind[a] ?? a}`;
    default:
      return (RecordKind[kind] ?? String(kind)).toLowerCase();
  }
}
