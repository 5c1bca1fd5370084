// How every `lockstep` command ends: a user's error is one line with a stable code and an
// exit status (2 for usage, 1 otherwise); only a bug of ours prints a stack (status 70).
import { LockstepError } from "../errors.js";

export function exitWith(command: Promise<number>): void {
  command.then(
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
}
