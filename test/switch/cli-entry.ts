// `lockstep switch` from source, for the tests: the same command function the CLI's
// `case "switch"` calls, with the CLI's error handling (one line, a stable code, an exit
// status), but without loading the VM's modules, which take seconds to compile through tsx.

import { exitWith } from "../../host/cli/exit.js";
import { switchCommand } from "../../host/cli/switch-command.js";

exitWith(switchCommand(process.argv.slice(2)));
