// pagepair's own commands as supervised processes: `pagepair start --config
// <file>` (a controller) or any other command line of bin/pagepair.js, run
// with the controller's node flags.

import { fileURLToPath } from 'node:url';
import { CONTROLLER_NODE_FLAGS } from './node-flags.js';
import { Supervised, type LogCollection, type ProcessSpec } from './supervisor.js';

export const PAGEPAIR_BIN = fileURLToPath(new URL('../../bin/pagepair.js', import.meta.url));

/** `pagepair <args>` under the controller's node flags, and nodeFlags of the caller's after them (--cpu-prof, say). */
export function pagepairSpec(name: string, args: readonly string[], log: LogCollection, extra: { pidFile?: string; nodeFlags?: readonly string[] } = {}): ProcessSpec {
  const pidFile = extra.pidFile !== undefined ? { pidFile: extra.pidFile } : {};
  return { name, args: [...CONTROLLER_NODE_FLAGS, ...(extra.nodeFlags ?? []), PAGEPAIR_BIN, ...args], log, ...pidFile };
}

/** A controller: `pagepair start --config <configPath>`. */
export function controllerSpec(name: string, configPath: string, log: LogCollection, pidFile?: string): ProcessSpec {
  return pagepairSpec(name, ['start', '--config', configPath], log, pidFile !== undefined ? { pidFile } : {});
}

/** A controller, supervised, not started yet. */
export function superviseController(name: string, configPath: string, log: LogCollection, pidFile?: string): Supervised {
  return new Supervised(controllerSpec(name, configPath, log, pidFile));
}
