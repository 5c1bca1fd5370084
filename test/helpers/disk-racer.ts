// The disk-racer fixture (test/fixtures/guests/disk-racer.wat) with `ops` IOs in all, written
// where a test can compile it (watFile).

import fs from "node:fs";
import path from "node:path";
import { PROJECT_ROOT } from "../../host/vm/guest.js";

export function writeDiskRacer(dir: string, ops: number): string {
  const text = fs.readFileSync(path.join(PROJECT_ROOT, "test/fixtures/guests/disk-racer.wat"), "utf8");
  const sized = text.replace("(i32.const 400)) ;; OPS", `(i32.const ${ops})) ;; OPS`);
  if (sized === text && ops !== 400) throw new Error("disk-racer.wat lost its OPS marker");
  const file = path.join(dir, "racer.wat");
  fs.writeFileSync(file, sized);
  return file;
}
