// Start `pagepair start --config <file>` as a child process with the
// controller's node flags, its output appended to a log file.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CONTROLLER_NODE_FLAGS } from './node-flags.js';

const BIN = fileURLToPath(new URL('../../bin/pagepair.js', import.meta.url));

export function spawnController(configPath: string, logPath: string): ChildProcess {
  const fd = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...CONTROLLER_NODE_FLAGS, BIN, 'start', '--config', configPath], { stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd); // the child has its own copy
  }
  child.on('error', () => undefined); // seen as an exit; callers watch 'exit'
  return child;
}
