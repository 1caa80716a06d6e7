// The command line of the scripts here: each script's own options, plus
// --keep (keep the working directory) and -h/--help (print the usage, exit).

import { parseArgs } from 'node:util';

/** The options' values; an unknown option or a missing value ends the process with exit code 2, --help with 0. */
export function scriptOptions(name, help, options) {
  let values;
  try {
    ({ values } = parseArgs({
      options: { ...options, keep: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h', default: false } },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`${name}: ${err.message} (run with --help for usage)\n`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(help);
    process.exit(0);
  }
  return values;
}
