// A VM snapshot in a form a browser can read (the dashboard's live replica): no v8
// serialization there. JSON for the structure, with each byte array moved into a binary tail
// and each bigint written as a decimal string:
//
//   "LSSN" | JSON length (u32 LE) | JSON | byte arrays, back to back
//
// In the JSON a byte array is {"$bytes":[offset,length]} into the tail, a bigint is
// {"$bigint":"123"}. Decoding checks the result's shape (snapshot-schema.ts).

import { SnapshotSchema } from "./snapshot-schema.js";
import type { VmSnapshot } from "./snapshot.js";

const MAGIC = [0x4c, 0x53, 0x53, 0x4e]; // "LSSN"
const HEAD_BYTES = 8;
/** The structure without its byte arrays is small: device state, globals. */
const JSON_BYTES_MAX = 64 * 1024 * 1024;

export function encodePortableSnapshot(snapshot: VmSnapshot): Uint8Array {
  const blobs: Uint8Array[] = [];
  let tailBytes = 0;
  const json = JSON.stringify(snapshot, (_key, value: unknown) => {
    if (value instanceof Uint8Array) {
      blobs.push(value);
      tailBytes += value.length;
      return { $bytes: [tailBytes - value.length, value.length] };
    }
    if (typeof value === "bigint") return { $bigint: value.toString() };
    return value;
  });
  const text = new TextEncoder().encode(json);
  const out = new Uint8Array(HEAD_BYTES + text.length + tailBytes);
  out.set(MAGIC, 0);
  new DataView(out.buffer).setUint32(4, text.length, true);
  out.set(text, HEAD_BYTES);
  let offset = HEAD_BYTES + text.length;
  for (const blob of blobs) {
    out.set(blob, offset);
    offset += blob.length;
  }
  return out;
}

/** Throws an Error that names what is wrong with `bytes`. */
export function decodePortableSnapshot(bytes: Uint8Array): VmSnapshot {
  if (bytes.length < HEAD_BYTES || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error("not a portable snapshot (bad magic)");
  const jsonBytes = new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(4, true);
  if (jsonBytes > JSON_BYTES_MAX || HEAD_BYTES + jsonBytes > bytes.length) throw new Error(`portable snapshot truncated: ${bytes.length} bytes, JSON of ${jsonBytes}`);
  const tail = bytes.subarray(HEAD_BYTES + jsonBytes);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(HEAD_BYTES, HEAD_BYTES + jsonBytes)), (_key, v: unknown) => {
      if (typeof v !== "object" || v === null) return v;
      const tagged = v as { $bytes?: unknown; $bigint?: unknown };
      if (Array.isArray(tagged.$bytes)) {
        const [offset, length] = tagged.$bytes as number[];
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset! < 0 || length! < 0 || offset! + length! > tail.length) {
          throw new Error(`a byte array at ${String(offset)}+${String(length)} lies outside the ${tail.length}-byte tail`);
        }
        // A copy: memory is handed to WebAssembly and must not alias the download.
        return tail.slice(offset, offset! + length!);
      }
      if (typeof tagged.$bigint === "string" && /^-?\d{1,40}$/.test(tagged.$bigint)) return BigInt(tagged.$bigint);
      return v;
    });
  } catch (error) {
    throw new Error(`portable snapshot does not decode: ${(error as Error).message}`);
  }
  const parsed = SnapshotSchema.safeParse(value);
  if (!parsed.success) throw new Error(`portable snapshot is malformed: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return parsed.data as VmSnapshot;
}
