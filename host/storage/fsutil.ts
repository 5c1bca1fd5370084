// Small durable file-system steps shared by the disk and register stores.

import fs from "node:fs/promises";

/**
 * Makes a directory's entries durable: after a file is created, renamed or linked in `dir`,
 * its name survives a crash only once the directory itself is fsync'd.
 */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Creates `dir` (and parents) if missing; if it was created, makes its name durable. */
export async function ensureDir(dir: string, parent: string): Promise<void> {
  try {
    await fs.mkdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return;
    throw error;
  }
  await fsyncDir(parent);
}

/** Writes all of `data` at `position`; a regular file may take it in several writes. */
export async function writeAll(handle: fs.FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  // Bounded: every pass writes at least one byte, or throws.
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    if (bytesWritten === 0) throw Object.assign(new Error("write wrote nothing"), { code: "EIO" });
    done += bytesWritten;
  }
}

/** Reads exactly `target.length` bytes at `position`; past the end of a sparse file reads zeros. */
export async function readAll(handle: fs.FileHandle, target: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await handle.read(target, done, target.length - done, position + done);
    // End of file: the rest stays zero, as a sparse hole reads.
    if (bytesRead === 0) return;
    done += bytesRead;
  }
}
