// A controller's status as a client asks for it, on a connection of its own.

import { PagepairClient } from '../../src/client/index.js';
import type { ControllerStatus } from '../../src/runtime/controller-process.js';
import type { PairFiles } from './helpers.js';

/** The status of the controller whose client port is `port`, through a connection opened and closed for it. */
export async function statusOf(files: PairFiles, port: number, timeoutMs = 10_000): Promise<ControllerStatus> {
  const c = await PagepairClient.connect({ host: '127.0.0.1', port, token: files.token, timeoutMs });
  try {
    return (await c.status()) as ControllerStatus;
  } finally {
    await c.close();
  }
}
