// Builds a hand-written WAT guest into a .wasm file, as a user's toolchain would.
import fs from "node:fs";
import path from "node:path";
import wabtInit from "wabt";

export async function watFile(watPath: string, outDir: string): Promise<string> {
  const wabt = await wabtInit();
  const module = wabt.parseWat(path.basename(watPath), fs.readFileSync(watPath, "utf8"), {
    mutable_globals: true,
    bulk_memory: true,
  });
  const { buffer } = module.toBinary({});
  module.destroy();
  const out = path.join(outDir, path.basename(watPath, ".wat") + ".wasm");
  fs.writeFileSync(out, buffer);
  return out;
}
