// `lockstep storage` from source, for the tests: the same command function the CLI's
// `case "storage"` calls, with the CLI's error handling (one line, a stable code, an exit
// status), but without loading the VM's modules, which take seconds to compile through tsx.

import { LockstepError } from "../../host/errors.js";
import { storageCommand } from "../../host/storage/cli.js";

storageCommand(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof LockstepError) {
      process.stderr.write(`lockstep: ${error.message} (${error.code})\n`);
      process.exitCode = error.code === "USAGE" ? 2 : 1;
    } else if (error instanceof TypeError && (error as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`lockstep: ${error.message} (USAGE)\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`lockstep: internal error: ${error instanceof Error ? error.stack : String(error)}\n`);
      process.exitCode = 70;
    }
  },
);
