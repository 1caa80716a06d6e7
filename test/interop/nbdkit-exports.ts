// nbdkit memory exports on unix sockets, as pool members for the interop
// tests: each started with --exit-with-parent and killed after every test.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterEach } from 'vitest';
import { waitUntil } from '../integration/helpers.js';

/** The exports started in this test file; every one is SIGKILLed after each test. */
export function useNbdkitExports(): { memory(socket: string, sizeBytes: number): Promise<ChildProcess> } {
  const servers: ChildProcess[] = [];
  afterEach(() => {
    for (const s of servers.splice(0)) s.kill('SIGKILL');
  });
  return {
    async memory(socket, sizeBytes) {
      const child = spawn('nbdkit', ['--exit-with-parent', '-f', '-U', socket, 'memory', String(sizeBytes)], { stdio: 'ignore' });
      servers.push(child);
      await waitUntil(() => existsSync(socket), 10_000, `nbdkit on ${socket}`);
      return child;
    },
  };
}

/** Kill an export and wait until it is gone. */
export async function killed(child: ChildProcess): Promise<void> {
  child.kill('SIGKILL');
  await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));
}
