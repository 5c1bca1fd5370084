// The on-disk cache: hits return what was stored, anything damaged is ignored and rewritten,
// refusals are not cached, and an unusable directory only costs the cache.

import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { encodeEntry, entryPath } from "../../host/instrument/cache.js";
import { defaultCacheDir, instrument, instrumentCached, InstrumentError, instrumenterFingerprint } from "../../host/instrument/index.js";
import { fixture } from "./harness.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "lockstep-cache-test-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const wasm = fixture("calls.wat");
const expected = instrument(wasm);

function entryFile(): string {
  return entryPath(dir, expected.moduleHash);
}

describe("instrumentCached", () => {
  it("stores one entry per module and returns the same result as instrument", () => {
    expect(instrumentCached(wasm, dir)).toEqual(expected);
    expect(readdirSync(dir)).toEqual([entryFile().split("/").pop()]);
    expect(instrumentCached(wasm, dir)).toEqual(expected);
    instrumentCached(fixture("loops.wat"), dir);
    expect(readdirSync(dir).length).toBe(2);
  });

  it("serves a hit from the file (not by instrumenting again)", () => {
    // A well-formed entry whose payload differs from what instrument() would produce.
    const planted = { ...expected, globals: [{ exportName: "__ls_global_99", type: "i64" as const }] };
    writeFileSync(entryFile(), encodeEntry(planted));
    expect(instrumentCached(wasm, dir)).toEqual(planted);
  });

  const damages: [string, (bytes: Buffer) => Buffer][] = [
    ["truncated", (b) => b.subarray(0, b.length - 10)],
    ["one byte flipped in the wasm", (b) => {
      const c = Buffer.from(b);
      c[c.length - 100] = c[c.length - 100]! ^ 0x40;
      return c;
    }],
    ["empty", () => Buffer.alloc(0)],
    ["garbage", () => Buffer.from("not a cache entry at all, but long enough to have a digest.......")],
  ];
  for (const [name, damage] of damages) {
    it(`ignores and rewrites an entry that is ${name}`, () => {
      instrumentCached(wasm, dir);
      writeFileSync(entryFile(), damage(readFileSync(entryFile())));
      expect(instrumentCached(wasm, dir)).toEqual(expected);
      expect(readFileSync(entryFile())).toEqual(encodeEntry(expected));
    });
  }

  it("ignores an entry written for another module (hash mismatch inside)", () => {
    const other = instrument(fixture("loops.wat"));
    writeFileSync(entryFile(), encodeEntry(other));
    expect(instrumentCached(wasm, dir)).toEqual(expected);
  });

  it("does not cache refusals", () => {
    expect(() => instrumentCached(new Uint8Array([1, 2, 3]), dir)).toThrow(InstrumentError);
    expect(readdirSync(dir)).toEqual([]);
  });

  it("still instruments when the cache directory cannot be created", () => {
    const file = join(dir, "a-file");
    writeFileSync(file, "x");
    expect(instrumentCached(wasm, join(file, "cache"))).toEqual(expected);
  });

  it("keys entries by a fingerprint of the instrumenter, not only the input", () => {
    const fingerprint = instrumenterFingerprint();
    expect(fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(instrumenterFingerprint()).toBe(fingerprint);
    expect(entryFile()).not.toContain(expected.moduleHash);
  });

  it("defaults to .cache/instrument under the project root", () => {
    const cacheDir = defaultCacheDir();
    expect(cacheDir.endsWith(join(".cache", "instrument"))).toBe(true);
    expect(existsSync(join(dirname(dirname(cacheDir)), "package.json"))).toBe(true);
  });
});
